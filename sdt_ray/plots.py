"""Figures people would rather look at than read. matplotlib, headless."""

from __future__ import annotations

import numpy as np


def confusion_matrix_png(matrix: list[list[int]], labels: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    recall = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)  # row-normalised
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)), dpi=120)
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if recall[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reliability_png(calibration: dict, path: str, split: str) -> None:
    """Accuracy against mean confidence per confidence bin, before and after temperature scaling;
    a calibrated model's points lie on the diagonal. Bar widths follow each bin's share of utterances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = int(calibration["bins"])
    centres = (np.arange(bins) + 0.5) / bins
    fig, ax = plt.subplots(figsize=(5.0, 4.6), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
    for key, colour, name in (("before", "tab:red", "T = 1"), ("after", "tab:blue", f"T = {calibration['temperature']:.3f}")):
        table = calibration[f"reliability_{key}"]
        shown = [i for i in range(bins) if table["count"][i]]
        ax.plot([table["confidence"][i] for i in shown], [table["accuracy"][i] for i in shown], marker="o", color=colour,
                label=f"{name}: ECE {calibration[f'ece_{key}']:.3f}")
    counts = np.asarray(calibration["reliability_after"]["count"], dtype=float)
    ax.bar(centres, counts / max(counts.sum(), 1.0), width=1.0 / bins, color="tab:blue", alpha=0.15,
           label="share of utterances (after)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"{split}: reliability, {bins} bins", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
