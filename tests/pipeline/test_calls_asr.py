"""`import calls --asr whisper-base`: Whisper base for real (CTranslate2 int8, Silero VAD) on a
short generated call whose transcript is withheld, on local Ray and on moto S3, beside the
faults an archive holds (no speech, 0 bytes, mono, 8 kHz), and with a recognition actor
killed half-way."""

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from sdt_ray import storage
from sdt_ray.asr import AsrOptions
from sdt_ray.heard import Span, match_turns, word_error_rate
from sdt_ray.demo import CALL_GENERATOR
from sdt_ray.importers import DEMO_CORPUS
from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job

pytestmark = pytest.mark.slow  # Whisper on about a minute of audio
QUIET = {"log": lambda m: None}
KEYS = [("dialogue_id", "ascending"), ("utterance_index", "ascending")]


def _write(path: Path, audio: np.ndarray, rate: int) -> None:
    """audio (C, T) float in [-1, 1] -> 16-bit WAV."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(audio.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(audio.T, -1, 1) * 32767).astype(np.int16).tobytes())


def _read(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as source:
        data = np.frombuffer(source.readframes(source.getnframes()), np.int16).reshape(-1, source.getnchannels())
        return data.T.astype(np.float32) / 32767, source.getframerate()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """call_000: a MELD dev dialogue read by two espeak-ng voices, its transcript kept apart as
    the gold; beside it a silent call, a 0-byte file, a mono cut and an 8 kHz cut."""
    work = tmp_path_factory.mktemp("asr")
    generated, folder, gold = work / "generated", work / "archive", work / "gold"
    subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_CORPUS / "dev_sent_emo.csv"),
                    "--output", str(generated), "--calls", "2"], check=True, capture_output=True)
    folder.mkdir()
    gold.mkdir()
    os.replace(generated / "call_000.wav", folder / "call_000.wav")
    os.replace(generated / "call_000.json", gold / "call_000.json")
    audio, rate = _read(folder / "call_000.wav")
    _write(folder / "silence.wav", np.zeros((2, 3 * rate)), rate)
    (folder / "empty.wav").write_bytes(b"")
    _write(folder / "mono.wav", audio[:, : 8 * rate].mean(axis=0, keepdims=True), rate)
    cut = audio[:, : 8 * rate]
    at_8k = np.arange(cut.shape[1] * 8000 // rate) / 8000  # seconds of each 8 kHz sample
    _write(folder / "narrow.wav", np.stack([np.interp(at_8k, np.arange(cut.shape[1]) / rate, c) for c in cut]), 8000)
    return folder, json.loads((gold / "call_000.json").read_text())["segments"]


def _options(**kw):
    return CallImportOptions(asr=AsrOptions(), roles=("agent", "customer"), calls_per_part=2, overwrite=True, **kw)


@pytest.fixture(scope="module")
def imported(ray_local, archive, tmp_path_factory):
    folder, _ = archive
    out = str(tmp_path_factory.mktemp("asr-out") / "utterances")
    summary = import_calls_job(str(folder), out, _options(), **QUIET)
    return summary, storage.read_table(out).sort_by(KEYS)


def test_an_untranscribed_call_gets_words_turns_and_roles(imported, archive):
    summary, table = imported
    _, gold = archive
    rows = [r for r in table.to_pylist() if r["dialogue_id"] == "call_000"]
    assert rows and {r["words_from"] for r in rows} == {"asr"}
    assert {r["speaker"] for r in rows} == {"agent", "customer"} and {r["channel"] for r in rows} == {0, 1}
    assert all(r["asr_logprob"] < 0 and 0 <= r["asr_no_speech"] <= 1 for r in rows)
    heard_text = " ".join(r["text"] for r in rows)
    wer = word_error_rate(" ".join(s["text"] for s in gold), heard_text)
    assert wer < 0.6, f"word error rate {wer:.2f} (0.40 measured on the demo calls)"
    matched = match_turns([Span(s["start"], s["end"]) for s in gold], [Span(r["start_s"], r["end_s"]) for r in rows])
    assert len(matched) / len(gold) >= 0.5, f"{len(matched)} of {len(gold)} gold turns matched"


def test_every_call_is_accounted_for(imported):
    summary, table = imported
    assert summary.calls == 5 and sum(summary.sources.values()) == 5
    reasons = {(p.call_id, p.reason) for p in summary.problems}
    assert {("silence", "no_speech"), ("empty", "unreadable_audio"), ("mono", "one_speaker_lane")} <= reasons
    narrow = [r for r in table.to_pylist() if r["dialogue_id"] == "narrow"]
    assert narrow and all(r["text"] for r in narrow)  # 8 kHz audio is resampled and heard
    mono = [r for r in table.to_pylist() if r["dialogue_id"] == "mono"]
    assert mono and {r["speaker"] for r in mono} == {"ch0"} and {r["channel"] for r in mono} == {None}


def test_the_same_words_from_s3(imported, archive, s3_endpoint):
    folder, _ = archive
    source, out = "s3://sdt-test/asr/archive", "s3://sdt-test/asr/utterances"
    storage.upload_dir(str(folder), source)
    summary = import_calls_job(source, out, _options(), **QUIET)
    local, remote = imported[1], storage.read_table(out).sort_by(KEYS)
    columns = ["dialogue_id", "utterance_index", "speaker", "text", "start_s", "end_s", "words_from"]
    assert remote.select(columns).equals(local.select(columns)) and summary.calls == 5
    assert all(u.startswith(source + "/") for u in remote.column("audio_uri").to_pylist())


def test_a_killed_recognition_actor_is_retried_with_no_turn_lost_or_doubled(imported, archive, tmp_path):
    """The first recognition actor dies (os._exit) after recognising a call; Ray restarts it and
    retries its part, which is written whole or not at all."""
    folder, _ = archive
    out = tmp_path / "utterances"
    env = {**os.environ, "SDT_RAY_CRASH_AT": "recognition", "SDT_RAY_CRASH_FILE": str(tmp_path / "crashed")}
    cli = [sys.executable, "-m", "sdt_ray.cli", "import", "calls", str(folder), "--output", str(out),
           "--asr", "whisper-base", "--roles", "agent,customer", "--calls-per-part", "2"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "crashed").exists()  # an actor did die
    columns = ["dialogue_id", "utterance_index", "speaker", "text", "start_s", "end_s"]
    assert storage.read_table(str(out)).sort_by(KEYS).select(columns).equals(imported[1].select(columns))


def test_a_call_heard_span_by_span_hears_what_one_span_hears(archive):
    """A long call is decoded a span at a time (flat memory): 8-second spans, cut where both
    channels are quiet, hear the words one span over the whole call hears."""
    from sdt_ray.asr import Recogniser, speech_spans
    from sdt_ray.calls import FRAME_S, EnergyOptions, prepare_call

    folder, _ = archive
    call = prepare_call("call_000", str(folder / "call_000.wav"), None, EnergyOptions())
    assert len(speech_spans(call.levels, FRAME_S, call.duration_s, 8.0)) >= 3
    whole = Recogniser(AsrOptions()).call(call.audio_uri, call.levels, call.duration_s, FRAME_S)
    spans = Recogniser(AsrOptions(span_s=8.0)).call(call.audio_uri, call.levels, call.duration_s, FRAME_S)
    assert spans and word_error_rate(" ".join(t.text for t in whole), " ".join(t.text for t in spans)) <= 0.25
