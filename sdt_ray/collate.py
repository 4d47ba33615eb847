"""Whole dialogues in, padded tensors out. A dialogue is never split.

`Dialogue` is the unit everything batches: training shards, evaluation and
scoring all move dialogues, never loose utterances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .schema import IGNORE_LABEL


@dataclass
class Dialogue:
    dialogue_id: str
    features: dict[str, np.ndarray]  # modality -> (n, D_m) float32, utterances in order
    speakers: np.ndarray  # (n,) int64 speaker ids, already mapped (relative or fixed table)
    labels: np.ndarray  # (n,) int64, IGNORE_LABEL where unlabelled
    # modality -> (n,) bool, False where the utterance lacks it (its vector is then zeros);
    # a modality not listed is present throughout.
    present: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.speakers)

    def presence(self, modality: str) -> np.ndarray:
        if self.present is None or modality not in self.present:
            return np.ones(len(self), dtype=bool)
        return self.present[modality]


@dataclass
class Batch:
    features: dict[str, torch.Tensor]  # modality -> (B, L, D_m)
    speakers: torch.Tensor  # (B, L) long; padding = max_speakers
    labels: torch.Tensor  # (B, L) long; IGNORE_LABEL on padding
    mask: torch.Tensor  # (B, L) bool, True on real utterances
    dialogue_ids: list[str]
    present: dict[str, torch.Tensor]  # modality -> (B, L) bool, True where the utterance has it

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            features={m: x.to(device) for m, x in self.features.items()},
            speakers=self.speakers.to(device),
            labels=self.labels.to(device),
            mask=self.mask.to(device),
            dialogue_ids=self.dialogue_ids,
            present={m: x.to(device) for m, x in self.present.items()},
        )


def relative_speaker_ids(speakers: list[str | None], max_speakers: int) -> np.ndarray:
    """First speaker seen is 0, the next 1, ...; ids past the table share the last slot.

    This makes a model independent of who the speakers are, so unseen speakers work.
    """
    seen: dict[str | None, int] = {}
    ids = np.empty(len(speakers), dtype=np.int64)
    for i, name in enumerate(speakers):
        ids[i] = seen.setdefault(name, len(seen))
    return np.minimum(ids, max_speakers - 1)


def fixed_speaker_ids(speakers: list[str | None], table: tuple[str, ...], max_speakers: int) -> np.ndarray:
    """The reference's fixed speaker table; a name not in it takes the last slot."""
    index = {name: i for i, name in enumerate(table)}
    return np.array([index.get(s, max_speakers - 1) for s in speakers], dtype=np.int64)


def collate(dialogues: list[Dialogue], max_speakers: int) -> Batch:
    """Pad a list of dialogues to the longest one."""
    B = len(dialogues)
    L = max(len(d) for d in dialogues)
    modalities = list(dialogues[0].features)
    features = {m: torch.zeros(B, L, dialogues[0].features[m].shape[1]) for m in modalities}  # (B, L, D_m)
    speakers = torch.full((B, L), max_speakers, dtype=torch.long)  # (B, L)
    labels = torch.full((B, L), IGNORE_LABEL, dtype=torch.long)  # (B, L)
    mask = torch.zeros(B, L, dtype=torch.bool)  # (B, L)
    present = {m: torch.zeros(B, L, dtype=torch.bool) for m in modalities}  # m -> (B, L)
    for b, d in enumerate(dialogues):
        n = len(d)
        for m in modalities:
            features[m][b, :n] = torch.from_numpy(d.features[m])
            present[m][b, :n] = torch.from_numpy(d.presence(m))
        speakers[b, :n] = torch.from_numpy(d.speakers)
        labels[b, :n] = torch.from_numpy(d.labels)
        mask[b, :n] = True
    return Batch(features, speakers, labels, mask, [d.dialogue_id for d in dialogues], present)


def drop_modalities(
    present: dict[str, torch.Tensor], probability: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Modality dropout for training: each present modality of each utterance is hidden with
    `probability`, so that a model learns to work from any subset. An utterance whose every
    modality would go keeps them all (a prediction needs at least one).

    present: modality -> (B, L) bool; returns the same shapes."""
    names = list(present)
    stacked = torch.stack([present[m] for m in names], dim=-1)  # (B, L, M)
    noise = torch.rand(stacked.shape, generator=generator, device="cpu").to(stacked.device)  # (B, L, M)
    kept = stacked & (noise >= probability)  # (B, L, M)
    none_left = ~kept.any(dim=-1, keepdim=True)  # (B, L, 1)
    kept = torch.where(none_left, stacked, kept)
    return {m: kept[..., i] for i, m in enumerate(names)}


def batches(
    dialogues: list[Dialogue], batch_size: int, max_speakers: int, shuffle: bool = False, seed: int = 0
) -> list[Batch]:
    """Group whole dialogues into batches of `batch_size` dialogues.

    Without shuffling, dialogues are sorted by length so batches pad little.
    """
    order = np.arange(len(dialogues))
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    else:
        order = np.argsort([len(d) for d in dialogues], kind="stable")
    return [
        collate([dialogues[i] for i in order[start : start + batch_size]], max_speakers)
        for start in range(0, len(order), batch_size)
    ]
