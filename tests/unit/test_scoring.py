"""Scoring whole dialogues: windows, row checks, one output row per input row; no Ray."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from sdt_ray.collate import Dialogue, batches, relative_speaker_ids
from sdt_ray.config import ModelConfig
from sdt_ray.engine import predict
from sdt_ray.schema import IGNORE_LABEL
from sdt_ray.model import SDT
from sdt_ray.scoring import DialogueScorer, best_window, window_spans
from sdt_ray.tasks import check_whole_chunks, mark_chunk, whole_dialogues
from sdt_ray.schema import vector_array

LABELS = ["neutral", "joy", "anger"]
CONFIG = ModelConfig(modalities=("text",), input_dims=(6,), hidden=8, heads=2, n_classes=3, dropout=0.0)


def test_windows_cover_a_long_dialogue_and_overlap_by_half():
    spans = window_spans(300, 64)
    assert spans[0] == (0, 64) and spans[1] == (32, 96) and spans[-1] == (236, 300)
    assert all(e - s == 64 for s, e in spans)
    owner = best_window(spans, 300)
    assert owner[0] == 0 and owner[299] == len(spans) - 1  # the dialogue's own ends are not cuts
    assert owner[64] == 1  # 32 from either edge of window 1, 0 from the right edge of window 0
    for i in range(300):  # every utterance sits inside the window that scores it
        s, e = spans[owner[i]]
        assert s <= i < e
    assert window_spans(10, 64) == [(0, 10)]


def rows(n_dialogues=2, length=5, seed=0):
    rng = np.random.default_rng(seed)
    ids, positions, speakers = [], [], []
    for d in range(n_dialogues):
        for u in range(length):
            ids.append(f"d{d}")
            positions.append(u)
            speakers.append("AB"[u % 2])
    values = rng.normal(size=(len(ids), 6)).astype(np.float32)
    return pa.table({
        "dialogue_id": ids, "utterance_index": pa.array(positions, pa.int32()), "speaker": speakers,
        "text_features": vector_array(values),
    })


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SDT(CONFIG).eval()


def scorer(model, max_context=512):
    return DialogueScorer(model, CONFIG, LABELS, "abc", "0.1.0", batch_size=4, max_context=max_context)


def test_one_window_equals_the_unwindowed_pass(model):
    table = rows()
    out = scorer(model, max_context=5)(table)  # dialogues of 5 fit one window of 5
    values = np.stack(table.column("text_features").to_pylist()).astype(np.float32)
    dialogues = [
        Dialogue(f"d{d}", {"text": values[5 * d : 5 * d + 5]}, relative_speaker_ids(list("ABABA"), 9), np.full(5, IGNORE_LABEL))
        for d in range(2)
    ]
    direct = predict(model, batches(dialogues, 4, CONFIG.max_speakers))
    got = np.stack([out.column(f"prob_{label}").to_numpy() for label in LABELS], axis=1)
    np.testing.assert_allclose(got, direct.probabilities, atol=1e-6)
    assert out.column("label").to_pylist() == [LABELS[i] for i in direct.predicted]
    assert out.column("error").null_count == 10 and out.column("model_id").to_pylist() == ["abc"] * 10


def test_a_calibrated_scorer_divides_the_logits_by_its_temperature(model, tmp_path):
    from sdt_ray.calibration import softmax
    from sdt_ray.checkpoint import load_checkpoint, save_checkpoint, state_dict_for_saving, write_calibration

    table = rows()
    plain = scorer(model)(table)
    calibrated = DialogueScorer(model, CONFIG, LABELS, "abc", "0.1.0", batch_size=4, temperature=2.5)(table)
    values = np.stack(table.column("text_features").to_pylist()).astype(np.float32)
    dialogues = [Dialogue(f"d{d}", {"text": values[5 * d: 5 * d + 5]}, relative_speaker_ids(list("ABABA"), 9),
                          np.full(5, IGNORE_LABEL)) for d in range(2)]
    logits = predict(model, batches(dialogues, 4, CONFIG.max_speakers)).logits
    got = np.stack([calibrated.column(f"prob_{label}").to_numpy() for label in LABELS], axis=1)
    np.testing.assert_allclose(got, softmax(logits, 2.5), atol=1e-6)
    assert calibrated.column("label").to_pylist() == plain.column("label").to_pylist()  # no argmax moves
    assert np.all(np.asarray(calibrated.column("confidence")) < np.asarray(plain.column("confidence")))

    # The checkpoint's temperature is part of its identity: the same weights, calibrated, are another model.
    save_checkpoint(tmp_path / "ckpt", state_dict_for_saving(model), CONFIG)
    before = load_checkpoint(tmp_path / "ckpt")
    write_calibration(tmp_path / "ckpt", {"temperature": 2.5, "fitted_on": "dev"})
    after = load_checkpoint(tmp_path / "ckpt")
    assert before.temperature == 1.0 and after.temperature == 2.5 and after.model_id != before.model_id


def test_long_dialogue_gets_one_prediction_per_utterance(model):
    table = rows(n_dialogues=1, length=300)
    out = scorer(model, max_context=64)(table)
    assert out.num_rows == 300 and out.column("label").null_count == 0
    assert out.column("utterance_index").to_pylist() == list(range(300))
    probs = np.stack([out.column(f"prob_{label}").to_numpy() for label in LABELS], axis=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.column("confidence").to_numpy(), probs.max(axis=1), atol=1e-6)


def test_bad_rows_carry_errors_and_the_rest_are_scored(model):
    table = rows(n_dialogues=2, length=5)
    values = table.column("text_features").to_pylist()
    values[1] = [float("nan")] * 6
    values[2] = [1.0] * 4  # wrong length: a variable-size list column
    values[3] = None
    positions = table.column("utterance_index").to_pylist()
    positions[6] = 0  # a second utterance 0 in dialogue d1
    speakers = table.column("speaker").to_pylist()
    speakers[8] = None
    bad = pa.table({
        "dialogue_id": table.column("dialogue_id"), "utterance_index": pa.array(positions, pa.int32()),
        "speaker": speakers, "text_features": pa.array(values, pa.list_(pa.float32())),
    })
    out = scorer(model)(bad)
    assert out.num_rows == 10
    errors = dict(zip(zip(out.column("dialogue_id").to_pylist(), out.column("utterance_index").to_pylist()), out.column("error").to_pylist()))
    failed = {k: v for k, v in errors.items() if v is not None}
    assert sorted(failed.values()) == sorted([
        "non_finite_text_features", "text_features_dim_4_not_6", "null_text_features",
        "duplicate_utterance_index", "null_speaker",
    ])
    assert out.column("label").null_count == 5 and out.filter(pa.compute.is_null(out.column("error"))).num_rows == 5
    assert out.column("modality_weights").null_count == 5


def test_extraction_errors_name_the_reason(model):
    """A vector that extraction left null reports extraction's reason, not just 'null'."""
    table = rows(1, 3)
    values = table.column("text_features").to_pylist()
    values[1] = None
    errors_type = pa.list_(pa.struct([("modality", pa.string()), ("reason", pa.string()), ("detail", pa.string())]))
    table = table.set_column(3, "text_features", pa.array(values, pa.list_(pa.float32())))
    table = table.append_column("errors", pa.array([[], [{"modality": "text", "reason": "empty_text", "detail": ""}], []], errors_type))
    out = scorer(model)(table)
    assert out.column("error").to_pylist() == [None, "text:empty_text", None]


