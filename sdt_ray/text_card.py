"""What a fine-tuned text encoder carries about itself (`finetune-text` writes it into the
encoder folder, `extract` copies it into the features table), and the context input that
fine-tuning and extraction share.

A frozen, off-the-shelf encoder has no card. A fine-tuned one saw labels: the card names
the dialogues whose labels it saw, so `train` and `evaluate` can warn when a split they
select or report on overlaps them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

CARD_FILE = "sdt_ray_text_encoder.json"
CARD_METADATA_KEY = b"sdt_ray.text_encoder"  # JSON: the card, in a features table's metadata
CONTEXT_COLUMN = "text_context"  # the turns around each utterance, added for encoders fine-tuned with context
FUTURE_MARK = "next"  # between the past turns and the future ones in a context: `past | next | future`


@dataclass(frozen=True)
class TextInput:
    """How an utterance is written for a fine-tuned encoder. `finetune-text` and `extract` (and
    the live paths) build it with the same functions, from the card, so the encoder always reads
    what it was trained on."""

    past: int = 0  # previous turns of the dialogue in the context, nearest first
    future: int = 0  # following turns (offline archives only: a live call has none yet)
    speakers: bool = False  # the utterance itself as `speaker: text`
    separator: str = "|"  # between context turns: the tokenizer's separator token
    # Dialogue windows (windows.py): the utterance among its neighbours in dialogue order, as many
    # as fit the token limit, up to this many on each side; 0: the pair input (past/future) above.
    window: int = 0

    @property
    def has_context(self) -> bool:
        return self.past > 0 or self.future > 0 or self.window > 0

    def describe(self) -> str:
        if self.window:
            turns = "dialogue windows (the turns around each utterance in order, as many as fit)"
        else:
            turns = f"context {self.past} past + {self.future} future turns" if self.has_context else "no context"
        return turns + (", speaker-named" if self.speakers else "")

    def turn(self, speaker: str | None, text: str | None) -> str:
        """A neighbouring turn as a window holds it: as the utterance itself is written."""
        return speaker_text(speaker, text) if self.speakers else (text or "").strip()


@dataclass(frozen=True)
class TextEncoderCard:
    base_model: str  # what fine-tuning started from, as given (`minilm`, a folder, a cache id)
    labels: list[str]  # the classification head's label order
    context: int  # previous turns in each input; 0: the utterance alone
    max_length: int  # tokens per input during fine-tuning
    label_splits: list[str]  # the splits whose labels trained it (train)
    label_dialogues: list[str]  # their dialogue ids: what a later split must not share
    data_sha256: str  # of the labelled rows it trained on (dialogue, index, speaker, text, label)
    selection: dict[str, Any] = field(default_factory=dict)  # split, epoch, metrics
    training: dict[str, Any] = field(default_factory=dict)  # epochs, lr, batch size, workers, seed
    separator: str = "|"  # between context turns: the tokenizer's separator token
    future: int = 0  # following turns in each input (after the past ones); older cards have none
    speakers: bool = False  # each utterance read as `speaker: text`; older cards read the text alone
    precision: str = "fp32"  # fine-tuned (and dev-scored) in fp32 or bf16 autocast; what `extract` computes in by default
    window: int = 0  # dialogue windows: up to this many turns each side (TextInput.window); 0: none

    def text_input(self) -> TextInput:
        return TextInput(past=self.context, future=self.future, speakers=self.speakers, separator=self.separator,
                         window=self.window)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TextEncoderCard":
        return cls(**json.loads(text))

    def summary(self) -> str:
        dev = self.selection.get("metrics", {}).get("weighted_f1")
        return (f"fine-tuned from {self.base_model} on the labels of {len(self.label_dialogues)} {'+'.join(self.label_splits)} "
                f"dialogues, {self.text_input().describe()}" + (f", {self.selection.get('split')} weighted F1 {dev:.4f}" if dev is not None else ""))


def read_card(folder: str) -> TextEncoderCard | None:
    """The card in a local encoder folder; None for an encoder that was not fine-tuned here."""
    path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return TextEncoderCard.from_json(f.read())


def card_from_metadata(schema: pa.Schema) -> TextEncoderCard | None:
    raw = (schema.metadata or {}).get(CARD_METADATA_KEY)
    return TextEncoderCard.from_json(raw.decode()) if raw else None


def speaker_text(speaker: str | None, text: str | None) -> str:
    """One turn as the encoder reads it with speakers: `speaker: text`."""
    return f"{speaker or 'unknown'}: {(text or '').strip()}"


def target_texts(table: pa.Table, spec: TextInput) -> list[str | None]:
    """Each row's utterance as the encoder reads it: the text, or `speaker: text` when the spec
    names speakers. A null or blank text stays as it is, so that it is still refused as empty."""
    texts = table.column("text").to_pylist()
    if not spec.speakers:
        return texts
    speakers = table.column("speaker").to_pylist()
    return [speaker_text(s, t) if t and t.strip() else t for s, t in zip(speakers, texts)]


def context_texts(table: pa.Table, spec: TextInput) -> list[str]:
    """For each row, up to `spec.past` previous turns of its dialogue as `speaker: text`, nearest
    first, joined by ` separator `; then, with `spec.future`, `next` and up to that many following
    turns, nearest first, all joined the same way (`past | next | future`). "" where a turn has none. Nearest first, so that
    truncation (which cuts a segment's end) drops the farthest turns, the future ones before the
    past. Rows may come in any order."""
    dialogues = table.column("dialogue_id").to_pylist()
    positions = table.column("utterance_index").to_pylist()
    speakers = table.column("speaker").to_pylist()
    texts = table.column("text").to_pylist()
    order = sorted(range(table.num_rows), key=lambda i: (dialogues[i], positions[i]))
    out = [""] * table.num_rows
    past, future = (spec.window, spec.window) if spec.window else (spec.past, spec.future)
    write = spec.turn if spec.window else speaker_text  # a window writes its turns as the utterance is written
    start = 0
    for end in range(1, len(order) + 1):  # one dialogue at a time: order[start:end]
        if end < len(order) and dialogues[order[end]] == dialogues[order[start]]:
            continue
        turns = [write(speakers[i], texts[i]) for i in order[start:end]]
        for n, i in enumerate(order[start:end]):
            out[i] = turn_context(turns[max(0, n - past):n], turns[n + 1:n + 1 + future], spec)
        start = end
    return out


def turn_context(before: list[str], after: list[str], spec: TextInput) -> str:
    """One turn's context from the turns before it and after it (each `speaker: text`, in
    dialogue order, at most spec.past and spec.future of them): `past | next | future`,
    nearest first. The live path calls it with the call's last turns and no future."""
    if spec.window:  # JSON [before, after], nearest first, each side capped at spec.window turns
        from .windows import encode_context

        return encode_context(list(reversed(before))[: spec.window], after[: spec.window])
    joiner = f" {spec.separator} "
    past = joiner.join(reversed(before[max(0, len(before) - spec.past):] if spec.past > 0 else []))
    future = joiner.join(after[:spec.future]) if spec.future > 0 else ""
    return joiner.join(([past] if past else []) + [FUTURE_MARK, future]) if future else past


