"""`extract` of text, audio and video on real local Ray: the bundled demo corpus on local
disk and on moto S3, a manifest with injected faults, and a killed-then-rerun job."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.helpers.media import gray_frames, save_tiny_vit, voice_like, write_video, write_wav
from sdt_ray import fragments, output, storage
from sdt_ray.features.audio import AcousticEncoder
from sdt_ray.features.media import SAMPLE_RATE, decode_audio, segments
from sdt_ray.importers import DEMO_MEDIA, import_manifest
from sdt_ray.pipelines import ExtractOptions, extract
from sdt_ray.schema import validate_features, vectors

ALL = ("text", "audio", "visual")
DIMS = {"text": 384, "audio": 88, "visual": 24}
QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    table = import_manifest(DEMO_MEDIA)
    path = str(tmp_path_factory.mktemp("demo") / "utterances.parquet")
    storage.write_table(table, path)
    return path, table


def speech_seconds(table: pa.Table) -> float:
    """Seconds of audio the rows name: each row's span, or its whole clip when it has none."""
    total = 0.0
    for segment in segments(table, "audio_uri"):
        if segment.start_s is not None and segment.end_s is not None:
            total += segment.end_s - segment.start_s
        else:
            total += decode_audio(segment.uri).shape[-1] / SAMPLE_RATE  # (C, T) at 16 kHz
    return total


def errors_by_row(features: pa.Table) -> dict:
    keys = zip(features.column("dialogue_id").to_pylist(), features.column("utterance_index").to_pylist())
    return {k: sorted(f"{e['modality']}:{e['reason']}" for e in errs) for k, errs in zip(keys, features.column("errors").to_pylist())}


def assert_complete(features: pa.Table, source: str, rows: int) -> None:
    """Every row, every modality: a finite vector of the configured size, and no errors."""
    assert features.num_rows == rows
    assert validate_features(features, source, expected_dims=DIMS).dims == DIMS
    for m in ALL:
        assert features.column(f"{m}_features").null_count == 0
        assert np.isfinite(vectors(features, m)).all()
    assert pc.sum(pc.list_value_length(features.column("errors"))).as_py() == 0


def test_demo_corpus_all_modalities_on_local_disk(ray_local, demo, tiny_vit, tmp_path):
    path, table = demo
    out = str(tmp_path / "features")
    options = ExtractOptions(modalities=ALL, visual_model=tiny_vit, batch_size=16, rows_per_file=20)
    summary = extract(path, out, options, **QUIET)
    assert summary.rows_in == summary.rows_out == 57 and summary.errors == {}
    assert summary.stats["_audio_s"] == pytest.approx(speech_seconds(table), abs=0.05)  # 166.016 s
    assert sorted(os.listdir(out)) == ["_done", "_extract.json", "_sdt_ray_output.json",
                                       "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    features = storage.read_table(out)
    assert_complete(features, out, 57)
    order = list(zip(features.column("dialogue_id").to_pylist(), features.column("utterance_index").to_pylist()))
    first_seen = {d: i for i, d in reversed(list(enumerate(table.column("dialogue_id").to_pylist())))}
    assert order == sorted(order, key=lambda k: (first_seen[k[0]], k[1]))  # the input's dialogue order, turns in order


@pytest.mark.slow
def test_demo_corpus_on_s3(ray_local, demo, tiny_vit):
    import boto3

    _, table = demo
    # Four of the eight dialogues: the subject is S3 in and out, not the corpus (local disk has it all).
    table = table.filter(pc.is_in(table.column("dialogue_id"), pa.array(["meld_dev_2", "meld_dev_9", "meld_dev_12", "meld_dev_17"])))
    client = boto3.client("s3")
    uris = []
    for local in table.column("video_uri").to_pylist():
        key = f"media/clips/{Path(local).name}"
        client.upload_file(local, "sdt-test", key)
        uris.append(f"s3://sdt-test/{key}")
    for column in ("audio_uri", "video_uri"):
        table = table.set_column(table.column_names.index(column), column, pa.array(uris))
    storage.write_table(table, "s3://sdt-test/media/utterances.parquet")
    out = "s3://sdt-test/media/features"
    options = ExtractOptions(modalities=ALL, visual_model=tiny_vit, batch_size=16, rows_per_file=15, overwrite=True)
    summary = extract("s3://sdt-test/media/utterances.parquet", out, options, **QUIET)
    assert summary.rows_out == table.num_rows == 24 and summary.errors == {}
    assert_complete(storage.read_table(out), out, 24)
    names = [u.rsplit("/", 1)[-1] for u in storage.list_files(out)]
    assert names == ["_extract.json", "_sdt_ray_output.json", "part-00000.parquet", "part-00001.parquet"]  # no fragments left
    assert not storage.exists(storage.join(out, "_fragments"))


def test_injected_faults_keep_every_row_and_name_each_error(ray_local, demo, tiny_vit, tmp_path):
    _, table = demo
    good = table.column("video_uri")[0].as_py()
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(1).bytes(20_000))
    mute = write_video(tmp_path / "mute.mp4", gray_frames(12))
    faults = [  # (text, audio_uri, video_uri, start_s, end_s), expected errors
        (("fine", good, good, None, None), []),
        (("missing", str(tmp_path / "gone.mp4"), str(tmp_path / "gone.mp4"), None, None), ["audio:missing_file", "visual:missing_file"]),
        (("corrupt audio", str(corrupt), good, None, None), ["audio:decode_error"]),
        (("", good, good, None, None), ["text:empty_text"]),
        (("backwards", good, good, 2.0, 1.0), ["audio:bad_segment", "visual:bad_segment"]),
        (("no sound", str(mute), str(mute), None, None), ["audio:no_audio_track"]),
    ]
    rows = [dict(zip(("text", "audio_uri", "video_uri", "start_s", "end_s"), f)) for f, _ in faults]
    manifest = pa.Table.from_pylist(
        [{"dialogue_id": "faults", "utterance_index": i, "speaker": "A", "label": None, "split": None, **r} for i, r in enumerate(rows)]
    )
    path = str(tmp_path / "faults.parquet")
    storage.write_table(manifest, path)
    out = str(tmp_path / "features")
    summary = extract(path, out, ExtractOptions(modalities=ALL, visual_model=tiny_vit, batch_size=4), **QUIET)
    features = storage.read_table(out)
    assert summary.rows_in == summary.rows_out == features.num_rows == len(faults)
    assert errors_by_row(features) == {("faults", i): expected for i, (_, expected) in enumerate(faults)}
    assert summary.errors == {
        "audio:bad_segment": 1, "audio:decode_error": 1, "audio:missing_file": 1, "audio:no_audio_track": 1,
        "text:empty_text": 1, "visual:bad_segment": 1, "visual:missing_file": 1,
    }
    for m in ALL:  # a failed modality is a null vector, the others are kept
        failed = [any(e.startswith(m) for e in expected) for _, expected in faults]
        assert features.column(f"{m}_features").is_null().to_pylist() == failed


