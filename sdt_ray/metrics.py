"""Classification metrics over real utterances (numpy only).

Weighted F1 matches sklearn's f1_score(average='weighted'): per-class F1
weighted by support; classes absent from y_true get weight 0.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts; rows are true labels, columns predictions."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """accuracy, weighted_f1, macro_f1 and per-class precision/recall/f1/support, all in [0, 1]."""
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    support = matrix.sum(axis=1)  # (C,)
    predicted = matrix.sum(axis=0)  # (C,)
    hits = np.diag(matrix)  # (C,)
    precision = np.divide(hits, predicted, out=np.zeros(len(labels)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(labels)), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(len(labels)), where=denom > 0)
    total = max(int(support.sum()), 1)
    return {
        "accuracy": float(hits.sum() / total),
        "weighted_f1": float((f1 * support).sum() / total),
        "macro_f1": float(f1.mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
        "n_utterances": int(support.sum()),
    }
