"""`make bench`'s fine-tuning measure, at a tiny size: every utterance goes through one
optimiser step, in length-sorted batches, and the rate is utterances over the timed seconds."""

import sdt_ray.features.text as text_features
from benchmarks.bench import bench_finetune_step


def test_finetune_steps_see_each_utterance_once_in_length_order(monkeypatch):
    seen: list[list[str]] = []
    tokenize = text_features.tokenize

    def recording_tokenize(tokenizer, texts, contexts, max_length):
        seen.append(list(texts))
        return tokenize(tokenizer, texts, contexts, max_length)

    monkeypatch.setattr(text_features, "tokenize", recording_tokenize)
    texts = [f"utterance number {i} " * (1 + i % 3) for i in range(8)]
    result = bench_finetune_step(texts, batch_size=3)

    warm_up, *timed = seen
    assert warm_up == timed[0]  # the first batch once more, outside the timing
    assert [len(b) for b in timed] == [3, 3, 2]
    flat = [t for batch in timed for t in batch]
    assert sorted(flat) == sorted(texts)  # each utterance exactly once
    assert [len(t) for t in flat] == sorted(len(t) for t in texts)  # length buckets
    assert result["utterances"] == 8 and result["batch_size"] == 3 and result["seconds"] > 0