def test_long_recording_cut_by_times_and_channel(ray_local, tmp_path):
    """One stereo call, two speakers on two channels: rows cut it by start_s/end_s and channel."""
    left, right = voice_like(6.0, 8000, seed=1), 0.3 * voice_like(6.0, 8000, seed=2)
    call = write_wav(tmp_path / "call.wav", [left, right], 8000)
    segments = [(0.0, 2.0, 0), (0.0, 2.0, 1), (4.0, 6.0, None), (5.5, 9.0, 0), (7.0, 8.0, 0)]
    manifest = pa.Table.from_pylist(
        [
            {"dialogue_id": "call", "utterance_index": i, "speaker": "ab"[i % 2], "text": "x", "label": None, "split": None,
             "audio_uri": str(call), "start_s": s, "end_s": e, "channel": c}
            for i, (s, e, c) in enumerate(segments)
        ]
    )
    path = str(tmp_path / "call.parquet")
    storage.write_table(manifest, path)
    out = str(tmp_path / "features")
    summary = extract(path, out, ExtractOptions(modalities=("audio",), batch_size=8), **QUIET)
    features = storage.read_table(out)
    assert summary.stats["_audio_s"] == pytest.approx(2 + 2 + 2 + 0.5)  # the 4th segment stops at the file's end
    assert errors_by_row(features)[("call", 4)] == ["audio:empty_segment"]  # starts after the end
    audio = vectors(features, "audio")
    assert np.isfinite(audio[:4]).all()
    # By hand: the same seconds of the right channel alone, and of the channel mean.
    decoded = decode_audio(str(call))  # (2, T) at 16 kHz
    encoder = AcousticEncoder()
    np.testing.assert_allclose(audio[1], encoder(decoded[1, : 2 * SAMPLE_RATE]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(audio[2], encoder(decoded[:, 4 * SAMPLE_RATE : 6 * SAMPLE_RATE].mean(axis=0)), rtol=1e-4, atol=1e-4)
    assert not np.allclose(audio[0], audio[1])  # same seconds, other speaker


@pytest.mark.slow
def test_killed_job_resumes_without_duplicates_or_losses(ray_local, demo, tmp_path):
    _, table = demo
    copies = []
    for k in range(2):  # 114 utterances of audio: long enough to kill mid-way
        ids = pc.binary_join_element_wise(table.column("dialogue_id"), pa.scalar(f"r{k}"), "_")
        copies.append(table.set_column(0, table.schema.field(0), ids))
    big = pa.concat_tables(copies)
    path = str(tmp_path / "big.parquet")
    storage.write_table(big, path)
    out = str(tmp_path / "features")
    args = ["--input", path, "--output", out, "--modalities", "audio", "--batch-size", "4", "--rows-per-file", "32"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cli = [sys.executable, "-m", "sdt_ray.cli", "extract", *args]
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    fragment_dir = Path(out) / fragments.FRAGMENTS
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if fragment_dir.is_dir() and len(list(fragment_dir.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    plan = output.read_plan(out, "_extract.json")
    assert plan is not None and not plan.complete, "the job finished before it could be killed"
    finished = output.finished_parts(out, plan)
    done_before = sum(plan.part_rows[p] for p in finished) + sum(
        int(fragments.done_rows(out, p, plan.part_rows[p]).sum()) for p in fragments.fragment_parts(out) if p not in finished)
    assert 0 < done_before < big.num_rows

    summary = extract(path, out, ExtractOptions(modalities=("audio",), batch_size=4, rows_per_file=32), **QUIET)
    assert summary.resumed_rows == done_before  # finished batches were not redone
    features = storage.read_table(out)
    keys = [f"{d}/{u}" for d, u in zip(features.column("dialogue_id").to_pylist(), features.column("utterance_index").to_pylist())]
    assert len(keys) == len(set(keys)) == big.num_rows == summary.rows_out
    assert features.column("audio_features").null_count == 0
    assert sorted(p.name for p in Path(out).iterdir()) == ["_done", "_extract.json", "_sdt_ray_output.json"] + [
        f"part-{i:05d}.parquet" for i in range(4)]
