"""Which temperature fit carries over: out-of-fold ECE on the dev split, by dialogue. Dev only.

    python scripts/calibration_study.py --features runs/meld-mpnet-finetuned/features \
        runs/meld-mpnet-finetuned/seed0 runs/meld-mpnet-finetuned/seed1 runs/meld-mpnet-finetuned/seed2

For each run's best/ checkpoint: dev logits; the dialogues in 5 folds (sorted ids, fold = index
mod 5); each fit (T = 1, lowest NLL, lowest ECE) chooses T on four folds and is scored on the
fifth; the out-of-fold probabilities of all dev utterances give one ECE per fit. In-sample figures
flatter a fit (it saw the labels it is scored on); out of fold they do not. Also printed: the ECE a
perfectly calibrated model with the same confidences would show on as many utterances (labels
drawn right with probability = confidence, 2,000 draws), the floor that sampling alone gives.
Writes one JSON object per run to stdout.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from sdt_ray import storage
from sdt_ray.calibration import FITS as CALIBRATION_FITS, expected_calibration_error, softmax
from sdt_ray.checkpoint import load_checkpoint
from sdt_ray.evaluate import score_split
from sdt_ray.schema import IGNORE_LABEL

FITS = {"none": lambda logits, labels: 1.0, **CALIBRATION_FITS}  # T = 1 beside each fit train offers
FOLDS = 5


def dev_logits(checkpoint: str, features: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C) fused logits, (N,) labels and (N,) dialogue ids of the labelled dev utterances."""
    scored, _ = score_split(load_checkpoint(checkpoint), storage.read_table(features), "dev", features)
    keep = scored.labels != IGNORE_LABEL
    return scored.logits[keep], scored.labels[keep], np.asarray(scored.dialogue_ids)[keep]


def out_of_fold_ece(logits: np.ndarray, labels: np.ndarray, dialogue_ids: np.ndarray, fit) -> tuple[float, list[float]]:
    """ECE of probabilities each scored with the T fitted on the other folds; and the folds' T."""
    fold_of = {d: i % FOLDS for i, d in enumerate(sorted(set(dialogue_ids)))}
    fold = np.array([fold_of[d] for d in dialogue_ids])  # (N,)
    probabilities, temperatures = np.zeros(logits.shape), []
    for k in range(FOLDS):
        temperature = fit(logits[fold != k], labels[fold != k])
        probabilities[fold == k] = softmax(logits[fold == k], temperature)
        temperatures.append(round(temperature, 4))
    return expected_calibration_error(probabilities, labels), temperatures


def sampling_floor(logits: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Mean and 95th percentile of the ECE of a calibrated model with these confidences."""
    rng = np.random.default_rng(seed)
    probabilities = softmax(logits)
    confidence, top = probabilities.max(axis=1), probabilities.argmax(axis=1)
    wrong = (top + 1) % probabilities.shape[1]  # any other label will do: ECE only asks "right or not"
    eces = [expected_calibration_error(probabilities, np.where(rng.random(len(top)) < confidence, top, wrong))
            for _ in range(draws)]
    return float(np.mean(eces)), float(np.percentile(eces, 95))


def study(run: str, features: str) -> dict:
    logits, labels, dialogue_ids = dev_logits(f"{run}/best", features)
    report = {"run": run, "dev_utterances": int(len(labels)), "sampling_floor_mean_p95": [round(v, 4) for v in sampling_floor(logits)]}
    for name, fit in FITS.items():
        temperature = fit(logits, labels)
        ece, fold_temperatures = out_of_fold_ece(logits, labels, dialogue_ids, fit)
        report[name] = {"T_all_dev": round(temperature, 4), "ece_in_sample": round(expected_calibration_error(softmax(logits, temperature), labels), 4),
                        "ece_out_of_fold": round(ece, 4), "T_per_fold": fold_temperatures}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="the features table the runs were trained on")
    parser.add_argument("runs", nargs="+", help="train's output folders (each holds best/)")
    args = parser.parse_args()
    for run in args.runs:
        print(json.dumps(study(run, args.features)), flush=True)


if __name__ == "__main__":
    main()
