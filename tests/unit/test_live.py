"""Live scoring without Ray: the calls' book (limits, retries, speaker ids) and the scorer,
checked against causal batch scoring of the same turns."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
from sdt_ray.collate import relative_speaker_ids
from sdt_ray.config import ModelConfig
from sdt_ray.live import CallBook, LiveError, LiveLimits, LiveScorer, ScoredTurn, Turn, archive_table
from sdt_ray.model import SDT
from sdt_ray.scoring import DialogueScorer
from sdt_ray.schema import vector_array

LABELS = ["neutral", "joy", "anger"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def scored(context, turn) -> ScoredTurn:
    return ScoredTurn(context.call_id, context.index, turn.speaker, turn.text, None, None, "joy", 0.5, {}, {}, turn.turn_id)


def say(book: CallBook, call_id: str, speaker: str, text: str = "hi", turn_id=None):
    """One turn through the book, as a replica takes it: begin, (score), commit."""
    turn = Turn(speaker, text, turn_id=turn_id)
    context = book.begin(call_id, turn)
    book.commit(scored(context, turn), [float(context.index)], f"{speaker}: {text}")
    return context


def test_speaker_ids_are_the_whole_calls_first_appearances_and_the_window_is_bounded():
    book = CallBook(LiveLimits(max_context=3), max_speakers=3)
    names = list("ABACDAB")
    contexts = [say(book, "c", name) for name in names]
    expected = relative_speaker_ids(names, 3)  # [0, 1, 0, 2, 2, 0, 1]: C and D share the last slot
    for i, context in enumerate(contexts):
        start = max(0, i - 2)
        assert context.speaker_ids == expected[start:i + 1].tolist()
        assert context.vectors == [[float(k)] for k in range(start, i)]  # the earlier turns' vectors, at most 2
    assert [t.index for t in book.turns("c")] == list(range(7))


def test_a_fixed_speaker_table_is_used_as_in_batch():
    from sdt_ray.collate import fixed_speaker_ids

    table = ("Ross", "Rachel")
    book = CallBook(LiveLimits(max_context=8), max_speakers=3, speaker_table=table)
    names = ["Rachel", "Joey", "Ross", "Rachel"]
    contexts = [say(book, "c", name) for name in names]
    assert contexts[-1].speaker_ids == fixed_speaker_ids(names, table, 3).tolist()  # [1, 2, 0, 1]


def test_a_failed_turn_frees_its_call_and_a_late_commit_of_a_retried_turn_is_its_score():
    book = CallBook(LiveLimits(), max_speakers=9)
    first = book.begin("c", Turn("A", "one", turn_id="t0"))
    book.abort("c", first.index, "t0")  # scoring failed: the next turn need not wait
    again = book.begin("c", Turn("A", "one", turn_id="t0"))
    recorded = book.commit(scored(again, Turn("A", "one", turn_id="t0")), [0.0], "A: one")
    late = book.commit(scored(first, Turn("A", "one", turn_id="t0")), [0.0], "A: one")  # the first try, finishing late
    assert late is recorded and len(book.turns("c")) == 1


def test_the_encoder_context_keeps_as_many_turns_as_it_reads():
    book = CallBook(LiveLimits(max_context=2), max_speakers=9, past=3)
    for k in range(4):
        say(book, "c", "A", f"t{k}")
    context = book.begin("c", Turn("B", "now"))
    assert context.texts == ["A: t1", "A: t2", "A: t3"] and len(context.vectors) == 1


def test_a_retry_is_scored_once_and_turns_go_in_order():
    clock = Clock()
    book = CallBook(LiveLimits(pending_timeout_s=30), max_speakers=9, clock=clock)
    say(book, "c", "A", turn_id="t0")
    again = book.begin("c", Turn("A", "hi", turn_id="t0"))
    assert isinstance(again, ScoredTurn) and again.index == 0
    book.begin("c", Turn("B", "first", turn_id="t1"))
    with pytest.raises(LiveError) as refused:
        book.begin("c", Turn("B", "second", turn_id="t2"))
    assert refused.value.status == 409
    retaken = book.begin("c", Turn("B", "first", turn_id="t1"))  # the same turn again: a replica died under it
    assert retaken.index == 1
    clock.now = 31.0  # a turn abandoned for longer than the timeout no longer blocks the call
    taken = book.begin("c", Turn("B", "second", turn_id="t2"))
    assert taken.index == 1
    with pytest.raises(LiveError) as overtaken:  # the abandoned turn's late commit is not recorded
        book.commit(scored(retaken, Turn("B", "first", turn_id="t1")), [0.0], "B: first")
    assert overtaken.value.status == 409
    book.commit(scored(taken, Turn("B", "second", turn_id="t2")), [1.0], "B: second")
    assert [t.text for t in book.turns("c")] == ["hi", "second"]


def test_turns_without_ids_are_not_scored_twice_at_once():
    book = CallBook(LiveLimits(), max_speakers=9)
    first = book.begin("c", Turn("A", "one"))
    with pytest.raises(LiveError):  # no id: it cannot be a retry of the first, so it waits its turn
        book.begin("c", Turn("A", "two"))
    book.commit(scored(first, Turn("A", "one")), [0.0], "A: one")
    assert book.begin("c", Turn("A", "two")).index == 1


def test_ended_unknown_and_too_many_calls_are_refused():
    clock = Clock()
    book = CallBook(LiveLimits(max_open_calls=2, idle_timeout_s=60), max_speakers=9, clock=clock)
    say(book, "a", "A")
    say(book, "b", "A")
    with pytest.raises(LiveError) as full:
        book.begin("c", Turn("A", "hi"))
    assert full.value.status == 503
    clock.now = 61.0  # both idle now: a new call evicts them
    say(book, "c", "A")
    assert sorted(book.calls) == ["c"]
    assert len(book.end("c")) == 1
    with pytest.raises(LiveError) as after:
        book.begin("c", Turn("A", "late"))
    assert after.value.status == 409
    with pytest.raises(LiveError) as unknown:
        book.turns("never")
    assert unknown.value.status == 404


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SDT over MiniLM's 384-d vectors (random weights, fixed seed)."""
    torch.manual_seed(0)
    config = ModelConfig(modalities=("text",), input_dims=(384,), hidden=16, heads=2, n_classes=3, dropout=0.0,
                         class_names=tuple(LABELS))
    folder = tmp_path_factory.mktemp("live") / "ckpt"
    save_checkpoint(folder, state_dict_for_saving(SDT(config).eval()), config)
    return str(folder)


