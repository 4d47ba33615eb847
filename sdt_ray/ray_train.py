"""The Ray Train skeleton that SDT training (train.py) and text fine-tuning (finetune.py) share:
the trainer and where it keeps its checkpoints, the typed state a checkpoint carries, restore,
report and export, and the printer that follows a run's metrics file.

A checkpoint is a folder: `train_state.json` (TrainState) beside the files of the trainer that
wrote it (SDT: the latest weights and optimiser, and best/; fine-tuning: the best encoder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from . import storage
from .errors import SdtError
from .session import cpus_per_worker

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Where a run stands, saved in every checkpoint and read back after a restart."""

    epoch: int = 0  # epochs done
    best_score: float = -1.0  # the selection split's weighted F1 at the best epoch
    best_epoch: int = -1  # 0-based; -1 before the first
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    attempt: int = 0  # restarts from a checkpoint: a lost worker, or --resume

    def finish_epoch(self, record: dict[str, Any], score: float | None) -> bool:
        """Epoch `record["epoch"]` is done with selection score `score` (None: this rank did
        not score). Returns whether it is the new best."""
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, record["epoch"], 0
        elif score is not None:
            self.bad_epochs += 1
        self.history.append({**record, "best_epoch": self.best_epoch})
        self.epoch = record["epoch"] + 1
        return improved

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch] if self.best_epoch >= 0 else {}

    def write(self, directory: str) -> None:
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(dataclasses.asdict(self), f)

    @classmethod
    def read(cls, directory: str) -> "TrainState":
        with open(os.path.join(directory, STATE_FILE)) as f:
            saved = json.load(f)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


@dataclass(frozen=True)
class TrainerPlan:
    """What a TorchTrainer of ours needs: the loop and its config, the workers, the datasets,
    and where Ray keeps the run's checkpoints (`storage_uri`, local or s3://)."""

    loop: Callable[[dict[str, Any]], None]
    loop_config: dict[str, Any]
    workers: int
    use_gpu: bool
    datasets: dict[str, Any]
    datasets_to_split: list[str]  # the others reach every worker whole
    run_name: str
    storage_uri: str
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    placement: str = "PACK"


def build_trainer(plan: TrainerPlan) -> TorchTrainer:
    return TorchTrainer(
        plan.loop,
        train_loop_config=plan.loop_config,
        scaling_config=ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.use_gpu,
            resources_per_worker={"CPU": cpus_per_worker(plan.workers, plan.use_gpu)},
            placement_strategy=plan.placement,
        ),
        datasets=plan.datasets,
        dataset_config=DataConfig(datasets_to_split=plan.datasets_to_split),
        run_config=RunConfig(
            name=plan.run_name,
            **run_storage(plan.storage_uri),
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # the latest holds the best weights too
            failure_config=FailureConfig(max_failures=plan.max_failures),
        ),
    )


def fit(trainer: TorchTrainer, what: str) -> ray.train.Checkpoint:
    """Run the trainer; its final checkpoint, or one error line naming `what` failed (Ray Train
    raises when a worker dies: a page of actor details, summed up here in its first sentence)."""
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise SdtError(f"{what} failed: {_first_sentence(exc)} ({type(exc).__name__}); "
                       "its checkpoints are kept, and --resume continues from the last one") from None
    if result.error is not None:
        raise SdtError(f"{what} failed: {_first_sentence(result.error)}")
    if result.checkpoint is None:
        raise SdtError(f"{what} finished without a checkpoint")
    return result.checkpoint


def _first_sentence(error: BaseException) -> str:
    """The first line of an error that says something (Ray's start with headers ending in ':')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")), type(error).__name__)


@contextlib.contextmanager
def restored() -> Iterator[tuple[TrainState, str | None]]:
    """Inside a worker: the state and folder of the checkpoint this run restarts from (a lost
    worker, or --resume), or a fresh state and None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield TrainState(), None
        return
    with checkpoint.as_directory() as directory:
        state = TrainState.read(directory)
        state.attempt += 1
        yield state, directory


def report(record: dict[str, Any], state: TrainState, rank: int, write: Callable[[str], None] | None) -> None:
    """Every rank reports each epoch, as Ray Train requires. Rank 0 attaches a checkpoint when
    `write` is given: `write(folder)` puts the trainer's files in, and the state goes beside them."""
    if rank != 0 or write is None:
        ray.train.report(record, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp)
        state.write(tmp)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp))


@contextlib.contextmanager
def final_state(checkpoint: ray.train.Checkpoint) -> Iterator[tuple[TrainState, str]]:
    """On the driver, after fit: the last checkpoint's state and folder, for the export."""
    with checkpoint.as_directory() as directory:
        yield TrainState.read(directory), directory


def read_dataset(dataset_name: str) -> pa.Table:
    """Inside a worker: this rank's shard of a dataset, whole."""
    shard = ray.train.get_dataset_shard(dataset_name)
    tables = list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
    return pa.concat_tables(tables)


def write_history(output_uri: str, state: TrainState) -> None:
    """OUTPUT/metrics.jsonl: every epoch so far, rewritten whole (JsonlPrinter follows it)."""
    storage.write_text(storage.join(output_uri, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in state.history))


def run_storage(uri: str) -> dict[str, Any]:
    """RunConfig's storage for a local folder or s3:// (through our s3fs filesystem, so the
    endpoint and region come from the same AWS variables as everywhere else)."""
    if storage.is_remote(uri):
        return {"storage_path": uri[len("s3://"):], "storage_filesystem": storage.s3_filesystem()}
    return {"storage_path": uri}


def absolute_uri(uri: str) -> str:
    return uri if storage.is_remote(uri) else str(Path(uri).expanduser().resolve())


class JsonlPrinter:
    """Prints each new record of a JSON-lines file while a run goes on (rank 0 writes it, and
    rewrites it whole). Records are numbered by `key` (the epoch): after a restart the file may
    repeat numbers already printed, and those are not printed again."""

    def __init__(self, metrics_uri: str, log: Callable[[str], None], describe: Callable[[dict[str, Any]], str],
                 interval_s: float = 1.0, key: str = "epoch"):
        self.metrics_uri, self.log, self.interval_s = metrics_uri, log, interval_s
        self.describe, self.key = describe, key
        self.printed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "JsonlPrinter":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._poll()

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self._poll()

    def _poll(self) -> None:
        try:
            records = [json.loads(line) for line in storage.read_text(self.metrics_uri).splitlines()]
        except (OSError, ValueError):  # not written yet, or caught mid-write: try again next poll
            return
        for record in records:
            if record[self.key] >= self.printed:
                self.log(self.describe(record))
                self.printed = record[self.key] + 1
