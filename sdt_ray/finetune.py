"""Ray Train entry for `finetune-text`: a transformers text encoder plus a linear head,
trained with DDP on the train split's labels, the epoch selected on dev weighted F1. Test
is never read. This is how SDT's text features were made (RoBERTa fine-tuned per dataset,
then frozen: the COSMIC recipe); `extract --text-model OUTPUT` then uses the encoder as is.

OUTPUT layout:
    config.json, model.safetensors, tokenizer files, sdt_ray_text_head.safetensors,
    sdt_ray_text_encoder.json    the best epoch's encoder folder (text_classifier.py)
    metrics.jsonl                one line per epoch
    progress.jsonl               steps so far in the running epoch (rank 0, about every 20 s)
    run.json                     while it runs: Ray's run name and the card it will carry (for --resume)
    ray/                         Ray Train's storage while it runs (removed at the end)

Every epoch is checkpointed: the last epoch's weights, optimiser state and rank 0's random state
(latest.pt), and the best epoch's encoder folder so far (best/). A restart, after a lost worker or
with --resume after a killed job, continues from the last finished epoch; with one worker (the
CPU default) it gives the uninterrupted run's weights exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import torch

from . import storage
from .errors import ConfigError, InputError
from .failpoints import crash_once
from .features.local_models import autocast, check_precision
from .features.text import resolve_text_model, tokenize
from .text_card import CARD_FILE, TextEncoderCard, TextInput, labelled_fingerprint, read_card
from .windows import Window, epoch_batches, plan_steps, side_cap, specials, turn_ids
from .windows import batch as window_batch
from .text_classifier import (
    UtteranceClassifier,
    classifier_rows,
    freeze_lower_layers,
    layer_index,
    load_base,
    predict_classes,
    save_classifier,
    window_rows,
)
from .losses import supervised_contrastive
from .metrics import classification_report
from .schema import labels_from_metadata, validate_utterances
from .session import ray_session, require_shared_storage
from .ray_train import (JsonlPrinter, TrainerPlan, TrainState, absolute_uri, build_trainer, final_state, fit,
                        read_dataset, report, restored, write_history)
from .training_data import carve_dev

PROGRESS_EVERY_S = 20.0
RUN_FILE = "run.json"
LATEST_FILE = "latest.pt"
BEST_DIR = "best"


@dataclass(frozen=True)
class FinetuneOptions:
    base_model: str | None = None  # `minilm` (the packaged MiniLM), a local folder, or a cached id
    epochs: int = 3
    lr: float = 3e-5  # AdamW peak; linear warm-up over the first 10% of steps, then linear decay
    batch_size: int = 32  # utterances per optimiser step, over all workers
    max_length: int = 128  # tokens per input, context included
    context: int = 0  # previous turns read with each utterance, as `speaker: text`; 0: none
    future: int = 0  # following turns read with it (offline archives; a live call has none yet)
    speakers: bool = True  # the utterance itself as `speaker: text` (names from the table, roles for calls)
    windows: bool = False  # dialogue windows (windows.py): every turn of a window learnt in one pass; archives only
    freeze_layers: int = 0  # the embeddings and this many lowest transformer layers keep their weights
    accumulate: int = 1  # micro-batches per optimiser step: batch_size / accumulate utterances in memory at once
    precision: str = "fp32"  # fp32, or bf16 autocast (about 2x faster on CPUs with avx512_bf16, and on recent GPUs)
    contrastive: float = 0.0  # λ in (1-λ)·CE + λ·SCL (losses.supervised_contrastive on the pooled vectors); 0: CE alone
    contrastive_temperature: float = 0.3  # τ of that term
    layer_lr_decay: float = 1.0  # layer k of L learns at lr·d^(L-1-k), the embeddings at lr·d^L, the head at lr; 1: one lr
    workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    dev_fraction: float = 0.1  # of train's dialogues, carved when the table has no dev split
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_failures: int = 0
    overwrite: bool = False
    resume: bool = False  # continue OUTPUT's unfinished run (run.json) from its last finished epoch

    @property
    def has_context(self) -> bool:
        return self.context > 0 or self.future > 0 or self.windows

    def text_input(self, separator: str) -> TextInput:
        window = side_cap(self.max_length) if self.windows else 0
        return TextInput(past=self.context, future=self.future, speakers=self.speakers, separator=separator, window=window)


@dataclass
class FinetuneResult:
    output: str
    best_epoch: int
    dev_metrics: dict[str, float]
    history: list[dict[str, Any]]
    card: TextEncoderCard
    seconds: float = 0.0  # wall time of the whole command, Ray start-up included

    def describe(self) -> str:
        dev = self.dev_metrics
        return (f"best epoch {self.best_epoch + 1} of {len(self.history)}: dev weighted F1 {dev['weighted_f1']:.4f}, "
                f"accuracy {dev['accuracy']:.4f}, macro F1 {dev['macro_f1']:.4f}; wrote {self.output} ({self.seconds:.0f}s)")


def finetune_text(input_uri: str, output_uri: str, options: FinetuneOptions = FinetuneOptions(),
                  address: str | None = None, log: Callable[[str], None] = print) -> FinetuneResult:
    started = time.time()
    _check(options)
    _check_layers(options)
    output_uri = absolute_uri(output_uri)
    _check_output(output_uri, options)
    train_rows, dev_rows, labels, dev_split, separator, fingerprint, dialogues = _prepare(input_uri, options, log)
    require_shared_storage(address, {"--input": input_uri, "--output": output_uri})
    card = TextEncoderCard(
        base_model=options.base_model or "minilm", labels=labels, context=options.context, future=options.future,
        speakers=options.speakers, max_length=options.max_length, precision=options.precision,
        window=options.text_input(separator).window, label_splits=["train"],
        label_dialogues=sorted(set(train_rows.column("dialogue_id").to_pylist())),
        data_sha256=fingerprint, separator=separator,
        training={k: v for k, v in asdict(options).items() if k not in ("overwrite", "resume", "base_model")} | {"dev_split": dev_split},
    )
    run_name = _claim_run(output_uri, card, options.resume)
    log(f"fine-tuning {resolve_text_model(options.base_model)} on {train_rows.num_rows} train utterances "
        f"({len(card.label_dialogues)} dialogues), selecting on {dev_split} ({dev_rows.num_rows}); "
        f"{options.epochs} epochs, batch {options.batch_size}" + (f" in {options.accumulate} steps" if options.accumulate > 1 else "")
        + f", lr {options.lr:g}, {card.text_input().describe()}"
        + (f", lowest {options.freeze_layers} layers frozen" if options.freeze_layers else "")
        + (f", lr x{options.layer_lr_decay:g} per layer down" if options.layer_lr_decay < 1 else "")
        + (f", {options.precision}" if options.precision != "fp32" else "")
        + (f", loss {1 - options.contrastive:g}·CE + {options.contrastive:g}·contrastive (τ {options.contrastive_temperature:g})"
           if options.contrastive else "") + f", {options.workers} worker(s)"
        + (f"; resuming run {run_name}" if options.resume else ""))
    with ray_session(address):
        trainer = build_trainer(_plan(train_rows, dev_rows, dialogues, card, options, output_uri, run_name))
        with JsonlPrinter(storage.join(output_uri, "progress.jsonl"), log, _describe_progress, interval_s=2.0, key="n"), \
             JsonlPrinter(storage.join(output_uri, "metrics.jsonl"), log, _describe_epoch, interval_s=2.0):
            checkpoint = fit(trainer, "fine-tuning")
    return dataclasses.replace(_export(checkpoint, output_uri), seconds=time.time() - started)


def _check(options: FinetuneOptions) -> None:
    counts = {"--epochs": options.epochs, "--batch-size": options.batch_size, "--max-length": options.max_length,
              "--workers": options.workers, "--accumulate": options.accumulate}
    for flag, value in counts.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if min(options.context, options.future, options.freeze_layers) < 0 or options.lr <= 0:
        raise ConfigError("--context, --future and --freeze-layers must not be negative, and --lr must be positive")
    check_precision(options.precision)
    if not 0.0 <= options.contrastive < 1.0:
        raise ConfigError(f"--contrastive must be in [0, 1) (got {options.contrastive}): at 1 the head would learn nothing")
    if not 0.0 < options.layer_lr_decay <= 1.0:
        raise ConfigError(f"--layer-lr-decay must be in (0, 1] (got {options.layer_lr_decay}): "
                          "a layer learns at most as fast as the one above it")
    if options.contrastive_temperature <= 0:
        raise ConfigError(f"--contrastive-temperature must be positive (got {options.contrastive_temperature})")
    if options.windows and (options.context or options.future):
        raise ConfigError("--windows reads as many turns around each utterance as fit --max-length: drop --context and --future")
    if options.batch_size < options.workers * options.accumulate:
        raise ConfigError(f"--batch-size {options.batch_size} is split over {options.workers} worker(s) and "
                          f"{options.accumulate} accumulation step(s): give each at least one utterance")


def _check_output(output_uri: str, options: FinetuneOptions) -> None:
    """OUTPUT is new, replaced on purpose (--overwrite), or an unfinished run continued (--resume)."""
    run_file = storage.join(output_uri, RUN_FILE)
    if options.resume and options.overwrite:
        raise ConfigError("--resume continues OUTPUT's run and --overwrite replaces it: give one of them")
    if options.resume and not storage.exists(run_file):
        finished = storage.exists(storage.join(output_uri, CARD_FILE))
        raise ConfigError(f"--resume: {output_uri} holds no unfinished fine-tuning"
                          + (" (it is a finished encoder folder)" if finished else f" (no {RUN_FILE})"))
    if not options.resume and storage.exists(output_uri) and not options.overwrite:
        hint = "pass --resume to continue its unfinished run, or --overwrite to replace it" if storage.exists(run_file) \
            else "pass --overwrite to replace it"
        raise ConfigError(f"{output_uri} already exists; {hint}")


def _claim_run(output_uri: str, card: TextEncoderCard, resume: bool) -> str:
    """Ray's run name: the recorded one on --resume (Ray Train then restores the run's latest
    checkpoint), after checking that the run would be the same; else a new one, in a fresh OUTPUT."""
    run_file = storage.join(output_uri, RUN_FILE)
    if resume:
        recorded = json.loads(storage.read_text(run_file))
        changed = _card_changes(TextEncoderCard.from_json(recorded["card"]), card)
        if changed:
            raise ConfigError(f"--resume: {output_uri} was started with other settings or data ({', '.join(changed)}); "
                              "resume with the same options and --input, or start again with --overwrite")
        return recorded["ray_run_name"]
    storage.delete(output_uri)
    name = f"finetune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage.write_text(run_file, json.dumps({"ray_run_name": name, "card": card.to_json()}, indent=1))
    return name


def _card_changes(started: TextEncoderCard, now: TextEncoderCard) -> list[str]:
    """What differs between the card a run started with and this command's (restart budget aside)."""
    a, b = asdict(started), asdict(now)
    names = {"data_sha256": "--input's labelled train rows", "label_dialogues": "--input's train dialogues",
             "base_model": "--base-model", "max_length": "--max-length", "context": "--context", "future": "--future",
             "speakers": "--speakers", "labels": "--input's labels", "separator": "the tokenizer's separator",
             "precision": "--precision"}
    changed = [names.get(key, key) for key in a if key not in ("training", "selection") and a[key] != b[key]]
    ignore = {"max_failures"}
    keys = (set(a["training"]) | set(b["training"])) - ignore
    defaults = asdict(FinetuneOptions())  # an option newer than the run's card had its default then
    changed += sorted(f"--{k.replace('_', '-')}" for k in keys
                      if a["training"].get(k, defaults.get(k)) != b["training"].get(k, defaults.get(k)))
    return list(dict.fromkeys(changed))  # --context and the like are in both places