def test_live_scores_equal_causal_batch_scores(checkpoint):
    """Turns sent one at a time (two calls interleaved in each scoring batch) get the
    probabilities that DialogueScorer(causal=True) gives the extracted table, to 1e-5."""
    turns = [("Ross", "We were on a break!"), ("Rachel", "Oh my God."), ("Ross", "I can't believe it."),
             ("Joey", "How you doin'?"), ("Rachel", "Get out."), ("Ross", "Fine. Fine!")]
    scorer = LiveScorer(checkpoint)
    book = scorer.book(LiveLimits(max_context=3))
    live = {"c1": [], "c2": []}
    for speaker, text in turns:
        work = [(book.begin(call, Turn(speaker, text)), Turn(speaker, text)) for call in ("c1", "c2")]
        for result, vector, spoken in scorer.score(work):
            live[result.call_id].append([result.probabilities[c] for c in LABELS])
            book.commit(result, vector, spoken)
    table = pa.table({"dialogue_id": ["c1"] * 6, "utterance_index": pa.array(range(6), pa.int32()),
                      "speaker": [s for s, _ in turns], "text": [t for _, t in turns]})
    vectors, _ = scorer.encoder.encode_table(table)
    features = table.append_column("text_features", vector_array(vectors))
    batch = DialogueScorer(scorer.loaded.model, scorer.loaded.config, LABELS, "id", "v", max_context=3, causal=True)(features)
    expected = np.stack([batch.column(f"prob_{c}").to_numpy() for c in LABELS], axis=1)  # (6, C)
    np.testing.assert_allclose(np.array(live["c1"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.array(live["c2"]), expected, atol=1e-5)
    rows = archive_table(book.turns("c1"), LABELS, ("text",), "id", "v")
    assert rows.num_rows == 6 and rows.column("label").to_pylist() == batch.column("label").to_pylist()
