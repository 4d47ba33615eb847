"""Temperature scaling (Guo et al., 2017) and the expected calibration error. No Ray, no I/O.

A model selected for F1 is usually over- or under-confident: its softmax says 0.9 where it is
right 70% of the time. One scalar T, fitted after selection on the selection split by NLL,
rescales the fused logits, softmax(z / T). T changes no argmax, so accuracy and F1 stay as
they were; only `confidence` and `prob_*` move.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # search interval for T; a T at either end says the logits are degenerate


@dataclass(frozen=True)
class Calibration:
    temperature: float  # divides the fused logits; 1.0 is the model as trained
    fitted_on: str  # the split whose labels chose T (the selection split)
    n_utterances: int  # labelled utterances it was fitted on
    nll_before: float  # mean negative log-likelihood at T = 1, nats
    nll_after: float  # at T
    ece_before: float  # expected calibration error (ECE_BINS equal-width bins) at T = 1
    ece_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities of logits / temperature, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(label) under softmax(logits / T), nats; (N, C) and (N,)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))  # (N,) logsumexp
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tolerance: float = 1e-5) -> float:
    """The T in T_RANGE that minimises nll(logits, labels, T). NLL is convex in 1/T, hence
    unimodal in log T: a golden-section search on log T finds the minimum to `tolerance` (in
    log T) without gradients, and gives the same answer on every machine."""
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def _bins(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: (utterances, summed confidence, right predictions), (bins,) each.
    Confidence is the top probability; bin k holds (k/bins, (k+1)/bins], and 0 joins bin 0."""
    confidence = probabilities.max(axis=1)
    right = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return (np.bincount(which, minlength=bins).astype(np.float64),
            np.bincount(which, weights=confidence, minlength=bins), np.bincount(which, weights=right, minlength=bins))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram's data: per bin, utterances, mean confidence and accuracy (None
    where a bin is empty, so that it stays valid JSON)."""
    counts, confidence, right = _bins(probabilities, labels, bins)
    mean = lambda sums: [round(float(s / n), 6) if n else None for s, n in zip(sums, counts)]  # noqa: E731
    return {"count": counts.astype(int).tolist(), "confidence": mean(confidence), "accuracy": mean(right)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of utterances in the bin) x |accuracy - mean confidence|; 0 for no utterances."""
    counts, confidence, right = _bins(probabilities, labels, bins)
    return float(np.abs(right - confidence).sum() / counts.sum()) if counts.sum() else 0.0


def scaling_figures(logits: np.ndarray, labels: np.ndarray, temperature: float, with_reliability: bool = False) -> dict:
    """NLL and ECE of labelled (N, C) logits at T = 1 and at `temperature` (and, when asked, the
    reliability bins of both): what fitting T on one split, or applying it to another, changed."""
    before, after = softmax(logits), softmax(logits, temperature)
    figures = {
        "nll_before": round(nll(logits, labels), 6), "nll_after": round(nll(logits, labels, temperature), 6),
        "ece_before": round(expected_calibration_error(before, labels), 6),
        "ece_after": round(expected_calibration_error(after, labels), 6),
    }
    if with_reliability:
        figures.update(reliability_before=reliability(before, labels), reliability_after=reliability(after, labels))
    return figures


def calibrate(logits: np.ndarray, labels: np.ndarray, fitted_on: str) -> Calibration:
    """Fit T on labelled (N, C) logits and say what it changed."""
    temperature = fit_temperature(logits, labels)
    return Calibration(temperature=round(temperature, 6), fitted_on=fitted_on, n_utterances=int(len(labels)),
                       **scaling_figures(logits, labels, temperature))