def _check_layers(options: FinetuneOptions) -> None:
    """--freeze-layers against the base model's depth, from its config alone, before Ray starts."""
    if options.freeze_layers:
        from transformers import AutoConfig

        from .features.local_models import load_pretrained

        config = load_pretrained("text model", options.base_model, resolve_text_model(options.base_model), AutoConfig)
        if options.freeze_layers > config.num_hidden_layers:
            raise ConfigError(f"--freeze-layers {options.freeze_layers}: {options.base_model or 'minilm'} has "
                              f"{config.num_hidden_layers} layers")


def _prepare(input_uri: str, options: FinetuneOptions, log) -> tuple[pa.Table, pa.Table, list[str], str, str, str, pa.Table | None]:
    """Train and dev rows (labelled, with text), the label order, dev's name, the context
    separator, the fingerprint of the labelled train rows (speaker and position included), and
    with --windows the train dialogues (window_rows)."""
    raw = storage.read_table(input_uri)
    table = validate_utterances(raw, input_uri)
    splits = pc.unique(table.column("split")).to_pylist()
    if "train" not in splits:
        raise InputError(f"{input_uri}: no train split to fine-tune on (splits: {splits})")
    labels = labels_from_metadata(raw.schema) or sorted(
        set(table.filter(pc.equal(table.column("split"), "train")).column("label").drop_null().to_pylist()))
    separator = (_separator(options.base_model) if options.has_context else None) or "|"
    spec = options.text_input(separator)
    rows, left_out = classifier_rows(table, labels, spec, splits=("train", "dev"))
    if left_out:
        log("left out of fine-tuning and selection: " + ", ".join(f"{n} rows with {why}" for why, n in left_out.items()))
    train = rows.filter(pc.equal(rows.column("split"), "train"))
    dev = rows.filter(pc.equal(rows.column("split"), "dev"))
    dev_split = "dev"
    if dev.num_rows == 0:  # IEMOCAP-like tables: carve dev from train by dialogue, never touch test
        train, dev = carve_dev(train, options.dev_fraction, options.seed)
        dev_split = f"dev carved from train ({options.dev_fraction:.0%} of dialogues, seed {options.seed})"
        log(f"note: {input_uri} has no dev split; selecting on {dev_split}")
    if train.num_rows < options.batch_size:
        raise InputError(f"{input_uri}: {train.num_rows} labelled train utterances, fewer than one batch of {options.batch_size}")
    seen = table.filter(pc.is_in(table.column("dialogue_id"), value_set=pc.unique(train.column("dialogue_id"))))
    fingerprint = labelled_fingerprint(seen.filter(pc.and_(pc.equal(seen.column("split"), "train"), pc.is_valid(seen.column("label")))))
    dialogues = window_rows(seen, labels, spec) if options.windows else None
    return train, dev, labels, dev_split, separator, fingerprint, dialogues


