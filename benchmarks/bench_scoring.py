"""Scoring throughput and memory for `make bench`: the bare forward pass against `predict`.

Both read the same synthetic features table at MELD's dimensions (text 1024, audio 300,
visual 342; dialogues of 3 to 17 utterances) and score it with the same randomly
initialised model (train's defaults at those dimensions):

- bare: one process, no Ray; read each Parquet file, cut it into dialogues, run the
  model's forward pass (engine.predict) in length-sorted batches of 16 dialogues;
- predict: `predict_job` on a local Ray of 2 CPUs: row checks, windows, the output
  table and its files included, actor start-up included (Ray's own start is not).

Peak resident memory (RSS) is sampled every 0.2 s from /proc: this process (the
driver) and every Ray worker process (`ray::...`), summed at each sample. It should
not grow with the corpus, since both paths stream file by file.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sdt_ray.config import ModelConfig

MELD_DIMS = {"text": 1024, "audio": 300, "visual": 342}  # sdt_spec §1: RoBERTa, openSMILE, DenseNet
LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
SCORING_MODEL = ModelConfig(
    modalities=tuple(MELD_DIMS), input_dims=tuple(MELD_DIMS.values()), n_classes=len(LABELS), class_names=LABELS,
)
ROWS_PER_FILE = 10_000


def write_corpus(folder: Path, utterances: int, seed: int = 0) -> str:
    """Dialogue-sorted features files of about ROWS_PER_FILE rows, written one at a time (memory stays flat)."""
    from sdt_ray import storage
    from sdt_ray.schema import vector_array

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, dialogue, part = 0, 0, 0
    while written < utterances:
        lengths = []
        while sum(lengths) < min(ROWS_PER_FILE, utterances - written):
            lengths.append(int(rng.integers(3, 18)))
        n = sum(lengths)
        ids = np.repeat([f"d{dialogue + k:08d}" for k in range(len(lengths))], lengths)
        positions = np.concatenate([np.arange(k) for k in lengths])
        columns = {
            "dialogue_id": pa.array(ids), "utterance_index": pa.array(positions, pa.int32()),
            "speaker": pa.array(np.array(["A", "B", "C"])[rng.integers(0, 3, n)]),
            "label": pa.array(np.array(LABELS)[rng.integers(0, len(LABELS), n)]), "split": pa.array(["test"] * n),
        }
        for modality, dim in MELD_DIMS.items():
            columns[f"{modality}_features"] = vector_array(rng.standard_normal((n, dim), dtype=np.float32))
        storage.write_table(pa.table(columns), str(folder / f"part-{part:05d}.parquet"))
        written, dialogue, part = written + n, dialogue + len(lengths), part + 1
    return str(folder)


def save_model(folder: Path) -> str:
    import torch

    from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
    from sdt_ray.model import SDT

    torch.manual_seed(0)
    save_checkpoint(folder, state_dict_for_saving(SDT(SCORING_MODEL)), SCORING_MODEL)
    return str(folder)


def bare_forward(features: str, checkpoint: str, batch_size: int = 16, device: str = "cpu") -> dict[str, Any]:
    """Read, cut into dialogues, forward: the least any scorer must do."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sdt_ray.checkpoint import load_checkpoint
    from sdt_ray.collate import Dialogue, batches, relative_speaker_ids
    from sdt_ray.engine import predict

    loaded = load_checkpoint(checkpoint, device=device)
    config = loaded.config
    started, rows = time.perf_counter(), 0
    for path in sorted(Path(features).glob("part-*.parquet")):
        table = pq.read_table(path)
        matrices = {m: table.column(f"{m}_features").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
                    for m in config.modalities}
        speakers = table.column("speaker").to_pylist()
        ends = pc.run_end_encode(table.column("dialogue_id").combine_chunks()).run_ends.to_numpy()
        ids = table.column("dialogue_id").to_pylist()
        dialogues, start = [], 0
        for end in ends:
            feats = {m: matrices[m][start:end] for m in config.modalities}
            labels = np.full(end - start, -100, np.int64)
            dialogues.append(Dialogue(ids[start], feats, relative_speaker_ids(speakers[start:end], config.max_speakers), labels))
            start = end
        predict(loaded.model, batches(dialogues, batch_size, config.max_speakers), device)
        rows += table.num_rows
    seconds = time.perf_counter() - started
    return {"utterances": rows, "seconds": round(seconds, 1), "utt_per_s": round(rows / seconds, 1)}


