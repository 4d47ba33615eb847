"""`make bench`'s fine-tuning measure, at a tiny size: every utterance goes through one
optimiser step, and the rate is utterances over the timed seconds."""

from sdt_ray.bench import bench_finetune_step


def test_finetune_steps_count_each_utterance_once():
    texts = [f"utterance number {i} " * (1 + i % 3) for i in range(8)]
    result = bench_finetune_step(texts, batch_size=4)
    assert result["utterances"] == 8 and result["batch_size"] == 4 and result["seconds"] > 0
    assert abs(result["utt_per_s"] - 8 / result["seconds"]) <= 0.05 * result["utt_per_s"] + 0.1
