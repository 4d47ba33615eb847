"""`make bench`, calls: a generated call of N turns through import -> extract (text + audio) ->
predict -> report, with each step's time and the peak RSS of the driver and the Ray workers.

Run at two call lengths (150 and 1,500 turns: about 2 hours of stereo audio), memory should
stay flat: long recordings are decoded one turn at a time, and scoring cuts long calls into
windows. For scale, the whole 2-hour call decoded at once (stereo float32, 16 kHz) would be
`whole_decode_mb`.

    python -m benchmarks.bench_calls --turns 1500      # one length, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sdt_ray.demo import CALL_GENERATOR
from sdt_ray.importers import DEMO_CORPUS

from .bench_scoring import RssSampler, _in_child

DEMO_DEV = DEMO_CORPUS / "dev_sent_emo.csv"


def bench_calls(lengths: tuple[int, ...] = (150, 1500), workdir: str | None = None) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for turns in lengths:
            runs.append(_in_child(long_call_run, turns, str(Path(tmp) / f"call-{turns}")))
    longest = runs[-1]
    return {
        "runs": runs,
        "rss_growth_workers": round(longest["extract"]["rss_workers_mb"] / max(runs[0]["extract"]["rss_workers_mb"], 1), 2),
        "whole_decode_mb": round(longest["audio_minutes"] * 60 * 16_000 * 2 * 4 / 2**20),
    }


def long_call_run(turns: int, folder: str) -> dict[str, Any]:
    """One call of `turns` turns, every step in a fresh local Ray of this (child) process."""
    import ray

    from sdt_ray.calls import import_calls
    from sdt_ray.pipelines import ExtractOptions, extract, predict_job
    from sdt_ray.report import build_report
    from sdt_ray.scoring import PredictOptions
    from sdt_ray.session import ray_session
    from sdt_ray import storage

    work = Path(folder)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_DEV), "--output", str(work / "archive"),
                    "--calls", "0", "--long-call", str(turns)], check=True, capture_output=True)
    generated = time.perf_counter() - started
    imported = import_calls(str(work / "archive"))
    storage.write_table(imported.table, str(work / "utterances.parquet"))
    audio_minutes = float(max(imported.table.column("end_s").to_pylist())) / 60
    checkpoint = _text_audio_model(work / "model")
    quiet = {"log": lambda m: None}
    with ray_session(None, num_cpus=2):
        ray.data.DataContext.get_current().enable_progress_bars = False
        with RssSampler() as rss_extract:
            extracted = extract(str(work / "utterances.parquet"), str(work / "features"),
                                ExtractOptions(modalities=("text", "audio")), **quiet)
        with RssSampler() as rss_predict:
            scored = predict_job(checkpoint, str(work / "features"), str(work / "predictions"),
                                 PredictOptions(keep_columns=("start_s", "end_s")), **quiet)
    started = time.perf_counter()
    build_report(str(work / "predictions"), str(work / "report"))
    assert scored.rows_out == imported.table.num_rows == turns, scored.describe()
    return {
        "turns": turns, "audio_minutes": round(audio_minutes, 1), "generate_s": round(generated, 1),
        "extract": {"seconds": round(extracted.seconds, 1), "errors": extracted.errors,
                    "rss_driver_mb": round(rss_extract.driver_mib), "rss_workers_mb": round(rss_extract.workers_mib)},
        "predict": {"seconds": round(scored.seconds, 1), "errors": scored.errors,
                    "rss_driver_mb": round(rss_predict.driver_mib), "rss_workers_mb": round(rss_predict.workers_mib)},
        "report_s": round(time.perf_counter() - started, 1),
    }


def _text_audio_model(folder: Path) -> str:
    """A random MiniLM-text + eGeMAPS-audio model at the laptop recipe's size: scoring cost, not quality."""
    import torch

    from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
    from sdt_ray.config import ModelConfig
    from sdt_ray.importers import MELD_LABELS
    from sdt_ray.model import SDT

    torch.manual_seed(0)
    config = ModelConfig(modalities=("text", "audio"), input_dims=(384, 88), n_classes=len(MELD_LABELS),
                         class_names=tuple(MELD_LABELS))
    save_checkpoint(folder, state_dict_for_saving(SDT(config)), config)
    return str(folder)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(long_call_run(args.turns, tmp), indent=2))