def _separator(base_model: str | None) -> str | None:
    """The tokenizer's separator token, between an utterance and its context turns."""
    from transformers import AutoTokenizer

    from .features.local_models import load_pretrained

    return load_pretrained("text model", base_model, resolve_text_model(base_model), AutoTokenizer).sep_token


def _plan(train_rows: pa.Table, dev_rows: pa.Table, dialogues: pa.Table | None, card: TextEncoderCard, options: FinetuneOptions,
          output_uri: str, run_name: str) -> TrainerPlan:
    columns = ["text", "text_context", "label_id"]
    per_worker = options.batch_size // options.workers
    steps = math.ceil((train_rows.num_rows // options.workers) / per_worker)  # equal split drops the remainder
    loop_config = {"card": card.to_json(), "options": asdict(options), "output": output_uri,
                   "steps_per_epoch": steps, "per_worker_batch": per_worker}
    if dialogues is None:
        train = ray.data.from_arrow(train_rows.select(columns))
    else:  # whole dialogues, cut into windows on each worker every epoch
        from transformers import AutoTokenizer

        from .features.local_models import load_pretrained

        tokenizer = load_pretrained("text model", options.base_model, resolve_text_model(options.base_model), AutoTokenizer)
        per_step, steps = plan_steps(_tokenized(dialogues, tokenizer, options.max_length), options.max_length,
                                     options.batch_size, options.workers, options.seed)
        loop_config.update(steps_per_epoch=steps, windows_per_step=per_step)
        train = ray.data.from_arrow(dialogues)
    datasets = {"train": train, "dev": ray.data.from_arrow(dev_rows.select(columns))}
    # train is split into equal row counts, so every rank takes the same number of DDP steps; dev is scored whole by rank 0.
    return TrainerPlan(finetune_loop_per_worker, loop_config, options.workers, options.use_gpu, datasets, datasets_to_split=["train"],
                       run_name=run_name, storage_uri=storage.join(output_uri, "ray"),
                       max_failures=options.max_failures)


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker."""
    options = FinetuneOptions(**config["options"])
    card = TextEncoderCard.from_json(config["card"])
    rank = ray.train.get_context().get_world_rank()
    if not options.use_gpu:  # the node's cores shared among the workers on it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ray.train.get_context().get_local_world_size()))
    torch.manual_seed(options.seed)  # the same head on every rank
    device = ray.train.torch.get_device()
    tokenizer, encoder = load_base(options.base_model)
    classifier = UtteranceClassifier(encoder, len(card.labels), options.dropout)
    freeze_lower_layers(classifier.encoder, options.freeze_layers)
    with tempfile.TemporaryDirectory() as best_dir:  # rank 0's copy of the best epoch's encoder folder
        with restored() as (state, directory):
            latest = _restore(directory, classifier, best_dir if rank == 0 else None) if directory is not None else None
        model = ray.train.torch.prepare_model(classifier)
        optimizer, schedule = _optimizer(model, options, config["steps_per_epoch"], state.epoch)
        if latest is not None:
            optimizer.load_state_dict(latest["optimizer"])
            if rank == 0:  # dropout continues where it stopped (the other ranks draw afresh)
                _set_random_state(latest)
        shard = ray.train.get_dataset_shard("train")
        dev = read_dataset("dev") if rank == 0 else None
        batches, step = _batches_and_step(model, shard, tokenizer, card, options, config, rank, device)

        for epoch in range(state.epoch, options.epochs):
            started = time.time()
            model.train()
            loss = _train_epoch(optimizer, schedule, batches(epoch), step, config, epoch, rank)
            record = {"epoch": epoch, "loss": round(loss, 6), "steps": config["steps_per_epoch"], "workers": options.workers,
                      "seconds": round(time.time() - started, 1),
                      "utterances_per_s": round(config["steps_per_epoch"] * options.batch_size / max(time.time() - started, 1e-9), 1),
                      "attempt": state.attempt}
            score = None  # only rank 0 scores dev
            if rank == 0:
                metrics = _score_dev(classifier, tokenizer, dev, card, options, device)
                record.update({f"dev_{k}": v for k, v in metrics.items()})
                score = metrics["weighted_f1"]
            if state.finish_epoch(record, score) and rank == 0:
                _save_best(best_dir, classifier, tokenizer, card, state)
            _report(classifier, optimizer, best_dir, state, config["output"], rank)
            crash_once("finetune-reported")


def _restore(directory: str, classifier: UtteranceClassifier, best_dir: str | None) -> dict[str, Any]:
    """After a restart: the last finished epoch's weights into `classifier`, and (rank 0) the
    best epoch's folder into `best_dir`; returns latest.pt (optimiser and random state)."""
    latest = torch.load(os.path.join(directory, LATEST_FILE), map_location="cpu", weights_only=False)
    classifier.load_state_dict(latest["model"])
    if best_dir is not None:
        shutil.copytree(os.path.join(directory, BEST_DIR), best_dir, dirs_exist_ok=True)
    return latest


def _random_state() -> dict[str, torch.Tensor]:
    state = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def _set_random_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda_rng"])


def _save_best(best_dir: str, classifier: UtteranceClassifier, tokenizer, card: TextEncoderCard, state: TrainState) -> None:
    selection = {"split": card.training.get("dev_split", "dev"), "epoch": state.best_epoch,
                 "metrics": {k[4:]: v for k, v in state.best.items() if k.startswith("dev_")}}
    shutil.rmtree(best_dir)
    save_classifier(best_dir, classifier, tokenizer, TextEncoderCard(**{**asdict(card), "selection": selection}))


def _optimizer(model, options: FinetuneOptions, steps_per_epoch: int, epochs_done: int):
    """AdamW without decay on biases and norms, each parameter at its layer's lr (layer_lr_scales);
    linear warm-up (10% of steps), then linear decay to 0."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for _, scale, parameter in layer_lr_scales(model, options.layer_lr_decay):
        groups.setdefault((scale, parameter.ndim > 1), []).append(parameter)
    # fastest first, decayed before not: at d = 1 the two groups of runs from before --layer-lr-decay,
    # in their order, so that --resume loads their optimiser state
    ordered = sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))
    optimizer = torch.optim.AdamW([{"params": params, "lr": options.lr * scale,
                                    "weight_decay": options.weight_decay if decays else 0.0}
                                   for (scale, decays), params in ordered], lr=options.lr)
    total = steps_per_epoch * options.epochs
    warmup = max(1, int(0.1 * total))

    def factor(step: int) -> float:
        step += epochs_done * steps_per_epoch  # a restarted run continues the schedule where it stopped
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def layer_lr_scales(model, decay: float) -> list[tuple[str, float, torch.nn.Parameter]]:
    """(name, lr scale, parameter) of each learning parameter. Layer-wise lr decay (Howard & Ruder
    2018; Clark et al. 2020): of L layers, layer k scales by decay^(L-1-k), so the top layer learns at
    the full lr; the embeddings and other encoder-wide parts by decay^L; the head by 1."""
    depth = 1 + max((k for n, _ in model.named_parameters() if (k := layer_index(n)) is not None),
                    default=-1)  # L, frozen layers too
    scales = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if (index := layer_index(name)) is not None:
            scale = decay ** (depth - 1 - index)
        elif re.search(r"(?:^|\.)head\.", name):
            scale = 1.0
        else:
            scale = decay ** depth
        scales.append((name, scale, parameter))
    return scales


def _batches_and_step(model, shard, tokenizer, card: TextEncoderCard, options: FinetuneOptions, config, rank: int, device):
    """(epoch -> this rank's batches, batch -> its loss after backward): rows in length
    buckets, or with --windows the shard's dialogues (read once) cut into windows."""

    def seed(epoch: int) -> int:
        return int(np.random.SeedSequence([options.seed, epoch, rank]).generate_state(1)[0])

    if not card.window:
        return (lambda epoch: _length_bucketed(shard, config["per_worker_batch"], seed(epoch)),
                lambda batch: _accumulated_step(model, tokenizer, batch, options, device))
    dialogues = _tokenized(pa.concat_tables(shard.iter_batches(batch_format="pyarrow")), tokenizer, options.max_length)
    special = specials(tokenizer)
    return (lambda epoch: epoch_batches(dialogues, options.max_length, config["windows_per_step"], config["steps_per_epoch"],
                                        special, np.random.default_rng(seed(epoch))),
            lambda windows: _window_step(model, windows, options, special.pad, device))


def _tokenized(dialogues: pa.Table, tokenizer, max_length: int) -> list[tuple[list[list[int]], list[int]]]:
    """window_rows' dialogues as (each turn's token ids, label ids)."""
    turns = dialogues.column("turns").to_pylist()
    ids = turn_ids(tokenizer, [t for dialogue in turns for t in dialogue], max_length)
    return [([ids[t] for t in dialogue], labels) for dialogue, labels in zip(turns, dialogues.column("labels").to_pylist())]


def _train_epoch(optimizer, schedule, batches, step, config, epoch: int, rank: int) -> float:
    total, steps, last_note = 0.0, 0, time.time()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = step(batch)
        optimizer.step()
        schedule.step()
        total, steps = total + loss, steps + 1
        if rank == 0 and time.time() - last_note > PROGRESS_EVERY_S:
            _note_progress(config["output"], epoch, steps, config["steps_per_epoch"], total / steps)
            last_note = time.time()
    return total / max(steps, 1)


def _accumulated_step(model, tokenizer, batch: pa.Table, options: FinetuneOptions, device) -> float:
    """Gradients of one optimiser step's batch of rows, in `accumulate` micro-batches (_backward)."""
    parts = np.array_split(np.arange(batch.num_rows), min(options.accumulate, batch.num_rows))
    micro_batches = []
    for rows in parts:
        micro = batch.take(pa.array(rows))
        contexts = micro.column("text_context").to_pylist() if options.has_context else None
        tokens, mask = tokenize(tokenizer, micro.column("text").to_pylist(), contexts, options.max_length)
        micro_batches.append((tokens, mask, torch.tensor(micro.column("label_id").to_pylist(), dtype=torch.long)))
    return _backward(model, micro_batches, options, device)


def _window_step(model, windows: list[Window], options: FinetuneOptions, pad: int, device) -> float:
    """Gradients of one step over dialogue windows, every labelled turn of each a target, in
    `accumulate` micro-batches of windows (_backward)."""
    parts = [p for p in np.array_split(np.arange(len(windows)), min(options.accumulate, len(windows))) if len(p)]
    micro_batches = []
    for rows in parts:
        micro = [windows[i] for i in rows]
        tokens, pool = window_batch([w.sequence for w in micro], [w.spans for w in micro], pad)
        micro_batches.append((tokens, pool, torch.tensor([label for w in micro for label in w.labels], dtype=torch.long)))
    return _backward(model, micro_batches, options, device)


def _backward(model, micro_batches: list[tuple[Any, torch.Tensor, torch.Tensor]], options: FinetuneOptions, device) -> float:
    """Sums the gradients of (tokens, pool, labels) micro-batches, each loss weighted by its
    share of the step's utterances, so that the sum is the whole step's mean loss. DDP averages
    across ranks once, on the last micro-batch. Returns the step's mean loss. With --contrastive,
    a micro-batch's rows are each other's positives and negatives (one worker's, not the step's)."""
    n_total = sum(len(labels) for _, _, labels in micro_batches)
    total = 0.0
    for k, (tokens, pool, labels) in enumerate(micro_batches):
        sync = k == len(micro_batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(device, options.precision):
                output = model({name: t.to(device) for name, t in tokens.items()}, pool.to(device))
            loss = _loss(output, labels.to(device), options) * (len(labels) / n_total)
            loss.backward()
        total += float(loss.item())
    return total


def _loss(output, labels: torch.Tensor, options: FinetuneOptions) -> torch.Tensor:
    """CE on the head's logits; with --contrastive λ, (1-λ)·CE + λ·SCL on the pooled vectors."""
    ce = torch.nn.functional.cross_entropy(output.logits.float(), labels)  # logits (n, C)
    if not options.contrastive:
        return ce
    scl = supervised_contrastive(output.pooled, labels, options.contrastive_temperature)  # pooled (n, H)
    return (1.0 - options.contrastive) * ce + options.contrastive * scl


def _length_bucketed(shard, batch_size: int, seed: int, pool_batches: int = 32):
    """Batches of similar length, in random order: a pool of `pool_batches` batches is drawn at
    random, sorted by text length and cut into batches, which are then shuffled. Less padding
    makes a step about 1.4x faster on CPU. Every rank's shard has the same number of rows,
    so every rank still takes the same number of steps."""
    rng = np.random.default_rng(seed)
    pools = shard.iter_batches(batch_size=batch_size * pool_batches, batch_format="pyarrow",
                               local_shuffle_buffer_size=batch_size * pool_batches * 4, local_shuffle_seed=seed)
    for pool in pools:
        lengths = pc.utf8_length(pool.column("text")).to_numpy(zero_copy_only=False)
        if "text_context" in pool.column_names:
            lengths = lengths + pc.utf8_length(pool.column("text_context")).to_numpy(zero_copy_only=False)
        pool = pool.take(pa.array(np.argsort(lengths, kind="stable")))
        starts = list(range(0, pool.num_rows, batch_size))
        for start in rng.permutation(starts):
            yield pool.slice(int(start), batch_size)


def _note_progress(output: str, epoch: int, step: int, steps: int, loss: float) -> None:
    record = {"n": epoch * 1_000_000 + step, "epoch": epoch, "step": step, "steps": steps, "loss": round(loss, 4),
              "threads": torch.get_num_threads()}
    storage.write_text(storage.join(output, "progress.jsonl"), json.dumps(record) + "\n")


def _score_dev(classifier, tokenizer, dev: pa.Table, card: TextEncoderCard, options: FinetuneOptions, device) -> dict[str, float]:
    contexts = dev.column("text_context").to_pylist() if options.has_context else None
    predicted = predict_classes(classifier, tokenizer, dev.column("text").to_pylist(), contexts, options.max_length, device=device,
                                precision=options.precision, windowed=card.window > 0)
    report = classification_report(dev.column("label_id").to_numpy(), predicted.numpy(), card.labels)
    return {k: round(report[k], 6) for k in ("accuracy", "weighted_f1", "macro_f1")}


def _report(classifier, optimizer, best_dir: str, state: TrainState, output: str, rank: int) -> None:
    """Rank 0 rewrites metrics.jsonl and checkpoints the last epoch (latest.pt) beside the best
    epoch's folder (best/); every rank reports."""

    def write(folder: str) -> None:
        shutil.copytree(best_dir, os.path.join(folder, BEST_DIR))
        torch.save({"model": classifier.state_dict(), "optimizer": optimizer.state_dict()} | _random_state(),
                   os.path.join(folder, LATEST_FILE))

    if rank == 0:
        write_history(output, state)
    report(state.history[-1], state, rank, write if rank == 0 else None)


def _export(checkpoint: ray.train.Checkpoint, output_uri: str) -> FinetuneResult:
    """The best epoch's folder into OUTPUT. Ray's copy (OUTPUT/ray) is only for restarts: removed,
    last, so that OUTPUT is a finished encoder folder as soon as run.json is gone."""
    with final_state(checkpoint) as (state, directory):
        best_epoch = state.best_epoch
        best = os.path.join(directory, BEST_DIR)
        card = read_card(best)
        storage.upload_dir(best, output_uri)
    for name in ("progress.jsonl", RUN_FILE, "ray"):
        storage.delete(storage.join(output_uri, name))
    history = [json.loads(line) for line in storage.read_text(storage.join(output_uri, "metrics.jsonl")).splitlines()]
    dev = {k[4:]: v for k, v in history[best_epoch].items() if k.startswith("dev_")}
    return FinetuneResult(output_uri, best_epoch, dev, history, card)


def _describe_epoch(record: dict[str, Any]) -> str:
    star = " *" if record.get("best_epoch") == record["epoch"] else ""
    return (f"epoch {record['epoch'] + 1:3d}  loss {record['loss']:.4f}  dev acc {record.get('dev_accuracy', float('nan')):.4f}  "
            f"wF1 {record.get('dev_weighted_f1', float('nan')):.4f}  mF1 {record.get('dev_macro_f1', float('nan')):.4f}  "
            f"{record['seconds']:.0f}s, {record['utterances_per_s']:.1f} utt/s{star}")


def _describe_progress(record: dict[str, Any]) -> str:
    return f"  epoch {record['epoch'] + 1} step {record['step']}/{record['steps']}  loss {record['loss']:.4f}"
