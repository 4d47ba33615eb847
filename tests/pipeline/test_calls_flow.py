"""Call archives end to end on real local Ray: generated stereo calls (espeak-ng voices, one per
channel) -> import calls -> extract text+audio (MiniLM, openSMILE) -> predict with a text+audio
model -> report; locally and with input and output on moto S3. Every turn gets one prediction,
and the call without a transcript is scored from its audio alone."""

import shutil
import subprocess
import sys

import pyarrow.compute as pc
import pytest

from sdt_ray import storage
from sdt_ray.calls import import_calls
from sdt_ray.demo import CALL_GENERATOR
from sdt_ray.importers import DEMO_CORPUS
from sdt_ray.pipelines import ExtractOptions, extract, predict_job
from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job
from sdt_ray.report import build_report
from sdt_ray.scoring import PredictOptions

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng (`make test` installs it)")
QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 calls (the last without transcript) and 3 calls whose transcripts each hold one fault."""
    folder = tmp_path_factory.mktemp("calls")
    subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_CORPUS / "dev_sent_emo.csv"),
                    "--output", str(folder), "--calls", "3", "--bad-sidecars"], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def checkpoint(text_audio_checkpoint):
    return text_audio_checkpoint


def run_flow(source: str, work: str, checkpoint: str) -> tuple:
    imported = import_calls_job(source, f"{work}/utterances", CallImportOptions(calls_per_part=2), **QUIET)
    assert imported.calls == 6 and len(storage.list_files(f"{work}/utterances/_done")) == 3  # 3 parts of 2 calls
    extract(f"{work}/utterances", f"{work}/features", ExtractOptions(modalities=("text", "audio")), **QUIET)
    summary = predict_job(checkpoint, f"{work}/features", f"{work}/predictions",
                          PredictOptions(keep_columns=("start_s", "end_s")), **QUIET)
    report = build_report(f"{work}/predictions", f"{work}/report")
    return imported, summary, report


def check_flow(imported, summary, report, work: str) -> None:
    turns = imported.turns
    assert storage.read_table(f"{work}/utterances").num_rows == turns
    assert sorted(p.reason for p in imported.problems) == ["bad_segment", "overlap", "past_end"]
    assert {p.call_id for p in imported.problems} == {"bad_missing_end", "bad_overlap", "bad_past_end"}
    predictions = storage.read_table(f"{work}/predictions")
    keys = set(zip(predictions.column("dialogue_id").to_pylist(), predictions.column("utterance_index").to_pylist()))
    assert summary.rows_in == summary.rows_out == predictions.num_rows == len(keys) == turns  # one row per turn
    assert summary.errors == {}
    untranscribed = predictions.filter(pc.equal(predictions.column("dialogue_id"), "call_002"))
    assert untranscribed.num_rows >= 3 and untranscribed.column("label").null_count == 0
    assert set(map(tuple, untranscribed.column("modalities_used").to_pylist())) == {("audio",)}
    assert all(w["text"] == 0.0 for w in untranscribed.column("modality_weights").to_pylist())
    transcribed = predictions.filter(pc.not_equal(predictions.column("dialogue_id"), "call_002"))
    assert set(map(tuple, transcribed.column("modalities_used").to_pylist())) == {("text", "audio")}
    calls = storage.read_table(f"{work}/report/calls.parquet")
    assert calls.num_rows == report.calls == 6 and sum(calls.column("turns").to_pylist()) == turns
    names = [u.rsplit("/", 1)[-1] for u in storage.list_files(f"{work}/report/timelines")]
    assert sorted(names) == sorted(f"{c}.png" for c in calls.column("call_id").to_pylist())


def test_calls_end_to_end_on_local_disk(ray_local, corpus, checkpoint, tmp_path):
    imported, summary, report = run_flow(str(corpus), str(tmp_path), checkpoint)
    check_flow(imported, summary, report, str(tmp_path))
    png = (tmp_path / "report" / "timelines" / "call_000.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


@pytest.mark.slow
def test_calls_end_to_end_on_s3(ray_local, corpus, checkpoint):
    storage.upload_dir(str(corpus), "s3://sdt-test/calls/archive")
    imported, summary, report = run_flow("s3://sdt-test/calls/archive", "s3://sdt-test/calls/work", checkpoint)
    check_flow(imported, summary, report, "s3://sdt-test/calls/work")
    uris = storage.read_table("s3://sdt-test/calls/work/utterances", columns=["audio_uri"]).column(0).to_pylist()
    assert all(u.startswith("s3://sdt-test/calls/archive/") for u in uris)
    assert storage.exists("s3://sdt-test/calls/work/report/index.html")


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs chromium (`make test` installs it)")
def test_the_index_page_lists_every_call_in_a_browser(tmp_path):
    """The index page, rendered by headless Chromium with its script run: every call is listed,
    sorted by negative share, and #sort=COLUMN sorts by another column."""
    import pyarrow as pa

    from sdt_ray.report import ReportOptions

    rows = []
    for call, labels in {"calm": ["neutral", "joy", "neutral"], "angry": ["anger", "anger", "neutral"],
                         "sad": ["sadness", "neutral", "neutral", "joy"]}.items():
        for i, label in enumerate(labels):
            rows.append({"dialogue_id": call, "utterance_index": i, "speaker": "AB"[i % 2], "label": label,
                         "confidence": 0.9, "error": None, "prob_neutral": 0.1, "prob_joy": 0.1,
                         "prob_anger": 0.1, "prob_sadness": 0.1, "start_s": 2.0 * i, "end_s": 2.0 * i + 1.5,
                         "text": f"{call} turn {i}", "words_from": "asr" if call == "angry" else "transcript",
                         "asr_logprob": -1.5 if (call, i) == ("angry", 1) else -0.2})
    storage.write_table(pa.Table.from_pylist(rows), str(tmp_path / "predictions.parquet"))
    build_report(str(tmp_path / "predictions.parquet"), str(tmp_path / "report"), ReportOptions(timelines=2))

    def rendered(fragment: str) -> str:
        done = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--dump-dom", f"file://{tmp_path / 'report' / 'index.html'}{fragment}"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    import re

    default = rendered("")
    assert re.findall(r'<tr data-call="([^"]+)"', default) == ["angry", "sad", "calm"]  # by negative share
    assert 'data-sorted-by="negative_share:desc"' in default
    by_turns = rendered("#sort=turns&order=asc")
    assert re.findall(r'<tr data-call="([^"]+)"', by_turns)[-1] == "sad"  # 4 turns, the most
    assert default.count('href="calls/') == 2  # two calls drawn, both linked to their pages
    page = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", f"file://{tmp_path / 'report' / 'calls' / 'angry.html'}"], capture_output=True, text=True, timeout=120)
    turns = re.findall(r'<tr class="(low)?"><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td class="text">([^<]*)</td>'
                       r'<td>([^<]*)</td>', page.stdout)
    # each turn's words and source; the second turn (log-probability -1.5 < -1.0) is marked low
    assert [(low, text, source) for low, _, _, _, text, source in turns] == [
        ("", "angry turn 0", "asr"), ("low", "angry turn 1", "asr"), ("", "angry turn 2", "asr")]
    assert 'src="../timelines/angry.png"' in page.stdout
    summary = storage.read_table(str(tmp_path / "report" / "calls.parquet")).to_pylist()
    assert {r["call_id"]: (r["words_from"], r["low_confidence_turns"]) for r in summary} == {
        "angry": ("asr", 1), "sad": ("transcript", 0), "calm": ("transcript", 0)}


def test_a_speech_encoder_instead_of_opensmile(ray_local, corpus, tmp_path):
    """`extract --audio-encoder FOLDER` on Ray: a tiny random wav2vec2 saved here, as a user's model."""
    import json

    from tests.helpers.media import save_tiny_speech_model
    from sdt_ray.schema import ENCODERS_METADATA_KEY

    model = save_tiny_speech_model(tmp_path / "w2v")
    storage.write_table(import_calls(str(corpus)).table.slice(0, 12), str(tmp_path / "utterances.parquet"))
    summary = extract(str(tmp_path / "utterances.parquet"), str(tmp_path / "features"),
                      ExtractOptions(modalities=("audio",), audio_encoder=model, batch_size=6), **QUIET)
    features = storage.read_table(str(tmp_path / "features"))
    assert summary.errors == {} and features.schema.field("audio_features").type.list_size == 20
    assert features.column("audio_features").null_count == 0
    encoders = json.loads(features.schema.metadata[ENCODERS_METADATA_KEY])
    assert encoders["audio"].startswith(model) and "mean of last hidden states" in encoders["audio"]
