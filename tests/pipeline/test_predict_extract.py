"""`predict --extract` on real local Ray: utterances stream through extraction into the
scorer. Its rows equal the two-step path (extract, then predict), a row with empty text or
missing media is scored with the modality it has, and an interrupted run resumes to the same output."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from sdt_ray import storage
from sdt_ray.errors import ConfigError, InputError
from sdt_ray.importers import DEMO_MEDIA, MELD_LABELS, import_manifest
from sdt_ray.pipelines import ExtractOptions, extract, predict_job
from sdt_ray.output import DONE, MARKER
from sdt_ray.pipelines.predict import PLAN as PREDICT_PLAN
from sdt_ray.scoring import PredictOptions

QUIET = {"log": lambda m: None}
KEYS = [("dialogue_id", "ascending"), ("utterance_index", "ascending")]
PROBABILITIES = [f"prob_{label}" for label in MELD_LABELS]


@pytest.fixture(scope="module")
def checkpoint(text_audio_checkpoint):
    return text_audio_checkpoint


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    """The demo clips with one empty text and one missing audio file."""
    table = import_manifest(DEMO_MEDIA).sort_by(KEYS)
    texts, audio = table.column("text").to_pylist(), table.column("audio_uri").to_pylist()
    texts[3] = ""
    audio[10] = "/nonexistent/clip.mp4"
    table = table.set_column(table.column_names.index("text"), "text", pa.array(texts))
    table = table.set_column(table.column_names.index("audio_uri"), "audio_uri", pa.array(audio))
    path = str(tmp_path_factory.mktemp("utt") / "utterances.parquet")
    storage.write_table(table, path)
    return path, table


def streamed(checkpoint, path, out, options=PredictOptions(rows_per_file=20), chunk=8):
    return predict_job(checkpoint, path, out, options, extraction=ExtractOptions(batch_size=chunk), **QUIET)


@pytest.fixture(scope="module")
def two_step(ray_local, checkpoint, utterances, tmp_path_factory):
    path, _ = utterances
    folder = tmp_path_factory.mktemp("two-step")
    extract(path, str(folder / "features"), ExtractOptions(modalities=("text", "audio")), **QUIET)
    predict_job(checkpoint, str(folder / "features"), str(folder / "predictions"), PredictOptions(), **QUIET)
    return storage.read_table(str(folder / "predictions")).sort_by(KEYS)


def assert_same_rows(ours: pa.Table, theirs: pa.Table) -> None:
    for name in ("dialogue_id", "utterance_index", "speaker", "label", "error", "model_id"):
        assert ours.column(name).to_pylist() == theirs.column(name).to_pylist(), name
    np.testing.assert_allclose(
        np.array(ours.select(PROBABILITIES).to_pandas(), dtype=float),
        np.array(theirs.select(PROBABILITIES).to_pandas(), dtype=float), atol=1e-5,
    )


@pytest.fixture(scope="module")
def streamed_run(ray_local, checkpoint, utterances, tmp_path_factory):
    """One `predict --extract` run, checked below and then interrupted by hand for the resume test."""
    path, _ = utterances
    out = str(tmp_path_factory.mktemp("streamed") / "predictions")
    options = PredictOptions(rows_per_file=20, keep_columns=("text",), partition_by=("label",))
    return out, options, streamed(checkpoint, path, out, options)


def test_streaming_equals_extract_then_predict(checkpoint, utterances, two_step, streamed_run):
    path, table = utterances
    out, options, summary = streamed_run
    assert summary.rows_in == summary.rows_out == table.num_rows == 57
    # The empty text and the missing audio file are absent modalities: those rows are scored
    # with what they have, and modalities_used says so.
    assert summary.errors == {} and summary.modalities == {"text+audio": 55, "audio": 1, "text": 1}
    labels = sorted(f"label={label}" for label in set(two_step.column("label").to_pylist()))
    assert sorted(os.listdir(out)) == sorted([DONE, MARKER, PREDICT_PLAN, *labels])  # partitioned by label
    assert sorted(os.listdir(storage.join(out, DONE))) == ["part-00000.json", "part-00001.json", "part-00002.json"]
    ours = storage.read_table(out).sort_by(KEYS)
    assert_same_rows(ours, two_step)
    used = ours.column("modalities_used").to_pylist()
    assert ours.column("label").null_count == 0 and used[0] == ["text", "audio"]
    assert used[3] == ["audio"] and used[10] == ["text"]
    assert ours.column("text").to_pylist()[3] == ""  # kept columns travel through the stream

    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        streamed(checkpoint, path, out, options)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_rows(checkpoint, utterances, two_step, streamed_run, tmp_path):
    """Undo one finished part (as if the job died before writing it): the re-run scores only the
    dialogues it holds, whole, and the output is what an uninterrupted run writes."""
    path, _ = utterances
    finished, options, _ = streamed_run
    out = str(tmp_path / "predictions")
    shutil.copytree(finished, out)
    plan_uri = storage.join(out, PREDICT_PLAN)
    plan = json.loads(storage.read_text(plan_uri))
    storage.write_text(plan_uri, json.dumps({**plan, "complete": False}))
    storage.delete(storage.join(out, DONE, "part-00001.json"))
    for folder in os.listdir(out):
        storage.delete(storage.join(out, folder, "part-00001.parquet"))
    messages = []
    summary = predict_job(checkpoint, path, out, options, extraction=ExtractOptions(batch_size=8), log=messages.append)
    assert summary.skipped_files == 2 and summary.rows_out == 57
    assert any(m.startswith("resuming") for m in messages)
    ours = storage.read_table(out).sort_by(KEYS)
    assert_same_rows(ours, two_step)
    assert ours.column("text").to_pylist()[3] == ""


def test_encoders_must_fit_the_checkpoint(ray_local, checkpoint, utterances, tmp_path):
    path, _ = utterances
    with pytest.raises(ConfigError, match="audio vectors of 88 values, but --audio-feature-set emobase makes 988"):
        predict_job(checkpoint, path, str(tmp_path / "out"), PredictOptions(),
                    extraction=ExtractOptions(audio_feature_set="emobase"), **QUIET)
    assert not os.path.exists(tmp_path / "out")  # refused before anything was written


def test_a_transcript_archive_is_scored_by_a_text_and_audio_model(ray_local, checkpoint, tmp_path):
    """No audio_uri column at all: audio is not extracted, every row is scored from its text."""
    from sdt_ray.importers import DEMO_CORPUS, import_corpus

    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=2).drop_columns(["audio_uri", "video_uri"])
    path = str(tmp_path / "transcripts.parquet")
    storage.write_table(table, path)
    said = []
    summary = predict_job(checkpoint, path, str(tmp_path / "predictions"), PredictOptions(),
                          extraction=ExtractOptions(), log=said.append)
    assert summary.rows_out == table.num_rows and summary.errors == {}
    assert summary.modalities == {"text": table.num_rows}
    assert any("has no audio_uri: scoring without audio" in line for line in said)