def numbered(lengths):
    ids = [f"d{d}" for d, n in enumerate(lengths) for _ in range(n)]
    positions = [u for n in lengths for u in range(n)]
    return pa.table({"dialogue_id": ids, "utterance_index": pa.array(positions, pa.int32())})


def test_a_chunk_that_arrived_in_part_is_refused():
    chunk = mark_chunk(numbered([10]), 1)
    check_whole_chunks(pa.concat_tables([mark_chunk(numbered([3]), 0), chunk]))  # merged blocks are fine
    with pytest.raises(RuntimeError, match="chunk 1 reached the scorer with 9 of its 10 rows"):
        check_whole_chunks(chunk.slice(1))


def test_resumed_rows_widen_to_whole_dialogues():
    table = numbered([3, 2, 2])
    pending = np.array([False, True, False, False, False, False, True])
    assert whole_dialogues(pending, table).tolist() == [True, True, True, False, False, True, True]


BIMODAL = ModelConfig(modalities=("text", "audio"), input_dims=(6, 4), hidden=8, heads=2, n_classes=3, dropout=0.0)


def bimodal_rows():
    """One dialogue of 6 turns: 0-1 have both, 2 no audio, 3 no transcript (extraction says
    why), 4 neither, 5 a broken audio vector."""
    table = rows(1, 6)
    audio = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32).tolist()
    audio[2] = audio[4] = None
    audio[5] = [float("nan")] * 4
    text = table.column("text_features").to_pylist()
    text[3] = text[4] = None
    errors_type = pa.list_(pa.struct([("modality", pa.string()), ("reason", pa.string()), ("detail", pa.string())]))
    empty = [{"modality": "text", "reason": "empty_text", "detail": ""}]
    return pa.table({
        "dialogue_id": table.column("dialogue_id"), "utterance_index": table.column("utterance_index"),
        "speaker": table.column("speaker"), "text_features": pa.array(text, pa.list_(pa.float32(), 6)),
        "audio_features": pa.array(audio, pa.list_(pa.float32(), 4)),
        "errors": pa.array([[], [], [], empty, empty, []], errors_type),
    })


