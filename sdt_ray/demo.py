"""`make demo`: the whole flow on the bundled MELD slice, in local Ray, no flags.

import -> extract text (bundled MiniLM) -> train (Ray Train, 2 workers) -> evaluate on test,
then the media path: the bundled video clips -> text, openSMILE audio and face-crop visual features.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from . import storage
from .config import RecipeConfig
from .evaluate import evaluate, format_report
from .importers import DEMO_CORPUS, DEMO_MEDIA, import_corpus, import_manifest
from .pipelines import ExtractOptions, extract
from .submit import ray_session
from .train import train

DEMO_EPOCHS = 25  # the slice is small: a higher learning rate and fewer epochs than the MELD recipe
DEMO_LR = 1e-3
DEMO_EMA = 0.9  # 10 steps an epoch here: a short average (the MELD recipe's 0.995 spans ~200 steps)


def run_demo(output_dir: str = "demo-output", log: Callable[[str], None] = print) -> dict:
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    utterances = str(out / "utterances.parquet")
    features = str(out / "features")
    run_dir = str(out / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    eval_dir = str(out / "eval")

    log(f"[1/5] import: bundled MELD slice ({DEMO_CORPUS}) -> {utterances}")
    storage.write_table(import_corpus("meld", DEMO_CORPUS), utterances)
    recipe = RecipeConfig(name="demo")
    recipe = dataclasses.replace(
        recipe, train=dataclasses.replace(recipe.train, epochs=DEMO_EPOCHS, lr=DEMO_LR, ema_decay=DEMO_EMA, patience=8)
    )
    with ray_session():
        log(f"[2/5] extract: text features with the bundled MiniLM -> {features}")
        summary = extract(utterances, features, ExtractOptions(overwrite=True), log=log)
        log(f"      {summary.rows_out} rows, errors: {summary.errors or 'none'}")
        log(f"[3/5] train: SDT on Ray Train, {recipe.train.workers} workers, up to {DEMO_EPOCHS} epochs -> {run_dir}")
        result = train(features, run_dir, recipe, log=log)
        _media(out, log)
    log(f"[5/5] evaluate: best epoch {result.best_epoch + 1} on the test split -> {eval_dir}")
    evaluation = evaluate(result.best_dir, features, "test", eval_dir)
    log(format_report(evaluation.metrics))
    log(f"done: {eval_dir}/metrics.json, {eval_dir}/confusion_matrix.png, checkpoint {result.best_dir}")
    return evaluation.metrics


def _media(out: Path, log: Callable[[str], None]) -> None:
    """All three modalities from raw media: the bundled clips (espeak-ng speech over a face)."""
    utterances = str(out / "media" / "utterances.parquet")
    features = str(out / "media" / "features")
    storage.write_table(import_manifest(DEMO_MEDIA), utterances)
    log(f"[4/5] extract media: {DEMO_MEDIA.parent} -> {features}")
    log("      text: MiniLM; audio: openSMILE eGeMAPSv02; visual: face crops through 'random-vit' (untrained)")
    options = ExtractOptions(modalities=("text", "audio", "visual"), visual_model="random-vit", batch_size=16, overwrite=True)
    summary = extract(utterances, features, options, log=log)
    for line in summary.describe().splitlines():
        log(f"      {line}")