def input_texts(table: pa.Table, spec: TextInput) -> tuple[list[str | None], list[str] | None]:
    """(utterances, contexts or None): the two segments of each row's encoder input."""
    contexts = context_texts(table, spec) if spec.has_context else None
    return target_texts(table, spec), contexts


def labelled_fingerprint(rows: pa.Table) -> str:
    """sha256 of the labelled rows' content, independent of row order and file layout."""
    columns = ["dialogue_id", "utterance_index", "speaker", "text", "label"]
    table = rows.select(columns).sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    digest = hashlib.sha256()
    for name in columns:
        for value in table.column(name).to_pylist():
            digest.update(repr(value).encode())
            digest.update(b"\x1f")
    return digest.hexdigest()


def label_leaks(card: TextEncoderCard | None, parts: dict[str, pa.Table]) -> list[str]:
    """One warning per part (a split's rows, by name) that shares dialogues with those whose
    labels the encoder was fine-tuned on: figures on it would flatter the model. Parts are
    tables, not split names, so a dev split carved from train is checked as what it is."""
    if card is None:
        return []
    seen = pa.array(sorted(set(card.label_dialogues)), pa.string())
    warnings = []
    for name, rows in parts.items():
        dialogues = pc.unique(rows.column("dialogue_id"))
        shared = int(pc.sum(pc.is_in(dialogues, value_set=seen)).as_py() or 0)
        if shared:
            warnings.append(
                f"warning: the text encoder was fine-tuned on the labels of {shared} of the {len(dialogues)} "
                f"{name} dialogues ({card.summary()}); figures on {name} are not a fair estimate. "
                f"Fine-tune on a train split that excludes them."
            )
    return warnings
