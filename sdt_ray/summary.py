"""Mean and standard deviation of evaluation figures over runs (seeds)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from . import storage

KEYS = ("accuracy", "weighted_f1", "macro_f1")


def summarize(eval_dirs: list[str]) -> dict[str, Any]:
    runs = []
    for directory in eval_dirs:
        metrics = json.loads(storage.read_text(storage.join(directory, "metrics.json")))
        runs.append({"eval_dir": directory, "split": metrics.get("split"), **{k: metrics[k] for k in KEYS}})
    summary: dict[str, Any] = {"runs": runs, "n": len(runs)}
    for key in KEYS:
        values = [r[key] for r in runs]
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return summary


@dataclass(frozen=True)
class Summary:
    figures: dict[str, Any]  # what summarize() returns
    output: str | None = None

    def describe(self) -> str:
        return format_summary(self.figures) + (f"\nwrote {self.output}" if self.output else "")


def summarize_to(eval_dirs: list[str], output_uri: str | None = None) -> Summary:
    """Mean ± std over `eval_dirs`, written as JSON to `output_uri` when given."""
    figures = summarize(eval_dirs)
    if output_uri:
        storage.write_text(output_uri, json.dumps(figures, indent=2))
    return Summary(figures, output_uri)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'run':<44}{'accuracy':>16}{'weighted F1':>16}{'macro F1':>16}"]
    for r in summary["runs"]:
        lines.append(f"{r['eval_dir'][-44:]:<44}" + "".join(f"{r[k]:>16.4f}" for k in KEYS))
    lines.append(
        f"{'mean ± std over ' + str(summary['n']) + ' runs':<44}"
        + "".join(f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}".rjust(16) for k in KEYS)
    )
    return "\n".join(lines)
