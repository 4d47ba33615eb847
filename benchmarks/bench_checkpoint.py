"""Ray Data's job checkpointing against sdt-ray's output mechanism (output.py), on one job.

The job: text features for N long utterances (bench_scale.long_text_table) with a tiny random
text encoder, so that reading, bookkeeping and writing are the cost, not the model.
- `ours`: `extract` as users run it.
- `ray`: the same encoder in `read_parquet -> map_batches (2 actors) -> write_parquet`, with
  `DataContext.checkpoint_config = CheckpointConfig(id_column="id", ...)`. Its input is the
  same files with one extra column, `id` = "dialogue_id/utterance_index": the checkpoint
  takes one id column only (no composite keys).

Each side runs three times, each a fresh process group with its own local Ray (2 CPUs):
uninterrupted; SIGKILLed at 0.6 of the uninterrupted wall time; rerun to completion on the
killed run's output. Reported per side: wall seconds of each run, the driver's peak RSS, and of
the final output the rows, duplicate keys, missing keys and unreadable files.

    python -m benchmarks.bench_checkpoint --utterances 50000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIDES = ("ours", "ray")
KILL_AT = 0.6  # of the uninterrupted wall time: past start-up (Ray, actors, model loads), mid-stream


def bench_checkpoint(utterances: int = 50_000, workdir: str | None = None) -> dict[str, Any]:
    from .bench_scale import save_tiny_encoder

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        encoder = save_tiny_encoder(work / "encoder")
        _write_inputs(utterances, work)
        return {side: _side(side, utterances, encoder, work) for side in SIDES} | {"utterances": utterances}


def _side(side: str, utterances: int, encoder: str, work: Path) -> dict[str, Any]:
    whole = _run(side, encoder, work, work / f"{side}-whole")
    killed_after = whole["seconds"] * KILL_AT
    killed = _run(side, encoder, work, work / f"{side}-resumed", kill_after_s=killed_after)
    resumed = _run(side, encoder, work, work / f"{side}-resumed")
    return {"uninterrupted": whole, "killed_after_s": round(killed_after, 1), "killed": killed, "rerun": resumed,
            "final": _count_keys(work / f"{side}-resumed", side, utterances)}


def _write_inputs(utterances: int, work: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from sdt_ray import storage
    from .bench_scale import write_long_texts

    write_long_texts(utterances, str(work))  # -> work/utterances/part-*.parquet
    for path in sorted((work / "utterances").glob("*.parquet")):
        table = storage.read_table(str(path))
        ids = pc.binary_join_element_wise(table["dialogue_id"], pc.cast(table["utterance_index"], pa.string()), "/")
        storage.write_table(table.append_column("id", ids), str(work / "utterances-id" / path.name))


def _run(side: str, encoder: str, work: Path, output: Path, kill_after_s: float | None = None) -> dict[str, Any]:
    """One job in a process group of its own; SIGKILL of the whole group after `kill_after_s`."""
    report = output.parent / f"{output.name}.run.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.bench_checkpoint", "--child", side, "--work", str(work),
               "--encoder", encoder, "--output", str(output), "--report", str(report)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=kill_after_s if kill_after_s is not None else 1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"seconds": round(time.perf_counter() - started, 1), "killed": True}
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed: {stderr.decode()[-3000:]}")
    return json.loads(report.read_text())


def _count_keys(output: Path, side: str, utterances: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    keys, unreadable = [], 0
    for path in sorted(output.rglob("*.parquet")):
        if any(part.startswith((".", "_")) for part in path.relative_to(output).parts):
            continue  # staging names and sdt-ray's bookkeeping
        try:
            table = pq.read_table(path, columns=["id"] if side == "ray" else ["dialogue_id", "utterance_index"])
        except Exception:  # a file cut short by the kill
            unreadable += 1
            continue
        if side == "ray":
            keys += table["id"].to_pylist()
        else:
            keys += [f"{d}/{i}" for d, i in zip(table["dialogue_id"].to_pylist(), table["utterance_index"].to_pylist())]
    unique = len(set(keys))
    return {"rows": len(keys), "duplicates": len(keys) - unique, "missing": utterances - unique,
            "unreadable_files": unreadable}


# -- the child processes ------------------------------------------------------------------------


def _child(side: str, work: Path, encoder: str, output: Path, report: Path) -> None:
    import ray

    from .bench_scale import _vm_hwm_mb
    from sdt_ray.session import ray_session

    with ray_session(None, num_cpus=2):
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter()
        rows = _ours(work, encoder, output) if side == "ours" else _ray_checkpointed(work, encoder, output)
        seconds = time.perf_counter() - started
    report.write_text(json.dumps({"seconds": round(seconds, 1), "rows_this_run": rows,
                                  "driver_peak_rss_mb": round(_vm_hwm_mb(), 1)}))


def _ours(work: Path, encoder: str, output: Path) -> int:
    from sdt_ray.pipelines import ExtractOptions, extract

    summary = extract(str(work / "utterances"), str(output), ExtractOptions(text_model=encoder), log=lambda m: None)
    return summary.rows_out - summary.resumed_rows


class _Encode:
    """The text stage of the Ray Data job: one torch thread per actor, as extract's actors."""

    def __init__(self, encoder: str):
        import torch

        from sdt_ray.features.text import TextEncoder

        torch.set_num_threads(1)
        self.encoder = TextEncoder(encoder, batch_size=512)

    def __call__(self, batch):
        import pyarrow as pa

        vectors, _ = self.encoder(batch["text"].to_pylist())  # (B, D) float32
        flat = pa.array(vectors.reshape(-1))
        return pa.table({"id": batch["id"], "text_features": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def _ray_checkpointed(work: Path, encoder: str, output: Path) -> int:
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.checkpoint import CheckpointConfig

    context = ray.data.DataContext.get_current()
    context.checkpoint_config = CheckpointConfig(id_column="id", checkpoint_path=str(output.parent / f"{output.name}.ckpt"),
                                                 delete_checkpoint_on_success=False)
    before = len(list(output.glob("*.parquet"))) if output.exists() else 0
    # Two encoder actors of one torch thread each, as extract runs on 2 CPUs. They are given
    # 0.5 CPU each: read_parquet lists its files in a task of 1 CPU whatever ray_remote_args
    # says, and with 1.6 CPUs held by actors it never scheduled (measured: the job hung).
    light = {"num_cpus": 0.1}
    dataset = ray.data.read_parquet(str(work / "utterances-id"), columns=["id", "text"], ray_remote_args=light)
    dataset = dataset.map_batches(_Encode, fn_constructor_args=(encoder,), batch_size=512, batch_format="pyarrow",
                                  compute=ActorPoolStrategy(size=2), num_cpus=0.5)
    dataset.write_parquet(str(output), ray_remote_args=light)
    return len(list(output.glob("*.parquet"))) - before  # files: Ray's write reports no rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=50_000, help="N: utterances of about 2 kB of text each")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, Path(args.work), args.encoder, Path(args.output), Path(args.report))
    else:
        print(json.dumps(bench_checkpoint(args.utterances), indent=2))
