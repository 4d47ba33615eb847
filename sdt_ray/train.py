"""Ray Train entry: SDT with DDP over workers, each reading its own shard of
whole dialogues, selected on dev weighted F1 with early stopping.

RUN_DIR layout:
    run.json          what was asked for, and the Ray run name (for --resume)
    metrics.jsonl     one line per epoch, rewritten by rank 0 after each epoch
    best/             config.json + model.safetensors of the dev-best epoch
    ray/              Ray Train's storage: checkpoints of the latest epoch
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file

from . import storage
from .calibration import calibrate
from .checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint, state_dict_for_saving, write_calibration
from .collate import batches
from .config import LossConfig, ModelConfig, RecipeConfig, TrainConfig
from .dialogues import to_dialogues
from .engine import predict, train_epoch, weight_average
from .errors import ConfigError, SdtError
from .losses import SelfDistillationLoss
from .metrics import classification_report
from .model import SDT
from .session import cpus_per_worker, ray_session, require_shared_storage
from .training_data import TrainingData, prepare

STATE_FILE = "training_state.pt"  # latest epoch: model, optimiser, counters, history
BEST_DIR = "best"


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str
    best_epoch: int
    best_metrics: dict[str, Any]
    epochs_run: int
    history: list[dict[str, Any]]
    calibration: dict[str, Any] | None = None  # the temperature fitted after selection (calibration.py)
    selected_on: str = "dev"
    seconds: float = 0.0  # wall time of the whole command, Ray start-up included

    def describe(self) -> str:
        split, best = self.selected_on, self.best_metrics
        return (f"best epoch {self.best_epoch + 1} of {self.epochs_run}: {split} weighted F1 "
                f"{best.get(f'{split}_weighted_f1', float('nan')):.4f}, accuracy {best.get(f'{split}_accuracy', float('nan')):.4f}; "
                f"checkpoint {self.best_dir} ({self.seconds:.0f}s)")


def train(
    features_uri: str,
    run_dir: str,
    recipe: RecipeConfig,
    resume: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> TrainResult:
    started = time.time()
    run_dir = absolute_uri(run_dir)
    _check_run_dir(run_dir, resume)
    data = prepare(features_uri, recipe, recipe.train.workers)  # bad input fails here, before a run exists
    require_shared_storage(address, {"--features": features_uri, "--output": run_dir})
    run_name = _claim_run(run_dir, recipe, features_uri, resume)
    _announce(data, recipe, log)
    with ray_session(address, verbose=verbose):
        trainer = _build_trainer(data, recipe, run_dir, run_name)
        with JsonlPrinter(storage.join(run_dir, "metrics.jsonl"), log):
            result = trainer.fit()
    if result.error is not None:
        raise SdtError(f"training failed: {result.error}")
    exported = _export_best(result.checkpoint, run_dir, data if recipe.train.calibrate else None)
    if exported.calibration:
        c = exported.calibration
        log(f"calibration on {c['fitted_on']} ({c['n_utterances']} utterances): temperature {c['temperature']:.3f}, "
            f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}, NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}")
    return dataclasses.replace(exported, selected_on=recipe.train.select_on, seconds=time.time() - started)


def _build_trainer(data: TrainingData, recipe: RecipeConfig, run_dir: str, run_name: str) -> TorchTrainer:
    cfg = recipe.train
    datasets = {f"train_{i}": ray.data.from_arrow(shard) for i, shard in enumerate(data.shards)}
    datasets["selection"] = ray.data.from_arrow(data.selection)
    loop_config = {
        "model": data.model.to_dict(),
        "loss": {**vars(recipe.loss), "class_weights": tuple(data.class_weights)},
        "train": vars(cfg),
        "run_dir": run_dir,
        "selection_split": data.selection_split,
        "input_statistics": data.input_statistics,
        "meta": {"recipe": recipe.to_dict(), "labels": data.labels, "class_weights": data.class_weights},
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cpus_per_worker(cfg.workers, cfg.use_gpu)},
            placement_strategy=cfg.placement,
        ),
        datasets=datasets,
        # Shards are cut by dialogue on the driver; Ray must not re-split them by rows.
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(
            name=run_name,
            **run_storage(storage.join(run_dir, "ray")),
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # the latest holds the best weights too
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker."""
    rank = ray.train.get_context().get_world_rank()
    model_cfg = ModelConfig.from_dict(config["model"])
    loss_cfg = LossConfig(**config["loss"])
    cfg = TrainConfig(**config["train"])
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    _where(config["run_dir"], rank)
    device = ray.train.torch.get_device()

    shard = to_dialogues(read_dataset(f"train_{rank}"), model_cfg)
    selection = to_dialogues(read_dataset("selection"), model_cfg) if rank == 0 else []
    selection_batches = batches(selection, 16, model_cfg.max_speakers)

    model = ray.train.torch.prepare_model(_new_model(model_cfg, config["input_statistics"]))
    loss_fn = _loss(loss_cfg, model_cfg).to(device)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    core = model.module if hasattr(model, "module") else model
    average = weight_average(core, cfg.ema_decay) if cfg.ema_decay > 0 else None
    scored = average.module if average is not None else core  # the weights dev selects and best/ holds
    state, best = _restore(core, optimizer, average)
    steps = _steps_per_epoch(len(shard), cfg.batch_size, device)

    for epoch in range(state["epoch"], cfg.epochs):
        started = time.time()
        epoch_batches = batches(shard, cfg.batch_size, model_cfg.max_speakers, shuffle=True, seed=_seed(cfg.seed, epoch, rank))
        epoch_batches = (epoch_batches * (steps // max(len(epoch_batches), 1) + 1))[:steps]  # equal steps on all ranks
        hiding = torch.Generator().manual_seed(_seed(cfg.seed, epoch, rank))  # modality dropout, reproducible
        losses = train_epoch(model, loss_fn, optimizer, epoch_batches, device, average, cfg.modality_dropout, hiding)
        score, selection_metrics = _evaluate_selection(scored, selection_batches, model_cfg, device, rank)
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            if rank == 0:
                best = state_dict_for_saving(scored)
        else:
            state["bad_epochs"] += 1
        record = {
            "epoch": epoch,
            **{k: round(_mean_across_ranks(v, device), 6) for k, v in losses.items()},
            **{f"{config['selection_split']}_{k}": v for k, v in selection_metrics.items()},
            "best_epoch": state["best_epoch"],
            "seconds": round(time.time() - started, 2),
            "attempt": state["attempt"],
        }
        state["history"].append(record)
        state["epoch"] = epoch + 1
        _report(core, optimizer, average, state, record, best, config, rank)
        if state["bad_epochs"] >= cfg.patience and epoch + 1 >= cfg.min_epochs:
            break


def _new_model(model_cfg: ModelConfig, statistics: dict[str, tuple[list[float], list[float]]]) -> SDT:
    model = SDT(model_cfg)
    if model.input_norms is not None:
        for m, (mean, std) in statistics.items():
            model.input_norms[m].set_statistics(torch.tensor(mean), torch.tensor(std))
    return model


def _loss(loss_cfg: LossConfig, model_cfg: ModelConfig) -> SelfDistillationLoss:
    weights = torch.tensor(loss_cfg.class_weights, dtype=torch.float32) if loss_cfg.class_weights else None
    if weights is not None and len(weights) != model_cfg.n_classes:
        raise ConfigError(f"class_weights has {len(weights)} entries for {model_cfg.n_classes} classes")
    return SelfDistillationLoss(
        gamma_fused=loss_cfg.gamma_fused,
        gamma_students=loss_cfg.gamma_students,
        gamma_kl=loss_cfg.gamma_kl,
        temperature=model_cfg.temperature,
        class_weights=weights,
        detach_teacher=loss_cfg.detach_teacher,
    )


def read_dataset(dataset_name: str) -> pa.Table:
    shard = ray.train.get_dataset_shard(dataset_name)
    tables = list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
    return pa.concat_tables(tables)


def _steps_per_epoch(n_dialogues: int, batch_size: int, device: torch.device) -> int:
    """Every rank must take the same number of DDP steps; use the largest shard's."""
    steps = torch.tensor([-(-n_dialogues // batch_size)], dtype=torch.long, device=device)
    if dist.is_initialized():
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    return int(steps.item())


def _evaluate_selection(model, selection_batches, model_cfg, device, rank) -> tuple[float, dict[str, float]]:
    """Rank 0 scores the selection split; its weighted F1 is broadcast so that
    every rank takes the same early-stopping decision."""
    metrics: dict[str, float] = {}
    score = torch.zeros(1, dtype=torch.float64, device=device)
    if rank == 0:
        report = classification_report(*predict(model, selection_batches, device).labelled(), list(model_cfg.class_names))
        metrics = {k: round(report[k], 6) for k in ("accuracy", "weighted_f1", "macro_f1")}
        score[0] = report["weighted_f1"]
    if dist.is_initialized():
        dist.broadcast(score, src=0)
    return float(score.item()), metrics


def _mean_across_ranks(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _restore(core, optimizer, average) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Training counters and the best weights so far, from Ray's latest checkpoint if any."""
    # attempt: how many times the run restarted from a checkpoint (a lost worker, or --resume)
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [], "attempt": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return state, None
    with checkpoint.as_directory() as directory:
        saved = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)
        best = load_file(os.path.join(directory, BEST_DIR, WEIGHTS_FILE))
    core.load_state_dict(saved.pop("model"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    average_state = saved.pop("average", None)
    if average is not None and average_state is not None:
        average.load_state_dict(average_state)
    state.update(saved)
    state["attempt"] = state.get("attempt", 0) + 1
    return state, best


def _report(core, optimizer, average, state, record, best, config, rank) -> None:
    """Rank 0 writes the checkpoint (latest state, plus the best weights so far in
    best/) and the metrics file; every rank reports, as Ray Train requires."""
    if rank != 0:
        ray.train.report(record, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        latest = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), **state}
        if average is not None:
            latest["average"] = average.state_dict()
        torch.save(latest, os.path.join(tmp, STATE_FILE))
        meta = {**config["meta"], "selection": state["history"][state["best_epoch"]]}
        save_checkpoint(os.path.join(tmp, BEST_DIR), best, core.config, meta)
        storage.write_text(
            storage.join(config["run_dir"], "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in state["history"])
        )
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _check_run_dir(run_dir: str, resume: bool) -> None:
    """Ray Train silently resumes a run whose (name, storage_path) it has seen, so a
    RUN_DIR that holds a run is only reused on purpose, with --resume."""
    run_file = storage.join(run_dir, "run.json")
    if storage.exists(run_file) and not resume:
        previous = json.loads(storage.read_text(run_file))
        raise ConfigError(
            f"{run_dir} already holds run '{previous['ray_run_name']}'; "
            "pass --resume to continue it, or choose a new --output"
        )
    if resume and not storage.exists(run_file):
        raise ConfigError(f"--resume: {run_dir} holds no run to resume")


def _claim_run(run_dir: str, recipe: RecipeConfig, features_uri: str, resume: bool) -> str:
    """The Ray run name: the recorded one on --resume, else a new unique one."""
    run_file = storage.join(run_dir, "run.json")
    if resume:
        return json.loads(storage.read_text(run_file))["ray_run_name"]
    name = f"sdt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    document = {"ray_run_name": name, "features": features_uri, "recipe": recipe.to_dict()}
    storage.write_text(run_file, json.dumps(document, indent=2))
    return name


def _announce(data: TrainingData, recipe: RecipeConfig, log: Callable[[str], None]) -> None:
    for note in data.notes:
        log(f"note: {note}")
    for warning in data.warnings:
        log(warning)
    if data.exclusions:
        log(f"excluded from training and selection: {data.exclusions.describe()}")
    m, t = data.model, recipe.train
    sizes = ", ".join(str(s.num_rows) for s in data.shards)
    log(
        f"training SDT [{'+'.join(m.modalities)}] D={m.hidden} heads={m.heads} on {data.train_utterances} "
        f"utterances; {t.workers} worker(s) with dialogues {sizes}; selecting on {data.selection_split} "
        f"weighted F1, up to {t.epochs} epochs, patience {t.patience}, seed {t.seed}"
    )


def _export_best(checkpoint: ray.train.Checkpoint | None, run_dir: str, calibrate_on: TrainingData | None) -> TrainResult:
    """best/ out of Ray's latest checkpoint into RUN_DIR/best, calibrated on the way when asked
    (on a copy: Ray's checkpoint stays as it was, so --resume starts from the same state)."""
    if checkpoint is None:
        raise SdtError("training finished without a checkpoint")
    best_uri = storage.join(run_dir, BEST_DIR)
    calibration = None
    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as tmp:
        state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)
        best_dir = shutil.copytree(os.path.join(directory, BEST_DIR), os.path.join(tmp, BEST_DIR))
        if calibrate_on is not None:
            calibration = _calibrate(best_dir, calibrate_on)
        storage.upload_dir(best_dir, best_uri)
    best = state["history"][state["best_epoch"]] if state["best_epoch"] >= 0 else {}
    return TrainResult(run_dir, best_uri, state["best_epoch"], best, state["epoch"], state["history"], calibration)


def _calibrate(best_dir: str, data: TrainingData) -> dict[str, Any] | None:
    """Fit the temperature on the selection split's labelled utterances (the split that chose
    the epoch, never test unless the parity protocol selects on test) and write it into best/."""
    loaded = load_checkpoint(best_dir)
    dialogues = to_dialogues(data.selection, loaded.config)
    logits, labels = predict(loaded.model, batches(dialogues, 16, loaded.config.max_speakers)).labelled_logits()
    if len(labels) == 0:  # nothing to fit on: the checkpoint stays at T = 1
        return None
    calibration = calibrate(logits, labels, data.selection_split).to_dict()
    write_calibration(best_dir, calibration)
    return calibration


def run_storage(uri: str) -> dict[str, Any]:
    """RunConfig's storage for a local folder or s3:// (through our s3fs filesystem, so the
    endpoint and region come from the same AWS variables as everywhere else)."""
    if storage.is_remote(uri):
        return {"storage_path": uri[len("s3://"):], "storage_filesystem": storage.s3_filesystem()}
    return {"storage_path": uri}


def _where(run_dir: str, rank: int) -> None:
    """Each worker records where it ran (run_dir/workers/rank-K.json): node, host, process."""
    import socket

    record = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    storage.write_text(storage.join(run_dir, "workers", f"rank-{rank}.json"), json.dumps(record))


def absolute_uri(uri: str) -> str:
    return uri if storage.is_remote(uri) else str(Path(uri).expanduser().resolve())


class JsonlPrinter:
    """Prints each new record of a JSON-lines file while a run goes on (rank 0 writes it, and
    rewrites it whole). Records are numbered by `key` (the epoch): after a restart the file may
    repeat numbers already printed, and those are not printed again."""

    def __init__(self, metrics_uri: str, log: Callable[[str], None], interval_s: float = 1.0,
                 describe: Callable[[dict[str, Any]], str] | None = None, key: str = "epoch"):
        self.metrics_uri, self.log, self.interval_s = metrics_uri, log, interval_s
        self.describe, self.key = describe or format_epoch, key
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


def format_epoch(record: dict[str, Any]) -> str:
    split = next((k.split("_")[0] for k in record if k.endswith("_weighted_f1")), "dev")
    star = " *" if record.get("best_epoch") == record["epoch"] else ""
    return (
        f"epoch {record['epoch'] + 1:3d}  loss {record.get('loss_total', float('nan')):.4f}  "
        f"{split} acc {record.get(f'{split}_accuracy', float('nan')):.4f}  "
        f"wF1 {record.get(f'{split}_weighted_f1', float('nan')):.4f}  "
        f"mF1 {record.get(f'{split}_macro_f1', float('nan')):.4f}  {record['seconds']:.1f}s{star}"
        + (f"  (after restart {record['attempt']})" if record.get("attempt") else "")
    )
