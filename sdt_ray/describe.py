"""Architecture summary of a recipe YAML or a checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_FILE, read_config
from .config import ModelConfig, load_recipe
from .errors import ConfigError
from .model import SDT, count_parameters


def model_config_of(path: str) -> ModelConfig:
    target = Path(path)
    if target.is_dir() or target.name == CONFIG_FILE:
        return read_config(target if target.is_dir() else target.parent)[0]
    if target.suffix in (".yaml", ".yml"):
        return load_recipe(target).model
    raise ConfigError(f"{path}: expected a recipe (.yaml) or a checkpoint folder")


def describe(path: str) -> dict[str, Any]:
    config = model_config_of(path)
    if not config.input_dims:
        raise ConfigError(f"{path}: the recipe leaves input_dims to the data; set model.input_dims to count parameters")
    model = SDT(config)
    total, trainable = count_parameters(model)
    return {
        "source": path,
        "modalities": list(config.modalities),
        "input_dims": dict(zip(config.modalities, config.input_dims)),
        "hidden": config.hidden,
        "heads": config.heads,
        "dropout": config.dropout,
        "classes": config.n_classes,
        "class_names": list(config.class_names),
        "speakers": config.max_speakers,
        "speaker_mode": config.speaker_mode,
        "frozen_identity_gates": config.frozen_identity_gates,
        "unimodal_gates": config.unimodal_gates,
        "multimodal_gate": config.multimodal_gate,
        "transformers": config.transformers,
        "transformer_blocks": len(model.blocks),
        "params_total": total,
        "params_trainable": trainable,
    }


def description_text(path: str, as_json: bool = False) -> str:
    """What `sdt-ray describe` prints: one JSON object, or the table below."""
    info = describe(path)
    return json.dumps(info) if as_json else format_description(info)


def format_description(info: dict[str, Any]) -> str:
    dims = ", ".join(f"{m} {d}" for m, d in info["input_dims"].items())
    lines = [
        f"SDT  ({info['source']})",
        f"  modalities       {' + '.join(info['modalities'])}  (input dims: {dims})",
        f"  hidden (D)       {info['hidden']}, {info['heads']} heads, dropout {info['dropout']}",
        f"  transformers     {info['transformer_blocks']} one-layer blocks ({TRANSFORMER_KINDS[info['transformers']]})",
        f"  classes          {info['classes']}" + (f"  ({', '.join(info['class_names'])})" if info["class_names"] else ""),
        f"  speakers         {info['speakers']} ({info['speaker_mode']} ids)",
        f"  unimodal gates   {_unimodal_gates(info)}",
        f"  fusion           {'multimodal gate (softmax over modalities)' if info['multimodal_gate'] else 'concatenation + linear (ablation)'}",
        f"  parameters       {info['params_total']:,} total, {info['params_trainable']:,} trainable",
    ]
    return "\n".join(lines)


TRANSFORMER_KINDS = {"both": "intra + inter-modal", "intra": "intra-modal only (ablation)", "inter": "inter-modal only (ablation)"}


def _unimodal_gates(info: dict[str, Any]) -> str:
    if not info["unimodal_gates"]:
        return "none (ablation)"
    return "frozen identity (o * sigmoid(o))" if info["frozen_identity_gates"] else "trained"

