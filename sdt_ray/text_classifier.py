"""An utterance classifier over a transformers encoder: the encoder's hidden states,
mean-pooled as `extract` pools them, then dropout and a linear head. `finetune-text` trains
it; afterwards `extract` uses the encoder alone, frozen, and the head only scores the
encoder's own utterance-level figures (`evaluate-text`). No Ray here.

An encoder folder, as `finetune-text` writes it:
    config.json, model.safetensors, tokenizer files   the encoder (transformers' save_pretrained)
    sdt_ray_text_head.safetensors                     the head: weight (C, H), bias (C,)
    sdt_ray_text_encoder.json                         its card (text_card.py)
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import torch
from torch import nn

from .features.local_models import autocast, load_pretrained
from .features.text import mean_pool, resolve_text_model
from .text_card import CARD_FILE, TextEncoderCard, TextInput, input_texts, read_card

HEAD_FILE = "sdt_ray_text_head.safetensors"


class UtteranceOutput(NamedTuple):
    logits: torch.Tensor  # (B or N, C)
    pooled: torch.Tensor  # (B or N, H) fp32, the utterance vectors `extract` writes (before dropout)


class UtteranceClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        if getattr(encoder, "pooler", None) is not None:  # BERT's [CLS] pooler: mean pooling leaves it unused,
            encoder.pooler.requires_grad_(False)  # and DDP refuses parameters that get no gradient
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), n_classes)

    def forward(self, tokens: dict[str, torch.Tensor], pool_mask: torch.Tensor) -> UtteranceOutput:
        """pool_mask (B, T): one utterance per sequence, logits (B, C); or (N, B, T) for
        dialogue windows, N utterances pooled from B sequences (windows.batch), logits (N, C).
        The pooled vectors come back beside the logits (finetune-text's --contrastive reads them)."""
        hidden = self.encoder(**tokens).last_hidden_state.float()  # (B, T, H), fp32 under bf16 autocast too
        if pool_mask.dim() == 3:
            weights = pool_mask.to(hidden.dtype)  # (N, B, T)
            pooled = torch.einsum("nbt,bth->nh", weights, hidden) / weights.sum((1, 2)).clamp(min=1.0)[:, None]  # (N, H)
        else:
            pooled = mean_pool(hidden, pool_mask)  # (B, H)
        return UtteranceOutput(logits=self.head(self.dropout(pooled)), pooled=pooled)  # (B or N, C), (B or N, H)


def freeze_lower_layers(encoder: torch.nn.Module, n: int) -> None:
    """Keep the embeddings and the lowest `n` transformer layers as they are: only the layers
    above (and the head) learn. On 2 cores, 8 of MPNet's 12 layers frozen makes a step about
    4x faster (backward stops at layer 8). Everything of the encoder outside `encoder.layer.K`
    for K >= n is frozen, shared parts too (MPNet's relative position bias feeds every layer:
    left trainable, it would pull the backward pass through the frozen layers)."""
    from .errors import ConfigError

    if n <= 0:
        return
    if not hasattr(getattr(encoder, "encoder", None), "layer"):
        raise ConfigError(f"--freeze-layers: {type(encoder).__name__} keeps no layers at encoder.layer (BERT, RoBERTa and MPNet do)")
    layers = len(encoder.encoder.layer)
    if n > layers:
        raise ConfigError(f"--freeze-layers {n}: the encoder has {layers} layers")
    for name, parameter in encoder.named_parameters():
        index = layer_index(name)
        if index is None or index < n:
            parameter.requires_grad_(False)


_LAYER_NAME = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def layer_index(parameter_name: str) -> int | None:
    """K of a parameter inside transformer layer K (`encoder.layer.K.` in BERT, RoBERTa and
    MPNet, whether named from the encoder or from a classifier holding it); None elsewhere."""
    match = _LAYER_NAME.search(parameter_name)
    return int(match.group(1)) if match else None


def load_base(model: str | None):
    """Tokenizer and encoder to start fine-tuning from: a local folder, `minilm`, or a cached id."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_text_model(model)
    return load_pretrained("text model", model, path, AutoTokenizer), load_pretrained("text model", model, path, AutoModel)


def save_classifier(folder: str, classifier: UtteranceClassifier, tokenizer, card: TextEncoderCard) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    classifier.encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in classifier.head.state_dict().items()}, os.path.join(folder, HEAD_FILE))
    with open(os.path.join(folder, CARD_FILE), "w") as f:
        f.write(card.to_json())


def load_classifier(folder: str) -> tuple[UtteranceClassifier, object, TextEncoderCard]:
    """The classifier `finetune-text` wrote to `folder`, in eval mode, with its tokenizer and card."""
    from safetensors.torch import load_file

    from .errors import ConfigError

    card = read_card(folder)
    if card is None or not os.path.isfile(os.path.join(folder, HEAD_FILE)):
        raise ConfigError(f"{folder} is not an encoder folder written by `sdt-ray finetune-text` (no {CARD_FILE} or {HEAD_FILE})")
    tokenizer, encoder = load_base(folder)
    classifier = UtteranceClassifier(encoder, len(card.labels))
    classifier.head.load_state_dict(load_file(os.path.join(folder, HEAD_FILE)))
    return classifier.eval(), tokenizer, card


def predict_classes(classifier: UtteranceClassifier, tokenizer, texts: list[str], contexts: list[str] | None,
                    max_length: int, batch_size: int = 64, device: str | torch.device = "cpu", precision: str = "fp32",
                    windowed: bool = False) -> torch.Tensor:
    """The head's class for each text, (N,) int64: length-sorted batches, inference mode, at
    `precision` (the one the classifier was fine-tuned in)."""
    from .features.text import tokenize

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(contexts[i]) if contexts else 0))
    out = torch.empty(len(texts), dtype=torch.long)
    was_training = classifier.training
    classifier.eval()
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            tokens, mask = tokenize(tokenizer, [texts[i] for i in rows], [contexts[i] for i in rows] if contexts else None, max_length,
                                    windowed=windowed)
            logits = classifier(tokens.to(device), mask.to(device)).logits  # (b, C)
            out[rows] = logits.argmax(-1).cpu()
    classifier.train(was_training)
    return out


def _label_id(index: dict[str, int], label: str | None) -> int:
    """The label's id, or -1 for no label or one outside the encoder's classes."""
    return index.get(label, -1) if label is not None else -1


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def classifier_rows(utterances, labels: list[str], spec: TextInput, splits: tuple[str, ...] | None = None):
    """The rows of `splits` (default: all) a classifier trains or is scored on: labelled, with
    text. Returns (table with dialogue_id, split, text (the utterance as the encoder reads it,
    text_input.target_texts), text_context, label_id; {reason: rows of those splits left out}).
    Contexts are built on the whole table first, so an unlabelled turn, or one of another
    split, still serves as a neighbour's context."""
    import pyarrow as pa
    import pyarrow.compute as pc

    targets, contexts = input_texts(utterances, spec)
    contexts = contexts or [""] * utterances.num_rows
    index = {name: i for i, name in enumerate(labels)}
    label_ids = [_label_id(index, v) for v in utterances.column("label").to_pylist()]
    has_text = [_has_text(t) for t in utterances.column("text").to_pylist()]
    table = pa.table({
        "dialogue_id": utterances.column("dialogue_id"),
        "split": utterances.column("split"),
        "text": pa.array(targets, pa.string()),
        "text_context": pa.array(contexts, pa.string()),
        "label_id": pa.array(label_ids, pa.int64()),
    })
    table = table.append_column("has_text", pa.array(has_text))
    if splits is not None:
        table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(list(splits), pa.string())))
    labelled = pc.greater_equal(table.column("label_id"), 0)
    no_text = pc.invert(table.column("has_text"))
    left_out = {
        "no or unknown label": int(pc.sum(pc.invert(labelled)).as_py() or 0),
        "empty text": int(pc.sum(pc.and_(labelled, no_text)).as_py() or 0),
    }
    kept = table.filter(pc.and_(labelled, table.column("has_text"))).drop_columns(["has_text"])
    return kept, {k: v for k, v in left_out.items() if v}


def window_rows(utterances, labels: list[str], spec: TextInput):
    """The train dialogues of `utterances` for fine-tuning on dialogue windows, one row each:
    dialogue_id, turns (every turn in order, written as a window holds it: spec.turn) and
    labels (label ids; -1 for a turn that is context only: no or unknown label, or no text)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    train = utterances.filter(pc.equal(utterances.column("split"), "train"))
    train = train.sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    index = {name: i for i, name in enumerate(labels)}
    rows: dict[str, tuple[list[str], list[int]]] = {}
    for dialogue, speaker, text, label in zip(*(train.column(c).to_pylist() for c in ("dialogue_id", "speaker", "text", "label"))):
        turns, ids = rows.setdefault(dialogue, ([], []))
        turns.append(spec.turn(speaker, text))
        ids.append(_label_id(index, label) if _has_text(text) else -1)  # classifier_rows' targets
    return pa.table({"dialogue_id": pa.array(list(rows), pa.string()),
                     "turns": pa.array([t for t, _ in rows.values()], pa.list_(pa.string())),
                     "labels": pa.array([i for _, i in rows.values()], pa.list_(pa.int64()))})