def test_a_turn_is_scored_with_the_modalities_it_has():
    torch.manual_seed(0)
    model = SDT(BIMODAL).eval()
    table = bimodal_rows()
    out = DialogueScorer(model, BIMODAL, LABELS, "abc", "0.1.0")(table)
    assert out.num_rows == 6
    assert out.column("modalities_used").to_pylist() == [
        ["text", "audio"], ["text", "audio"], ["text"], ["audio"], None, None]
    assert out.column("error").to_pylist() == [None] * 4 + ["text:empty_text", "non_finite_audio_features"]
    weights = out.column("modality_weights").to_pylist()
    assert weights[2]["audio"] == 0.0 and weights[2]["text"] == pytest.approx(1.0, abs=1e-6)
    assert weights[3]["text"] == 0.0 and weights[3]["audio"] == pytest.approx(1.0, abs=1e-6)
    # The same as the model run by hand on the four scorable turns with the absences masked.
    text = np.nan_to_num(np.array([v or [0.0] * 6 for v in table.column("text_features").to_pylist()], np.float32))
    audio = np.nan_to_num(np.array([v or [0.0] * 4 for v in table.column("audio_features").to_pylist()], np.float32))
    by_hand = Dialogue("d0", {"text": text[:4], "audio": audio[:4]}, relative_speaker_ids(list("ABAB"), 9),
                       np.full(4, IGNORE_LABEL), {"text": np.array([1, 1, 1, 0], bool), "audio": np.array([1, 1, 0, 1], bool)})
    direct = predict(model, batches([by_hand], 1, BIMODAL.max_speakers))
    got = np.stack([out.column(f"prob_{label}").to_numpy() for label in LABELS], axis=1)[:4]
    np.testing.assert_allclose(got, direct.probabilities, atol=1e-6)


def test_a_text_only_table_is_scored_by_a_text_and_audio_model():
    torch.manual_seed(0)
    model = SDT(BIMODAL).eval()
    table = rows(2, 5)  # no audio_features column at all
    out = DialogueScorer(model, BIMODAL, LABELS, "abc", "0.1.0")(table)
    assert out.column("error").null_count == 10
    assert out.column("modalities_used").to_pylist() == [["text"]] * 10
    assert all(w["audio"] == 0.0 for w in out.column("modality_weights").to_pylist())


def test_causal_windows_end_at_each_position():
    from sdt_ray.scoring import causal_spans

    assert causal_spans(4, 2) == [(0, 1), (0, 2), (1, 3), (2, 4)]
    assert causal_spans(3, 32) == [(0, 1), (0, 2), (0, 3)]


def test_a_causal_score_is_the_last_position_of_its_prefix(model):
    """Utterance i of a dialogue, scored causally with a window of 3, equals a plain pass over
    utterances max(0, i-2)..i alone, read at its last position; later turns change nothing."""
    table = rows(n_dialogues=1, length=6)
    causal = DialogueScorer(model, CONFIG, LABELS, "abc", "0.1.0", batch_size=4, max_context=3, causal=True)
    got = np.stack([causal(table).column(f"prob_{label}").to_numpy() for label in LABELS], axis=1)  # (6, C)
    values = np.stack(table.column("text_features").to_pylist()).astype(np.float32)
    speakers = relative_speaker_ids(list("ABABAB"), 9)
    for i in range(6):
        start = max(0, i - 2)
        alone = Dialogue("p", {"text": values[start:i + 1]}, speakers[start:i + 1], np.full(i + 1 - start, IGNORE_LABEL))
        expected = predict(model, batches([alone], 1, CONFIG.max_speakers)).probabilities[-1]
        np.testing.assert_allclose(got[i], expected, atol=1e-6)
    full = np.stack([scorer(model)(table).column(f"prob_{label}").to_numpy() for label in LABELS], axis=1)
    assert np.abs(full[:-1] - got[:-1]).max() > 1e-4  # the two-way pass reads later turns; the causal one does not
