"""`make demo`: the whole flow on the bundled MELD slice, in local Ray, no flags.

import -> extract text (bundled MiniLM) -> train (Ray Train, 2 workers) -> evaluate on test,
then the media path: the bundled video clips -> text, openSMILE audio and face-crop visual
features -> `predict` with the bundled checkpoint (trained by `make demo-model` on MELD train),
then a call archive: stereo calls generated from the slice's dev dialogues (espeak-ng) ->
`import calls` (the call without a transcript heard by Whisper base) -> text+audio features -> `predict` with the bundled text+audio checkpoint
(`make meld-text-audio`, modality dropout) -> `report`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import storage
from .asr import AsrOptions
from .config import RecipeConfig
from .errors import ConfigError, InputError
from .evaluate import evaluate, format_report
from .importers import DEMO_CORPUS, DEMO_MEDIA, import_corpus, import_manifest
from .metrics import classification_report
from .pipelines import ExtractOptions, extract, predict_job
from .pipelines.calls import CallImportOptions, import_calls_job
from .plots import confusion_matrix_png
from .report import build_report
from .scoring import PredictOptions
from .session import ray_session
from .train import train

DEMO_EPOCHS = 25  # the slice is small: a higher learning rate and fewer epochs than the MELD recipe
DEMO_LR = 1e-3
DEMO_EMA = 0.9  # 10 steps an epoch here: a short average (the MELD recipe's 0.995 spans ~200 steps)
DEMO_MODEL = Path(__file__).parent / "demo" / "model"  # `make demo-model` (jobs/recipes/demo_model.yaml) wrote it
DEMO_CALLS_MODEL = Path(__file__).parent / "demo" / "model_text_audio"  # `make meld-text-audio`, seed 0
# The generators are scripts of the repository, not of the package: `make demo` runs from a clone.
CALL_GENERATOR = Path(__file__).resolve().parents[1] / "scripts" / "make_calls.py"
DEMO_CALLS = 8  # calls generated from the slice's two-speaker dev dialogues (the last without transcript)
SHOWN_DIALOGUE = "meld_dev_9"  # the dialogue printed utterance by utterance
# Lines of the jobs' own logs the demo leaves out: train's line per epoch (metrics.jsonl keeps them
# all), and each job's opening line (rows, tasks, actor pools; the demo's step lines say what runs).
EPOCH_LINES = ("epoch ",)
PLAN_LINES = ("extracting ", "scoring ", "importing ")


def run_demo(output_dir: str = "demo-output", log: Callable[[str], None] = print) -> dict:
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    utterances = str(out / "utterances.parquet")
    features = str(out / "features")
    run_dir = str(out / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    eval_dir = str(out / "eval")

    log(f"[1/9] import: bundled MELD slice ({DEMO_CORPUS}) -> {utterances}")
    storage.write_table(import_corpus("meld", DEMO_CORPUS), utterances)
    recipe = RecipeConfig(name="demo")
    recipe = dataclasses.replace(
        recipe, train=dataclasses.replace(recipe.train, epochs=DEMO_EPOCHS, lr=DEMO_LR, ema_decay=DEMO_EMA, patience=8)
    )
    with ray_session():
        log(f"[2/9] extract: text features with the bundled MiniLM -> {features}")
        summary = extract(utterances, features, ExtractOptions(overwrite=True), log=_without(log, PLAN_LINES))
        log(f"      {summary.rows_out} rows, errors: {summary.errors or 'none'}")
        log(f"[3/9] train: SDT on Ray Train, {recipe.train.workers} workers, up to {DEMO_EPOCHS} epochs -> {run_dir}")
        result = train(features, run_dir, recipe, log=_without(log, EPOCH_LINES))
        log(f"      {result.describe()}; every epoch in {run_dir}/metrics.jsonl")
        log(f"[4/9] evaluate: best epoch {result.best_epoch + 1} on the test split -> {eval_dir}")
        evaluation = evaluate(result.best_dir, features, "test", eval_dir)
        log(format_report(evaluation.metrics))
        _media(out, log)
        _calls(out, log)
    log(f"done: {eval_dir}/metrics.json, {eval_dir}/confusion_matrix.png, checkpoint {result.best_dir}, "
        f"media {out / 'media'}, calls {out / 'calls' / 'report' / 'index.html'}")
    return evaluation.metrics


def _media(out: Path, log: Callable[[str], None]) -> None:
    """All three modalities from raw media: the bundled clips (espeak-ng speech over a face)."""
    quiet = _without(log, PLAN_LINES)
    utterances = str(out / "media" / "utterances.parquet")
    features = str(out / "media" / "features")
    storage.write_table(import_manifest(DEMO_MEDIA), utterances)
    log(f"[5/9] extract media: {DEMO_MEDIA.parent} -> {features}")
    log("      text: MiniLM; audio: openSMILE eGeMAPSv02; visual: face crops through 'random-vit' (untrained)")
    options = ExtractOptions(modalities=("text", "audio", "visual"), visual_model="random-vit", batch_size=16, overwrite=True)
    _summary(extract(utterances, features, options, log=quiet).describe(), log)
    predictions = str(out / "media" / "predictions")
    log(f"[6/9] predict: the bundled checkpoint ({DEMO_MODEL}) scores every clip -> {predictions}")
    _summary(predict_job(str(DEMO_MODEL), features, predictions, PredictOptions(overwrite=True), log=quiet).describe(), log)
    _report(utterances, predictions, out / "media" / "report.png", log)


def _calls(out: Path, log: Callable[[str], None]) -> None:
    """A call archive: stereo calls, agent and customer on two channels, whisper-style transcripts
    (one call has none, three hold a fault each) -> one prediction per turn -> a per-call report."""
    quiet = _without(log, PLAN_LINES)
    if shutil.which("espeak-ng") is None:
        raise ConfigError("the call demo speaks its calls with espeak-ng: apt-get install espeak-ng (`make demo` does)")
    archive, folder = out / "calls" / "archive", out / "calls"
    log(f"[7/9] calls: {DEMO_CALLS} two-speaker dev dialogues of the slice as stereo calls (espeak-ng, a voice per channel), "
        f"3 more with a broken transcript; the one without a transcript heard by Whisper base -> {archive}")
    if not CALL_GENERATOR.exists():
        raise InputError(f"{CALL_GENERATOR}: the call generator is missing; run the demo from a clone of the repository (make demo)")
    shutil.rmtree(archive, ignore_errors=True)
    subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_CORPUS / "dev_sent_emo.csv"),
                    "--output", str(archive), "--calls", str(DEMO_CALLS), "--bad-sidecars"], check=True, capture_output=True)
    utterances, features, predictions = (str(folder / name) for name in ("utterances", "features", "predictions"))
    imported = import_calls_job(str(archive), utterances, CallImportOptions(overwrite=True, asr=AsrOptions()), log=quiet)
    _summary(imported.describe(), log)
    log(f"[8/9] extract calls: text (MiniLM) and audio (openSMILE) per turn -> {features}")
    extracted = extract(utterances, features, ExtractOptions(modalities=("text", "audio"), overwrite=True), log=quiet)
    _summary(extracted.describe(), log)
    log(f"      predict: the bundled text+audio checkpoint ({DEMO_CALLS_MODEL}) -> {predictions}")
    options = PredictOptions(keep_columns=("start_s", "end_s", "text", "words_from", "asr_logprob"), overwrite=True)
    _summary(predict_job(str(DEMO_CALLS_MODEL), features, predictions, options, log=quiet).describe(), log)
    _heard_turns(predictions, log)
    _call_accuracy(storage.read_table(utterances), predictions, log)
    report = build_report(predictions, str(folder / "report"))
    log(f"[9/9] report: {report.describe()}; open {folder / 'report' / 'index.html'}")


def _heard_turns(predictions: str, log: Callable[[str], None], shown: int = 4) -> None:
    """The first turns Whisper heard in the untranscribed call, with their predicted emotion."""
    rows = storage.read_table(predictions).sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")]).to_pylist()
    heard = [r for r in rows if r["words_from"] == "asr"]
    if not heard:
        return
    log(f"      heard by Whisper in {heard[0]['dialogue_id']} (first {min(shown, len(heard))} of {len(heard)} turns):")
    for r in heard[:shown]:
        emotion = r["label"] or f"({r['error']})"
        log(f"      {r['start_s']:6.1f} s  {r['speaker']:<4} {emotion:<9} log-prob {r['asr_logprob']:5.2f}  {r['text'][:60]}")


def _call_accuracy(turns, predictions: str, log: Callable[[str], None]) -> None:
    """The generated transcripts keep MELD's label of each turn: how the predictions compare."""
    gold = _by_key(turns, "label")
    predicted = _by_key(storage.read_table(predictions), "label")
    pairs = [(gold[k], label) for k, label in predicted.items() if gold.get(k) and label]
    right = sum(g == p for g, p in pairs)
    log(f"      against MELD's labels of the transcribed turns: accuracy {right / max(len(pairs), 1):.3f} "
        f"({right} of {len(pairs)}); the speech carries no emotion, so this is the text's doing")