class RssSampler:
    """Peak RSS (MiB) of this process and of all Ray worker processes, sampled from /proc."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.driver_mib = self.workers_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.driver_mib = max(self.driver_mib, _rss_mib(os.getpid()))
            self.workers_mib = max(self.workers_mib, sum(_rss_mib(p) for p in _ray_workers()))
            self._stop.wait(self.interval_s)


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass  # the process ended between listing and reading
    return 0.0


def _ray_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def predict_on_ray(features: str, checkpoint: str, output: str) -> dict[str, Any]:
    from sdt_ray.pipelines import predict_job
    from sdt_ray.scoring import PredictOptions

    with RssSampler() as rss:
        summary = predict_job(checkpoint, features, output, PredictOptions(overwrite=True), log=lambda m: None)
    assert summary.rows_out == summary.rows_in and not summary.errors, summary.describe()
    return {
        "utterances": summary.rows_out, "seconds": round(summary.seconds, 1),
        "utt_per_s": round(summary.rows_out / summary.seconds, 1),
        "rss_driver_mb": round(rss.driver_mib), "rss_workers_mb": round(rss.workers_mib),
    }


def bench_scoring(sizes: tuple[int, ...] = (100_000, 400_000), workdir: str | None = None) -> dict[str, Any]:
    """Bare and predict at each corpus size; the headline figures are at the first size.

    Every step runs in a child process of its own: the bare pass before Ray starts (no Ray
    daemons taking CPU), and each predict run as the driver of a fresh local Ray, so that the
    driver's RSS is the job's alone."""
    runs = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        checkpoint = save_model(Path(tmp) / "model")
        for size in sizes:
            features = _in_child(write_corpus, Path(tmp) / f"features-{size}", size)
            bare = _in_child(bare_forward, features, checkpoint)
            scored = _in_child(_predict_in_fresh_ray, features, checkpoint, str(Path(tmp) / f"predictions-{size}"))
            runs.append({"utterances": size, "bare": bare, "predict": scored})
            _remove(Path(tmp) / f"features-{size}", Path(tmp) / f"predictions-{size}")
    first = runs[0]
    result = {
        "model": f"train defaults at MELD dims {list(MELD_DIMS.values())}, hidden {SCORING_MODEL.hidden}, random weights",
        "bare_utt_per_s": first["bare"]["utt_per_s"],
        "predict_utt_per_s": first["predict"]["utt_per_s"],
        "ratio": round(first["predict"]["utt_per_s"] / first["bare"]["utt_per_s"], 3),
        "runs": runs,
    }
    for run in runs:
        key = f"rss_mb_{run['utterances'] // 1000}k"
        result[key] = {"driver": run["predict"]["rss_driver_mb"], "workers": run["predict"]["rss_workers_mb"]}
    return result


def _in_child(function, *args):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def _predict_in_fresh_ray(features: str, checkpoint: str, output: str) -> dict[str, Any]:
    import ray

    from sdt_ray.session import ray_session

    with ray_session(None, num_cpus=2):
        ray.data.DataContext.get_current().enable_progress_bars = False
        return predict_on_ray(features, checkpoint, output)


def _remove(*paths: Path) -> None:
    import shutil

    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def stage_in_process(features: str, checkpoint: str, output: str, batch_size: int = 16, device: str = "cpu") -> dict[str, Any]:
    """What one `predict` actor does to every task (read, check, window, forward, output table,
    write), in this process without Ray: for machines without Ray, such as a lent GPU."""
    from sdt_ray.pipelines.stages import ScoreStage
    from sdt_ray.scoring import PredictOptions
    from sdt_ray.tasks import plan_input, task_items

    options = PredictOptions(batch_size=batch_size, gpus_per_actor=1.0 if device.startswith("cuda") else 0.0)
    started = time.perf_counter()
    tasks = plan_input(features, ROWS_PER_FILE).tasks
    stage = ScoreStage(checkpoint, output, options, "bench")
    for item in task_items(tasks, list(range(len(tasks)))):
        stage(pa.Table.from_pylist([item]))
    seconds = time.perf_counter() - started
    rows = sum(t["rows"] for t in tasks)
    return {"utterances": rows, "seconds": round(seconds, 1), "utt_per_s": round(rows / seconds, 1), "device": device}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks.bench_scoring --no-ray --device cuda`: bare forward and the scoring
    stage in one process, at several batch sizes (no Ray needed)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--utterances", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="16,64", help="dialogues per forward pass")
    parser.add_argument("--output", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"device": args.device, "model": SCORING_MODEL.to_dict()["input_dims"], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        features = write_corpus(Path(tmp) / "features", args.utterances)
        checkpoint = save_model(Path(tmp) / "model")
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            bare = bare_forward(features, checkpoint, batch_size, args.device)
            stage = stage_in_process(features, checkpoint, str(Path(tmp) / f"out-{batch_size}"), batch_size, args.device)
            results["runs"].append({"batch_size": batch_size, "bare": bare, "stage": stage,
                                    "ratio": round(stage["utt_per_s"] / bare["utt_per_s"], 3)})
    if args.device.startswith("cuda"):
        import torch

        results["gpu"] = torch.cuda.get_device_name()
        results["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
