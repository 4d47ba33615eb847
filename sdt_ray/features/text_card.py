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
CONTEXT_COLUMN = "text_context"  # previous turns of each utterance, added for encoders with context > 0


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TextEncoderCard":
        return cls(**json.loads(text))

    def summary(self) -> str:
        dev = self.selection.get("metrics", {}).get("weighted_f1")
        return (f"fine-tuned from {self.base_model} on the labels of {len(self.label_dialogues)} {'+'.join(self.label_splits)} "
                f"dialogues, context {self.context}" + (f", {self.selection.get('split')} weighted F1 {dev:.4f}" if dev is not None else ""))


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


def context_texts(table: pa.Table, k: int, separator: str) -> list[str]:
    """For each row, up to `k` previous turns of its dialogue as `speaker: text`, nearest first,
    joined by ` separator `; "" for a dialogue's first turn. Nearest first, so that truncation
    (which cuts a segment's end) drops the oldest turns. Rows may come in any order."""
    dialogues = table.column("dialogue_id").to_pylist()
    positions = table.column("utterance_index").to_pylist()
    speakers = table.column("speaker").to_pylist()
    texts = table.column("text").to_pylist()
    order = sorted(range(table.num_rows), key=lambda i: (dialogues[i], positions[i]))
    out = [""] * table.num_rows
    previous: list[str] = []
    for n, i in enumerate(order):
        if n == 0 or dialogues[order[n - 1]] != dialogues[i]:
            previous = []
        out[i] = f" {separator} ".join(reversed(previous[-k:])) if k > 0 else ""
        previous.append(f"{speakers[i] or 'unknown'}: {(texts[i] or '').strip()}")
    return out


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
