"""Frozen configuration dataclasses and their YAML/JSON round trip.

`ModelConfig` is the checkpoint's shape contract: a checkpoint stores it as
`config.json`, and `load_checkpoint` rebuilds the model from it alone.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .calibration import FITS
from .errors import ConfigError

MODALITIES = ("text", "audio", "visual")  # canonical order, used everywhere
SPEAKER_MODES = ("relative", "fixed")
TRANSFORMER_SETS = ("both", "intra", "inter")  # which of the 9 blocks a model keeps (the paper's ablations)
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
RECIPES = Path(__file__).resolve().parents[1] / "jobs" / "recipes"  # a clone's recipes: laptop, parity, demo


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and switches of an SDT model (sdt_spec §1-§5).

    `input_dims[i]` is the feature size of `modalities[i]`. Speakers are either
    per-dialogue relative ids (first speaker seen is 0, ...) or a fixed table
    (`speaker_names`, the reference's behaviour, kept for parity).
    """

    modalities: tuple[str, ...] = ("text",)
    input_dims: tuple[int, ...] = ()  # empty in a recipe: taken from the features table
    hidden: int = 256  # D
    heads: int = 4
    dropout: float = 0.5
    n_classes: int = 7
    class_names: tuple[str, ...] = ()
    max_speakers: int = 9  # size of the speaker table; index max_speakers is padding
    speaker_mode: str = "relative"
    speaker_names: tuple[str, ...] = ()  # only for speaker_mode == "fixed"
    temperature: float = 1.0  # distillation T, kept here so a checkpoint is self-describing
    max_len: int = 512  # rows of the sinusoidal position table (utterances per dialogue)
    frozen_identity_gates: bool = False  # the reference's MELD setting: gate(o) = o * sigmoid(o)
    # Standardise each input dim with train-split mean/std, stored as buffers in the
    # checkpoint. Off for parity (the reference feeds features raw); on by default
    # because small-norm sentence embeddings are otherwise swamped by the position table.
    normalize_inputs: bool = True
    # The paper's ablations (Table 4): no unimodal gates (each block's output used as is), the
    # multimodal gate replaced by a concatenation and a linear layer, and only the intra-modal
    # (text->text, ...) or only the inter-modal (audio->text, ...) transformers.
    unimodal_gates: bool = True
    multimodal_gate: bool = True
    transformers: str = "both"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "input_dims", tuple(int(d) for d in self.input_dims))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "speaker_names", tuple(self.speaker_names))
        if not self.modalities:
            raise ValueError("modalities must be a non-empty subset of text, audio, visual")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
        if list(self.modalities) != [m for m in MODALITIES if m in self.modalities]:
            raise ValueError(f"modalities must be unique and in the order {MODALITIES}")
        if self.input_dims and len(self.input_dims) != len(self.modalities):
            raise ValueError("input_dims must give one size per modality")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.class_names and len(self.class_names) != self.n_classes:
            raise ValueError("class_names must have n_classes entries")
        if self.speaker_mode not in SPEAKER_MODES:
            raise ValueError(f"speaker_mode must be one of {SPEAKER_MODES}")
        if self.speaker_mode == "fixed" and len(self.speaker_names) > self.max_speakers:
            raise ValueError("speaker_names has more entries than max_speakers")
        if self.transformers not in TRANSFORMER_SETS:
            raise ValueError(f"transformers must be one of {TRANSFORMER_SETS}")
        if self.transformers == "inter" and len(self.modalities) < 2:
            raise ValueError("inter-modal transformers need at least two modalities")
        if self.frozen_identity_gates and not self.unimodal_gates:
            raise ValueError("frozen_identity_gates needs unimodal_gates")

    def input_dim(self, modality: str) -> int:
        return self.input_dims[self.modalities.index(modality)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class LossConfig:
    """Weights of the self-distillation loss (sdt_spec §6)."""

    gamma_fused: float = 1.0  # γ1
    gamma_students: float = 1.0  # γ2
    gamma_kl: float = 1.0  # γ3
    # The distillation temperature T is ModelConfig.temperature: defined once, and stored in the
    # checkpoint. Recipes from before kept a copy here; load_recipe reads it (_one_temperature).
    detach_teacher: bool = False  # reference lets gradients reach the teacher through the KL
    class_weights: tuple[float, ...] = ()  # explicit per-class CE weights; empty: see class_weight_power
    # With no explicit weights: w_c ∝ (1 / train frequency of c) ** power, scaled so that
    # the average weight over training utterances is 1. 0 = unweighted, 0.5 = inverse sqrt.
    class_weight_power: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and selection settings. Defaults are the laptop recipe
    (MELD text through MiniLM on 2 CPU cores, a few minutes per seed), tuned on MELD dev."""

    epochs: int = 60
    batch_size: int = 8  # dialogues per step, per worker (16 per step with 2 workers)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 15  # epochs without a dev weighted-F1 gain before stopping
    min_epochs: int = 0
    seed: int = 0
    workers: int = 2
    use_gpu: bool = False
    select_on: str = "dev"  # "dev", or "test" for the paper's test-selected parity protocol
    torch_threads: int = 1  # per worker: 2 workers x 1 thread fill 2 cores
    # > 0: dev scores, and best/ holds, an exponential moving average of the weights
    # (decay per optimiser step; 0.995 averages over about 200 steps, 3 MELD epochs).
    ema_decay: float = 0.995
    max_failures: int = 0  # worker-group restarts from the latest checkpoint (Ray Train FailureConfig)
    # Where the workers go (Ray placement group strategy): PACK fills a node first (one
    # multi-GPU node talks fastest); STRICT_SPREAD puts each worker on its own node.
    placement: str = "PACK"
    # Each modality of each training utterance is hidden with this probability (never all of
    # an utterance's), so the model learns to score any subset: text-only transcripts, calls
    # without video, turns without a transcript.
    modality_dropout: float = 0.0
    # After selection, one temperature is fitted on the selection split and stored in
    # best/config.json: predict's confidence and prob_* are then calibrated (calibration.py).
    calibrate: bool = True
    calibrate_by: str = "ece"  # the T of lowest ECE there, or "nll": of lowest NLL (calibration.FITS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", str(self.placement).upper())  # `--placement spread` reads as SPREAD
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement {self.placement!r}: choose from {list(PLACEMENTS)}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"modality_dropout {self.modality_dropout}: a probability in [0, 1)")
        if self.calibrate_by not in FITS:
            raise ConfigError(f"calibrate_by {self.calibrate_by!r}: choose from {list(FITS)}")


@dataclass(frozen=True)
class RecipeConfig:
    """What a `jobs/recipes/*.yaml` recipe holds: a model, a loss and a training setup."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "default"

    @classmethod
    def load(cls, path: str | Path | None) -> "RecipeConfig":
        """The recipe at `path`, or the laptop recipe (train's defaults) when there is none."""
        return load_recipe(path) if path else cls()

    def with_train(self, **overrides: Any) -> "RecipeConfig":
        """This recipe with some training settings replaced (`train`'s flags); a None leaves the
        recipe's own value."""
        given = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **given))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model.to_dict(),
            "loss": {f.name: _plain(getattr(self.loss, f.name)) for f in fields(self.loss)},
            "train": dataclasses.asdict(self.train),
        }


