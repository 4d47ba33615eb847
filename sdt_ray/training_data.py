"""Driver-side preparation of a training run: read and check the features table,
fix the model's shapes from it, choose dev, and cut the train split into
per-worker shards of whole dialogues. No Ray here: train.py hands the result
to Ray Train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import ModelConfig, RecipeConfig
from .dialogues import Exclusions, dialogue_rows, label_indices, modality_presence, select_split, usable_rows
from .errors import ConfigError, InputError
from .text_card import card_from_metadata, label_leaks
from .schema import validate_features, vectors
from .storage import read_table

DEV_CARVE_FRACTION = 0.1  # of train dialogues, when a corpus has no dev split


@dataclass
class TrainingData:
    model: ModelConfig  # with input dims and classes fixed from the table
    shards: list[pa.Table]  # one dialogue_rows table per worker
    selection: pa.Table  # dialogue_rows of the split that selects the model (dev)
    selection_split: str
    labels: list[str]
    exclusions: Exclusions
    notes: list[str]  # things the user should know, printed before training
    train_utterances: int
    input_statistics: dict[str, tuple[list[float], list[float]]]  # modality -> (mean, std) over train
    class_weights: list[float]  # per class, for the CE terms; empty = unweighted
    warnings: list[str] = dataclasses.field(default_factory=list)  # the text encoder saw labels of selection or test dialogues


def prepare(features_uri: str, recipe: RecipeConfig, workers: int) -> TrainingData:
    table = read_table(features_uri)
    expected = dict(zip(recipe.model.modalities, recipe.model.input_dims)) if recipe.model.input_dims else None
    info = validate_features(table, features_uri, expected_dims=expected)
    missing = [m for m in recipe.model.modalities if m not in info.dims]
    if missing:
        raise InputError(f"{features_uri}: the recipe needs modalities {missing}, the table has {sorted(info.dims)}")
    labels = info.labels or sorted(set(select_split(table, "train", features_uri).column("label").to_pylist()) - {None})
    model = resolve_model_config(recipe.model, {m: info.dims[m] for m in recipe.model.modalities}, labels)
    label_indices(table, labels, features_uri)  # an unknown label in any split is an error up front

    table, exclusions = usable_rows(table, model.modalities)
    notes = []
    train = select_split(table, "train", features_uri)
    selection_split = recipe.train.select_on
    if selection_split == "dev" and table.filter(pc.equal(table.column("split"), "dev")).num_rows == 0:
        train, dev = carve_dev(train, DEV_CARVE_FRACTION, recipe.train.seed)
        notes.append(
            f"no dev split in {features_uri}: carved {DEV_CARVE_FRACTION:.0%} of train dialogues "
            f"({len(set(dev.column('dialogue_id').to_pylist()))}) as dev, seed {recipe.train.seed}"
        )
    else:
        dev = select_split(table, selection_split, features_uri)
    if selection_split == "test":
        notes.append("PARITY MODE: selecting on the TEST split; figures are test-selected, not a fair estimate")
    if not labels or all(v is None for v in train.column("label").to_pylist()):
        raise InputError(f"{features_uri}: split 'train' has no labelled utterances")

    test = table.filter(pc.equal(table.column("split"), "test"))
    warnings = label_leaks(card_from_metadata(table.schema), {f"{selection_split} (selection)": dev, "test": test})
    rows = dialogue_rows(train, model, labels, features_uri)
    selection = dialogue_rows(dev, model, labels, features_uri)
    for split_rows in (rows, selection):
        check_dialogue_lengths(split_rows, model.max_len, features_uri)
    return TrainingData(
        model=model,
        shards=shard_dialogues(rows, workers),
        selection=selection,
        selection_split=selection_split,
        labels=labels,
        exclusions=exclusions,
        notes=notes,
        warnings=warnings,
        train_utterances=train.num_rows,
        input_statistics=_input_statistics(train, model.modalities, features_uri),
        class_weights=list(recipe.loss.class_weights)
        or balanced_class_weights(label_indices(train, labels, features_uri), len(labels), recipe.loss.class_weight_power),
    )


def balanced_class_weights(label_ids: np.ndarray, n_classes: int, power: float) -> list[float]:
    """w_c ∝ (1 / freq_c) ** power, scaled so that Σ_c freq_c · w_c = 1 (the mean weight of a
    training utterance is 1). A class absent from train gets the largest present weight."""
    if power == 0:
        return []
    counts = np.bincount(label_ids[label_ids >= 0], minlength=n_classes).astype(np.float64)
    freq = counts / counts.sum()
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = freq[present] ** -power
    weights[~present] = weights[present].max()
    return (weights / (weights * freq).sum()).tolist()


def _input_statistics(train: pa.Table, modalities: tuple[str, ...], source: str) -> dict:
    """modality -> (mean, std) per input dim over the train utterances that have it."""
    presence = modality_presence(train, modalities)
    empty = [m for m in modalities if not presence[m].any()]
    if empty:
        raise InputError(f"{source}: no train utterance has usable {' or '.join(empty)} features to learn from")
    return {m: _mean_std(vectors(train, m)[presence[m]]) for m in modalities}


def _mean_std(values: np.ndarray) -> tuple[list[float], list[float]]:
    values = values.astype(np.float64)
    return values.mean(axis=0).tolist(), values.std(axis=0).tolist()


def check_dialogue_lengths(rows: pa.Table, max_len: int, source: str) -> None:
    """Fail before training starts, not on a worker in epoch 1."""
    lengths = pc.list_value_length(rows.column("speakers")).to_numpy()
    too_long = np.flatnonzero(lengths > max_len)
    if too_long.size:
        first = rows.column("dialogue_id")[int(too_long[0])].as_py()
        raise InputError(
            f"{source}: {too_long.size} dialogue(s) longer than the model's max_len={max_len} utterances "
            f"(e.g. {first} with {int(lengths[too_long[0]])}); raise model.max_len in the recipe"
        )


def resolve_model_config(model: ModelConfig, dims: dict[str, int], labels: list[str]) -> ModelConfig:
    """Fill input dims and classes from the data; a recipe that fixed them must agree."""
    if model.class_names and list(model.class_names) != list(labels):
        raise ConfigError(f"recipe classes {list(model.class_names)} differ from the table's labels {labels}")
    if model.n_classes != len(labels) and model.class_names:
        raise ConfigError(f"recipe n_classes={model.n_classes} but the table has {len(labels)} labels")
    return dataclasses.replace(
        model,
        input_dims=tuple(dims[m] for m in model.modalities),
        n_classes=len(labels),
        class_names=tuple(labels),
    )


def carve_dev(train: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Split train by dialogue (never by utterance): a seeded `fraction` becomes dev."""
    dialogues = sorted(set(train.column("dialogue_id").to_pylist()))
    rng = np.random.default_rng(seed)
    n_dev = max(1, int(round(fraction * len(dialogues))))
    if len(dialogues) < 2:
        raise InputError("cannot carve a dev split from a train split with fewer than 2 dialogues")
    dev_ids = pa.array(rng.choice(dialogues, size=n_dev, replace=False).tolist())
    in_dev = pc.is_in(train.column("dialogue_id"), value_set=dev_ids)
    return train.filter(pc.invert(in_dev)), train.filter(in_dev)


def shard_dialogues(rows: pa.Table, workers: int) -> list[pa.Table]:
    """Deal whole dialogues to workers, longest first, each to the least-loaded
    worker by utterance count, so each worker does about the same work."""
    if rows.num_rows < workers:
        raise InputError(f"{rows.num_rows} training dialogues cannot feed {workers} workers; use fewer workers")
    lengths = pc.list_value_length(rows.column("speakers")).to_numpy()
    load = np.zeros(workers)
    assignment: list[list[int]] = [[] for _ in range(workers)]
    for i in np.argsort(-lengths, kind="stable"):
        w = int(np.argmin(load))
        assignment[w].append(int(i))
        load[w] += lengths[i]
    return [rows.take(pa.array(sorted(idx), pa.int64())) for idx in assignment]
