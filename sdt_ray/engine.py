"""One training epoch and one evaluation pass over any iterable of batches.

No Ray and no I/O: train.py feeds these from Ray Data shards, evaluate.py from
a local table, and the unit tests from lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .collate import Batch, drop_modalities
from .losses import SelfDistillationLoss
from .schema import IGNORE_LABEL
from .model import SDT, SDTOutput


@dataclass
class Predictions:
    dialogue_ids: list[str]  # one per utterance
    positions: np.ndarray  # (N,) utterance position within its dialogue
    labels: np.ndarray  # (N,) true label index, IGNORE_LABEL where unlabelled
    logits: np.ndarray  # (N, C) fused logits, as the model gives them
    probabilities: np.ndarray  # (N, C) softmax of the fused logits / temperature
    modality_weights: np.ndarray  # (N, M) gate weights α
    present: np.ndarray  # (N, M) bool, the modalities each utterance was scored with

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        keep = self.labels != IGNORE_LABEL
        return self.labels[keep], self.predicted[keep]

    def labelled_logits(self) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n, C), labels (n,)) of the labelled utterances: what calibration fits and scores."""
        keep = self.labels != IGNORE_LABEL
        return self.logits[keep], self.labels[keep]


def forward(model: nn.Module, batch: Batch, present: dict[str, torch.Tensor] | None = None) -> SDTOutput:
    return model(batch.features, batch.speakers, batch.mask, batch.present if present is None else present)


def train_epoch(
    model: nn.Module,
    loss_fn: SelfDistillationLoss,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    average: AveragedModel | None = None,
    modality_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One pass; returns the mean loss parts, weighted by labelled utterances.

    `average`, if given, is updated after every optimiser step (an exponential
    moving average of the weights; see `weight_average`). `modality_dropout` hides
    each modality of each utterance with that probability (`drop_modalities`)."""
    model.train()
    sums: dict[str, float] = {}
    count = 0
    for batch in batches:
        batch = batch.to(device)
        present = drop_modalities(batch.present, modality_dropout, generator) if modality_dropout else batch.present
        output = forward(model, batch, present)
        parts = loss_fn(output.logits, output.modality_logits, batch.labels, batch.mask, present)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model.module if hasattr(model, "module") else model)
        n = int((batch.mask & (batch.labels != IGNORE_LABEL)).sum())
        for key, value in parts.as_floats().items():
            sums[key] = sums.get(key, 0.0) + value * n
        count += n
    return {f"loss_{k}": v / max(count, 1) for k, v in sums.items()}


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights (decay per optimiser step).

    Dev F1 of the raw weights jumps from epoch to epoch; the average moves
    smoothly, so the epoch that dev selects is less a matter of luck."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.inference_mode()
def predict(model: SDT | nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu",
            temperature: float = 1.0) -> Predictions:
    """Eval-mode pass; collects per-utterance probabilities for real utterances only.
    `temperature`: the checkpoint's calibration (calibration.py); it moves no argmax."""
    model.eval()
    ids: list[str] = []
    positions, labels, logits, probs, weights, present = [], [], [], [], [], []
    for batch in batches:
        batch = batch.to(device)
        output = forward(model, batch)
        mask = batch.mask.cpu()
        lengths = mask.sum(1).tolist()
        for dialogue_id, n in zip(batch.dialogue_ids, lengths):
            ids.extend([dialogue_id] * n)
            positions.append(np.arange(n))
        fused = output.logits.float().cpu()[mask]  # (n, C)
        logits.append(fused.numpy())
        probs.append(torch.softmax(fused / temperature, dim=-1).numpy())
        weights.append(output.modality_weights.float().cpu()[mask].numpy())
        present.append(torch.stack(list(batch.present.values()), dim=-1).cpu()[mask].numpy())  # (n, M)
        labels.append(batch.labels.cpu()[mask].numpy())
    if not ids:
        empty = np.zeros((0, 0))
        return Predictions([], np.zeros(0, int), np.zeros(0, int), empty, empty, empty, empty.astype(bool))
    return Predictions(
        dialogue_ids=ids,
        positions=np.concatenate(positions),
        labels=np.concatenate(labels),
        logits=np.concatenate(logits),
        probabilities=np.concatenate(probs),
        modality_weights=np.concatenate(weights),
        present=np.concatenate(present),
    )
