"""The SDT authors' preprocessed feature files (sdt_spec §9) -> the features table.

    iemocap_multimodal_features.pkl  a 12-tuple (latin-1): videoIDs, videoSpeakers ('M'/'F' per
        utterance), videoLabels, videoText (1024-d), roberta2, roberta3, roberta4, videoAudio
        (1582-d), videoVisual (342-d), videoSentence, trainVid, testVid
    meld_multimodal_features.pkl     a 13-tuple: the same 12, speakers as 9-way one-hot lists,
        plus one unused trailing item

Each dict is keyed by dialogue id and lists the dialogue's utterances in order. Neither file has
a dev split (MELD's trainVid holds MELD's train and dev dialogues): one is carved from trainVid
by dialogue, seeded, and recorded in the table. A pickle can run code when loaded, so the file
is read by an unpickler that admits builtin containers, numbers, strings and numpy arrays, and
refuses any other global before it is called.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import itertools
import json
import pickle
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import storage
from .errors import ConfigError, InputError
from .importers import MELD_LABELS
from .schema import FEATURE_ERRORS_FIELD, features_schema, validate_features, vector_array

IEMOCAP_LABELS = ["hap", "sad", "neu", "ang", "exc", "fru"]  # sdt_spec §9 order
DEV_METADATA_KEY = b"sdt_ray.dev_split"  # JSON: how the dev split was carved from trainVid

# Globals a feature pickle needs: numpy's array and scalar rebuilders, dtypes, bytes for
# Python 2 pickles (_codecs.encode turns a latin-1 str back into bytes), and builtin containers.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "list"), ("builtins", "dict"),
    ("builtins", "tuple"), ("builtins", "bytearray"), ("collections", "OrderedDict"),
}


@dataclass(frozen=True)
class Layout:
    items: int  # length of the pickled tuple
    labels: list[str]
    # Utterances per class in trainVid of the published files, in `labels` order: what tells
    # whether a file's label ids mean what this order says. IEMOCAP: sdt_spec §7's class
    # weights are these over 5,810; MELD: its train plus dev split.
    train_counts: tuple[int, ...]


LAYOUTS = {
    "iemocap": Layout(12, IEMOCAP_LABELS, (504, 839, 1324, 933, 742, 1468)),
    "meld": Layout(13, MELD_LABELS, (5180, 1355, 308, 794, 1906, 293, 1262)),
}
MODALITY_ITEMS = {"text": 3, "audio": 7, "visual": 8}  # tuple positions of videoText, videoAudio, videoVisual


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle, source: str):
        super().__init__(handle, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles name __builtin__.set and the like: check the Python 3 name.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise InputError(
            f"{self.source}: refused to load the global {module}.{name}: a feature pickle may hold only "
            "containers, numbers, strings and numpy arrays (a pickle can run code, so nothing else is loaded)"
        )


def load_restricted(data: bytes, source: str) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except InputError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise InputError(f"{source}: not a readable pickle: {exc}") from None


@dataclass
class PickleImport:
    table: pa.Table
    dims: dict[str, int]
    split_dialogues: dict[str, int]
    label_check: str
    left_out: list = field(default_factory=list)  # dialogues in videoIDs but in neither trainVid nor testVid
    output: str | None = None  # where write_sdt_pickle put the table

    def describe(self) -> str:
        splits = ", ".join(f"{s} {n}" for s, n in self.split_dialogues.items())
        dims = ", ".join(f"{m} {d}" for m, d in self.dims.items())
        written = f"wrote {self.output}: " if self.output else ""
        lines = [f"{written}{self.table.num_rows} utterances; dialogues: {splits}; dims: {dims}; labels: {self.label_check}"]
        if self.left_out:
            lines.append(f"left out: {len(self.left_out)} dialogues in neither trainVid nor testVid, e.g. {self.left_out[:3]}")
        return "\n".join(lines)


def write_sdt_pickle(uri: str, dataset: str, output_uri: str, dev_fraction: float = 0.1, seed: int = 0) -> PickleImport:
    """`import sdt-pickle`: the file read and checked, written as a features table."""
    result = import_sdt_pickle(uri, dataset, dev_fraction, seed)
    storage.write_table(result.table, output_uri)
    return dataclasses.replace(result, output=output_uri)


def import_sdt_pickle(uri: str, dataset: str, dev_fraction: float = 0.1, seed: int = 0) -> PickleImport:
    if dataset not in LAYOUTS:
        raise ConfigError(f"--dataset {dataset}: choose one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[dataset]
    if not storage.exists(uri):
        raise InputError(f"{uri}: not found")
    items = load_restricted(storage.read_bytes(uri), uri)
    try:
        return _import(items, uri, dataset, layout, dev_fraction, seed)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # a shape no check above foresaw
        raise InputError(f"{uri}: not an SDT feature file of the {dataset} layout ({type(exc).__name__}: {str(exc)[:120]})") from None


def _import(items: Any, uri: str, dataset: str, layout: Layout, dev_fraction: float, seed: int) -> PickleImport:
    if not isinstance(items, tuple) or len(items) != layout.items:
        kind = f"a {len(items)}-item {type(items).__name__}" if hasattr(items, "__len__") else type(items).__name__
        raise InputError(f"{uri}: {dataset}'s feature file is a {layout.items}-tuple (docs/sdt_spec.md §9); this is {kind}")
    ids, speakers, labels = items[0], items[1], items[2]
    train, test = _ordered(items[10], uri, "trainVid"), _ordered(items[11], uri, "testVid")
    both = sorted(set(train) & set(test), key=str)
    if both:
        raise InputError(f"{uri}: {len(both)} dialogues are in both trainVid and testVid, e.g. {both[:3]}")
    label_check = check_label_order(labels, train, layout, uri)
    dev = carve_dev(train, dev_fraction, seed)
    split_of = {**{d: "train" for d in train}, **{d: "dev" for d in dev}, **{d: "test" for d in test}}
    rows = _rows(speakers, labels, items, split_of, layout, uri)
    # The split lists decide what is imported; a dialogue outside both is reported, never dropped unsaid.
    left_out = sorted(set(ids) - set(split_of), key=str)
    dims = {m: rows[m].shape[1] for m in MODALITY_ITEMS}
    columns = {k: rows[k] for k in ("dialogue_id", "utterance_index", "speaker", "label", "split")}
    columns.update({f"{m}_features": vector_array(rows[m]) for m in MODALITY_ITEMS})
    columns["errors"] = pa.array([[] for _ in rows["split"]], FEATURE_ERRORS_FIELD.type)
    schema = features_schema(dims, layout.labels)
    carve = {"from": "trainVid", "fraction": dev_fraction, "seed": seed, "dialogues": len(dev)}
    schema = schema.with_metadata({**schema.metadata, DEV_METADATA_KEY: json.dumps(carve).encode()})
    table = pa.Table.from_pydict(columns, schema=schema)
    validate_features(table, uri)
    counts = {s: sum(1 for v in split_of.values() if v == s) for s in ("train", "dev", "test")}
    return PickleImport(table, dims, counts, label_check, left_out)


def _ordered(ids: Any, source: str, name: str) -> list:
    if not isinstance(ids, (list, tuple, set, frozenset)):
        raise InputError(f"{source}: {name} should list dialogue ids, not {type(ids).__name__}")
    return sorted(ids, key=str)  # a set has no order: sort, so that the carve is reproducible


def carve_dev(train: list, fraction: float, seed: int) -> set:
    """`fraction` of the train dialogues, drawn with `seed`, at least one."""
    count = max(1, round(fraction * len(train)))
    return set(random.Random(seed).sample(train, count))


EVIDENCE_NATS = 10.0  # log-likelihood by which another label order must fit better to stop the import


def check_label_order(labels: dict, train: list, layout: Layout, source: str) -> str:
    """Do the file's label ids mean `layout.labels`? The train counts per id are compared with
    the published file's: equal counts settle it; otherwise every order of the labels is scored
    by the multinomial log-likelihood of the counts under the published shares, and an order that
    fits better by EVIDENCE_NATS (a likelihood ratio above 20,000) stops the import rather than
    mislabel every utterance. A small or resampled file with the right order passes."""
    counts = np.zeros(len(layout.labels), dtype=np.int64)
    for dialogue in train:
        for label in _entry(labels, dialogue, "videoLabels", source):
            counts[_label_id(label, dialogue, len(layout.labels), source)] += 1
    if tuple(counts) == layout.train_counts:
        return f"order {','.join(layout.labels)} (train counts equal the published file's)"
    log_shares = np.log(np.array(layout.train_counts) / sum(layout.train_counts))
    fit = {order: float(counts @ log_shares[list(order)]) for order in itertools.permutations(range(len(counts)))}
    best = max(fit, key=fit.get)
    identity = tuple(range(len(counts)))
    if fit[best] - fit[identity] > EVIDENCE_NATS:
        names = ",".join(layout.labels[i] for i in best)
        raise InputError(
            f"{source}: the label ids do not follow {','.join(layout.labels)}: train counts by id {counts.tolist()} fit "
            f"the order {names} better by {fit[best] - fit[identity]:.0f} nats (published counts "
            f"{list(layout.train_counts)})"
        )
    return f"order {','.join(layout.labels)} (train counts {counts.tolist()} fit it; published {list(layout.train_counts)})"


def _rows(speakers, labels, items, split_of, layout, source) -> dict[str, Any]:
    out: dict[str, list] = {k: [] for k in ("dialogue_id", "utterance_index", "speaker", "label", "split")}
    vectors: dict[str, list] = {m: [] for m in MODALITY_ITEMS}
    for dialogue in sorted(split_of, key=str):
        dialogue_labels = _entry(labels, dialogue, "videoLabels", source)
        n = len(dialogue_labels)
        for m, position in MODALITY_ITEMS.items():
            try:
                block = np.asarray(_entry(items[position], dialogue, f"the {m} features", source), dtype=np.float32)
            except ValueError as exc:
                raise InputError(f"{source}: dialogue {dialogue}: {m} features are not numbers ({str(exc)[:80]})") from None
            if block.ndim != 2 or block.shape[0] != n:
                raise InputError(f"{source}: dialogue {dialogue}: {m} features of shape {block.shape} for {n} utterances")
            vectors[m].append(block)
        names = [_speaker(s) for s in _entry(speakers, dialogue, "videoSpeakers", source)]
        if len(names) != n:
            raise InputError(f"{source}: dialogue {dialogue}: {len(names)} speakers for {n} utterances")
        for u in range(n):
            out["dialogue_id"].append(str(dialogue))
            out["utterance_index"].append(u)
            out["speaker"].append(names[u])
            out["label"].append(layout.labels[_label_id(dialogue_labels[u], dialogue, len(layout.labels), source)])
            out["split"].append(split_of[dialogue])
    widths = {m: {b.shape[1] for b in blocks} for m, blocks in vectors.items()}
    for m, found in widths.items():
        if len(found) > 1:
            raise InputError(f"{source}: {m} features of several sizes {sorted(found)}")
    return {**out, **{m: np.concatenate(blocks) for m, blocks in vectors.items()}}


def _entry(mapping: Any, dialogue: Any, name: str, source: str) -> Any:
    """mapping[dialogue], or one line saying that the split lists name a dialogue `name` lacks."""
    try:
        return mapping[dialogue]
    except (KeyError, TypeError, IndexError):
        raise InputError(f"{source}: {name} has no entry for dialogue {dialogue!r}, which trainVid or testVid lists") from None


def _label_id(value: Any, dialogue: Any, classes: int, source: str) -> int:
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: videoLabels: dialogue {dialogue!r} has the label {value!r}, not a class id") from None
    if not 0 <= label < classes:
        raise InputError(f"{source}: label id {label} in dialogue {dialogue}; {classes} classes expected")
    return label


def _speaker(value: Any) -> str:
    """'M'/'F' (IEMOCAP), or a one-hot list (MELD's 9 speaker slots) -> `speakerK`."""
    if isinstance(value, str):
        return value
    one_hot = np.asarray(value)
    return f"speaker{int(one_hot.argmax())}"