def load_recipe(path: str | Path) -> RecipeConfig:
    """Read a recipe YAML (see `jobs/`); unknown keys are an error, not ignored."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read recipe ({exc})") from None
    extra = set(data) - {"name", "model", "loss", "train", "description"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(extra)}")
    model, loss = _one_temperature(dict(data.get("model") or {}), dict(data.get("loss") or {}), path)
    model, loss = _strict_fields(ModelConfig, model, path), _strict_fields(LossConfig, loss, path)
    train = _strict_fields(TrainConfig, data.get("train") or {}, path)
    try:  # the configs' own checks (a placement, a probability) know no file: the error names it here
        return RecipeConfig(name=data.get("name", Path(path).stem), model=ModelConfig(**model), loss=LossConfig(**loss),
                            train=TrainConfig(**train))
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _one_temperature(model: dict[str, Any], loss: dict[str, Any], path: str | Path) -> tuple[dict, dict]:
    """An older recipe's `loss.temperature` becomes `model.temperature`, unless the two differ."""
    if "temperature" not in loss:
        return model, loss
    legacy = loss.pop("temperature")
    if "temperature" in model and float(model["temperature"]) != float(legacy):
        raise ConfigError(f"{path}: model.temperature is {model['temperature']} but loss.temperature is {legacy}; "
                          "the distillation temperature is model.temperature alone: remove loss.temperature")
    model.setdefault("temperature", legacy)
    return model, loss


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _strict_fields(cls: type, data: dict[str, Any], source: str | Path) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    extra = set(data) - names
    if extra:
        raise ConfigError(f"{source}: unknown {cls.__name__} keys {sorted(extra)}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return {key: _as_declared(value, hints[key], f"{source}: {cls.__name__}.{key}") for key, value in data.items()}


def _as_declared(value: Any, hint: Any, where: str) -> Any:
    """A recipe's number as its field declares it. PyYAML follows YAML 1.1, where `1e-5` (no
    dot) is a string, not a float: left as is it reached torch.optim inside a Ray worker as a
    TypeError. Here it becomes 1e-05, and a value that is no number is one error line.
    A `tuple[float, ...]` field (class_weights) has each entry read the same way."""
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        item, *rest = typing.get_args(hint)
        if rest == [Ellipsis]:
            return tuple(_as_declared(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a number") from None
    if hint is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{where}: {value!r} is not a whole number")
    return value
