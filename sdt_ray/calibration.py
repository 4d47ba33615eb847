"""Temperature scaling (Guo et al., 2017) and the expected calibration error. No Ray, no I/O.

A model selected for F1 is usually over- or under-confident: its softmax says 0.9 where it is
right 70% of the time. One scalar T, fitted after selection on the selection split, rescales
the fused logits, softmax(z / T). T changes no argmax, so accuracy and F1 stay as they were;
only `confidence` and `prob_*` move.

Two fits: "ece" (the default) takes the T whose top-label confidence matches accuracy best
(lowest ECE), "nll" the T of lowest NLL (Guo et al.'s). They differ when the top label is
calibrated but the other classes' probabilities are not: NLL then still moves T, and the
confidence users read drifts off. On MELD dev, out of fold, the NLL fit raised ECE for the
fine-tuned MPNet SDT where the ECE fit lowered it (docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # search interval for T; a T at either end says the logits are degenerate
ECE_GRID_STEP = 0.002  # in log T: neighbouring candidates of the ECE fit differ by 0.2%


@dataclass(frozen=True)
class Calibration:
    temperature: float  # divides the fused logits; 1.0 is the model as trained
    fitted_on: str  # the split whose labels chose T (the selection split)
    fitted_by: str  # one of FITS: what T minimised there
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


def fit_temperature_ece(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The T in T_RANGE, on a grid of ECE_GRID_STEP in log T (T = 1 included), whose softmax(logits / T)
    has the lowest ECE; of equal ECEs, the T nearest 1. ECE is neither smooth nor unimodal in T
    (utterances cross bin edges), so a grid rather than a search; the same answer on every machine."""
    if len(labels) == 0:
        return 1.0
    z = np.asarray(logits, dtype=np.float64)
    gap = z - z.max(axis=1, keepdims=True)  # (N, C), <= 0, 0 at the top label whatever T is
    right = (z.argmax(axis=1) == labels).astype(np.float64)  # (N,) T moves no argmax
    steps = np.arange(math.ceil(math.log(T_RANGE[0]) / ECE_GRID_STEP), math.floor(math.log(T_RANGE[1]) / ECE_GRID_STEP) + 1)
    log_ts = steps[np.argsort(np.abs(steps), kind="stable")] * ECE_GRID_STEP  # nearest to T = 1 first
    eces = [_ece(1.0 / np.exp(gap / math.exp(log_t)).sum(axis=1), right, bins) for log_t in log_ts]
    return math.exp(log_ts[int(np.argmin(eces))])  # argmin: the first, so the nearest 1, of equal ECEs


FITS = {"ece": fit_temperature_ece, "nll": fit_temperature}  # how T is chosen: lowest ECE, or lowest NLL


def _bins(confidence: np.ndarray, right: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of (N,) top-label confidence: (utterances, summed confidence, right
    predictions), (bins,) each. Bin k holds (k/bins, (k+1)/bins], and 0 joins bin 0."""
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return (np.bincount(which, minlength=bins).astype(np.float64),
            np.bincount(which, weights=confidence, minlength=bins), np.bincount(which, weights=right, minlength=bins))


def _top(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) top probability and (N,) 1.0 where the top label is the true one."""
    return probabilities.max(axis=1), (probabilities.argmax(axis=1) == labels).astype(np.float64)


def _ece(confidence: np.ndarray, right: np.ndarray, bins: int) -> float:
    counts, confidence_sums, right_sums = _bins(confidence, right, bins)
    return float(np.abs(right_sums - confidence_sums).sum() / counts.sum()) if counts.sum() else 0.0


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram's data: per bin, utterances, mean confidence and accuracy (None
    where a bin is empty, so that it stays valid JSON)."""
    counts, confidence, right = _bins(*_top(probabilities, labels), bins)
    mean = lambda sums: [round(float(s / n), 6) if n else None for s, n in zip(sums, counts)]  # noqa: E731
    return {"count": counts.astype(int).tolist(), "confidence": mean(confidence), "accuracy": mean(right)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of utterances in the bin) x |accuracy - mean confidence|; 0 for no utterances."""
    return _ece(*_top(probabilities, labels), bins)


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


def calibrate(logits: np.ndarray, labels: np.ndarray, fitted_on: str, by: str = "ece") -> Calibration:
    """Fit T on labelled (N, C) logits, by lowest ECE or NLL (one of FITS), and say what it changed."""
    if by not in FITS:
        raise ValueError(f"calibrate by {by!r}: one of {tuple(FITS)}")
    temperature = FITS[by](logits, labels)
    return Calibration(temperature=round(temperature, 6), fitted_on=fitted_on, fitted_by=by, n_utterances=int(len(labels)),
                       **scaling_figures(logits, labels, temperature))