def _report(utterances: str, predictions: str, png: Path, log: Callable[[str], None]) -> None:
    """One dialogue utterance by utterance, accuracy against the gold labels, and a confusion-matrix PNG."""
    gold = storage.read_table(utterances)
    truth, texts = _by_key(gold, "label"), _by_key(gold, "text")
    scored = storage.read_table(predictions).sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    rows = scored.select(["dialogue_id", "utterance_index", "speaker", "label", "confidence", "error"]).to_pylist()
    log(f"      {SHOWN_DIALOGUE}:")
    log(f"      {'#':>2}  {'speaker':<9} {'gold':<9} {'predicted':<9} {'conf':>5}  text")
    for r in (r for r in rows if r["dialogue_id"] == SHOWN_DIALOGUE):
        key = (r["dialogue_id"], r["utterance_index"])
        predicted = r["label"] or f"({r['error']})"
        confidence = f"{r['confidence']:.2f}" if r["confidence"] is not None else "-"
        log(f"      {r['utterance_index']:>2}  {r['speaker']:<9} {truth[key]:<9} {predicted:<9} {confidence:>5}  {texts[key][:60]}")
    labels = json.loads(storage.read_text(str(DEMO_MODEL / "config.json")))["labels"]
    scored_rows = [r for r in rows if r["label"] is not None]
    y_true = np.array([labels.index(truth[(r["dialogue_id"], r["utterance_index"])]) for r in scored_rows])
    y_pred = np.array([labels.index(r["label"]) for r in scored_rows])
    metrics = classification_report(y_true, y_pred, labels)
    title = f"bundled checkpoint on the media demo: acc {metrics['accuracy']:.3f}, weighted F1 {metrics['weighted_f1']:.3f}"
    confusion_matrix_png(metrics["confusion_matrix"], labels, str(png), title)
    log(f"      accuracy against the gold labels: {metrics['accuracy']:.3f} ({int(round(metrics['accuracy'] * len(scored_rows)))} of "
        f"{len(scored_rows)}), weighted F1 {metrics['weighted_f1']:.3f}; report {png}")


def _without(log: Callable[[str], None], prefixes: tuple[str, ...]) -> Callable[[str], None]:
    """`log` without the lines that start with one of `prefixes`; warnings and errors still pass."""
    return lambda line: None if line.startswith(prefixes) else log(line)


def _summary(described: str, log: Callable[[str], None]) -> None:
    """A job's summary as the demo shows it: what was written and what went wrong, indented;
    the throughput lines are for `make bench` and the jobs' own runs."""
    for line in described.splitlines():
        if not line.startswith(("throughput:", "audio:", "errors by kind: none")):
            log(f"      {line}")


def _by_key(table, column: str) -> dict:
    """(dialogue_id, utterance_index) -> the row's value in `column`."""
    keys = zip(table.column("dialogue_id").to_pylist(), table.column("utterance_index").to_pylist())
    return dict(zip(keys, table.column(column).to_pylist()))

