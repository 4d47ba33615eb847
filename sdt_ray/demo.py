"""`make demo`: the whole flow on the bundled MELD slice, in local Ray, no flags.

import -> extract text (bundled MiniLM) -> train (Ray Train, 2 workers) -> evaluate on test.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from . import storage
from .config import RecipeConfig
from .evaluate import evaluate, format_report
from .importers import DEMO_CORPUS, import_corpus
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

    log(f"[1/4] import: bundled MELD slice ({DEMO_CORPUS}) -> {utterances}")
    storage.write_table(import_corpus("meld", DEMO_CORPUS), utterances)
    recipe = RecipeConfig(name="demo")
    recipe = dataclasses.replace(
        recipe, train=dataclasses.replace(recipe.train, epochs=DEMO_EPOCHS, lr=DEMO_LR, ema_decay=DEMO_EMA, patience=8)
    )
    with ray_session():
        log(f"[2/4] extract: text features with the bundled MiniLM -> {features}")
        summary = extract(utterances, features, ExtractOptions(overwrite=True), log=log)
        log(f"      {summary.rows_out} rows, errors: {summary.errors or 'none'}")
        log(f"[3/4] train: SDT on Ray Train, {recipe.train.workers} workers, up to {DEMO_EPOCHS} epochs -> {run_dir}")
        result = train(features, run_dir, recipe, log=log)
    log(f"[4/4] evaluate: best epoch {result.best_epoch + 1} on the test split -> {eval_dir}")
    evaluation = evaluate(result.best_dir, features, "test", eval_dir)
    log(format_report(evaluation.metrics))
    log(f"done: {eval_dir}/metrics.json, {eval_dir}/confusion_matrix.png, checkpoint {result.best_dir}")
    return evaluation.metrics
