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
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from . import storage
from .calibration import calibrate
from .checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint, state_dict_for_saving, write_calibration
from .collate import batches
from .config import LossConfig, ModelConfig, RecipeConfig, TrainConfig
from .dialogues import to_dialogues
from .engine import predict, train_epoch, weight_average
from .errors import ConfigError
from .losses import SelfDistillationLoss
from .metrics import classification_report
from .model import SDT
from .ray_train import (STATE_FILE, JsonlPrinter, TrainerPlan, TrainState, absolute_uri, build_trainer, final_state, fit,
                        read_dataset, report, restored, write_history)
from .session import ray_session, require_shared_storage
from .training_data import TrainingData, prepare

LATEST_FILE = "latest.pt"  # in each checkpoint, beside train_state.json: the latest weights, optimiser, weight average
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
        trainer = build_trainer(_plan(data, recipe, run_dir, run_name))
        with JsonlPrinter(storage.join(run_dir, "metrics.jsonl"), log, describe=format_epoch):
            checkpoint = fit(trainer, "training")
    exported = _export_best(checkpoint, run_dir, data if recipe.train.calibrate else None, recipe.train.calibrate_by)
    if exported.calibration:
        c = exported.calibration
        log(f"calibration on {c['fitted_on']} ({c['n_utterances']} utterances, lowest {c['fitted_by'].upper()}): temperature {c['temperature']:.3f}, "
            f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}, NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}")
    return dataclasses.replace(exported, selected_on=recipe.train.select_on, seconds=time.time() - started)


def _plan(data: TrainingData, recipe: RecipeConfig, run_dir: str, run_name: str) -> TrainerPlan:
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
    # Shards are cut by dialogue on the driver; Ray must not re-split them by rows.
    return TrainerPlan(train_loop_per_worker, loop_config, cfg.workers, cfg.use_gpu, datasets, datasets_to_split=[],
                       run_name=run_name, storage_uri=storage.join(run_dir, "ray"), max_failures=cfg.max_failures,
                       placement=cfg.placement)


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
    with restored() as (state, directory):
        best = _restore_weights(core, optimizer, average, directory)
    steps = _steps_per_epoch(len(shard), cfg.batch_size, device)

    for epoch in range(state.epoch, cfg.epochs):
        started = time.time()
        epoch_batches = batches(shard, cfg.batch_size, model_cfg.max_speakers, shuffle=True, seed=_seed(cfg.seed, epoch, rank))
        epoch_batches = (epoch_batches * (steps // max(len(epoch_batches), 1) + 1))[:steps]  # equal steps on all ranks
        hiding = torch.Generator().manual_seed(_seed(cfg.seed, epoch, rank))  # modality dropout, reproducible
        losses = train_epoch(model, loss_fn, optimizer, epoch_batches, device, average, cfg.modality_dropout, hiding)
        score, selection_metrics = _evaluate_selection(scored, selection_batches, model_cfg, device, rank)
        record = {
            "epoch": epoch,
            **{k: round(_mean_across_ranks(v, device), 6) for k, v in losses.items()},
            **{f"{config['selection_split']}_{k}": v for k, v in selection_metrics.items()},
            "seconds": round(time.time() - started, 2),
            "attempt": state.attempt,
        }
        if state.finish_epoch(record, score) and rank == 0:  # the score is broadcast: every rank agrees
            best = state_dict_for_saving(scored)
        _report(core, optimizer, average, state, best, config, rank)
        if state.bad_epochs >= cfg.patience and epoch + 1 >= cfg.min_epochs:
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


def _restore_weights(core, optimizer, average, directory: str | None) -> dict[str, torch.Tensor] | None:
    """After a restart (`directory`: the checkpoint restored from), the latest weights, optimiser
    and weight average back in place; returns the best weights so far (None on a fresh run)."""
    if directory is None:
        return None
    saved = torch.load(os.path.join(directory, LATEST_FILE), map_location="cpu", weights_only=False)
    core.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if average is not None and saved.get("average") is not None:
        average.load_state_dict(saved["average"])
    return load_file(os.path.join(directory, BEST_DIR, WEIGHTS_FILE))


def _report(core, optimizer, average, state: TrainState, best, config, rank) -> None:
    """Rank 0 rewrites metrics.jsonl and checkpoints the latest state plus the best weights so
    far (best/); every rank reports."""

    def write(folder: str) -> None:
        latest = {"model": core.state_dict(), "optimizer": optimizer.state_dict()}
        if average is not None:
            latest["average"] = average.state_dict()
        torch.save(latest, os.path.join(folder, LATEST_FILE))
        save_checkpoint(os.path.join(folder, BEST_DIR), best, core.config, {**config["meta"], "selection": state.best})

    if rank == 0:
        write_history(config["run_dir"], state)
    report(state.history[-1], state, rank, write if rank == 0 else None)


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
    ray_dir = storage.join(run_dir, "ray")
    if resume and storage.exists(ray_dir):
        names = {path.rsplit("/", 1)[-1] for path in storage.walk(ray_dir)}
        if "training_state.pt" in names and STATE_FILE not in names:  # the checkpoint layout before ray_train.py
            raise ConfigError(f"--resume: {run_dir} was checkpointed by an older sdt-ray (training_state.pt); "
                              "train it again into a new --output")


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


def _export_best(checkpoint: ray.train.Checkpoint, run_dir: str, calibrate_on: TrainingData | None, by: str) -> TrainResult:
    """best/ out of Ray's latest checkpoint into RUN_DIR/best, calibrated on the way when asked
    (on a copy: Ray's checkpoint stays as it was, so --resume starts from the same state)."""
    best_uri = storage.join(run_dir, BEST_DIR)
    calibration = None
    with final_state(checkpoint) as (state, directory), tempfile.TemporaryDirectory() as tmp:
        best_dir = shutil.copytree(os.path.join(directory, BEST_DIR), os.path.join(tmp, BEST_DIR))
        if calibrate_on is not None:
            calibration = _calibrate(best_dir, calibrate_on, by)
        storage.upload_dir(best_dir, best_uri)
    return TrainResult(run_dir, best_uri, state.best_epoch, state.best, state.epoch, state.history, calibration)


def _calibrate(best_dir: str, data: TrainingData, by: str) -> dict[str, Any] | None:
    """Fit the temperature (by lowest ECE or NLL) on the selection split's labelled utterances (the
    split that chose the epoch, never test unless the parity protocol selects on test) and write it into best/."""
    loaded = load_checkpoint(best_dir)
    dialogues = to_dialogues(data.selection, loaded.config)
    logits, labels = predict(loaded.model, batches(dialogues, 16, loaded.config.max_speakers)).labelled_logits()
    if len(labels) == 0:  # nothing to fit on: the checkpoint stays at T = 1
        return None
    calibration = calibrate(logits, labels, data.selection_split, by).to_dict()
    write_calibration(best_dir, calibration)
    return calibration


def _where(run_dir: str, rank: int) -> None:
    """Each worker records where it ran (run_dir/workers/rank-K.json): node, host, process."""
    import socket

    record = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    storage.write_text(storage.join(run_dir, "workers", f"rank-{rank}.json"), json.dumps(record))


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
