"""From a features table (one row per utterance) to whole dialogues.

`dialogue_rows` builds a table with one row per dialogue, the form Ray Data
shards across training workers, so no dialogue is ever split. `to_dialogues`
turns such rows into `Dialogue` objects for collate. Checks here raise
InputError naming the file, the dialogue and the problem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .collate import Dialogue, fixed_speaker_ids, relative_speaker_ids
from .config import ModelConfig
from .errors import InputError
from .schema import IGNORE_LABEL, failed_modalities, feature_column, vectors


@dataclass
class Exclusions:
    """Utterances left out of training or evaluation, by reason, and those kept without some
    modality (`absent`: modality -> rows); never silent."""

    counts: dict[str, int]
    absent: dict[str, int] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.counts.values()) or any(self.absent.values())

    def describe(self) -> str:
        parts = [f"{n} {reason}" for reason, n in sorted(self.counts.items()) if n]
        parts += [f"{n} kept without {m}" for m, n in self.absent.items() if n]
        return ", ".join(parts)


def select_split(table: pa.Table, split: str, source: str) -> pa.Table:
    subset = table.filter(pc.equal(table.column("split"), split))
    if subset.num_rows == 0:
        present = sorted(set(pc.unique(table.column("split")).to_pylist()) - {None})
        raise InputError(f"{source}: split '{split}' is empty (splits present: {present})")
    return subset


def check_unique_positions(table: pa.Table, source: str) -> None:
    keys = table.select(["dialogue_id", "utterance_index"]).group_by(["dialogue_id", "utterance_index"])
    counts = keys.aggregate([([], "count_all")])
    dupes = counts.filter(pc.greater(counts.column("count_all"), 1))
    if dupes.num_rows:
        examples = [
            f"{d}#{u}" for d, u in zip(dupes.column("dialogue_id").to_pylist()[:5], dupes.column("utterance_index").to_pylist()[:5])
        ]
        raise InputError(
            f"{source}: {dupes.num_rows} duplicate (dialogue_id, utterance_index) pairs, e.g. {', '.join(examples)}; "
            "each utterance needs a unique position in its dialogue"
        )


def label_indices(table: pa.Table, labels: list[str], source: str) -> np.ndarray:
    """(N,) int64 label ids; null labels become IGNORE_LABEL, unknown labels an error."""
    values = table.column("label").to_pylist()
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({v for v in values if v is not None and v not in index})
    if unknown:
        raise InputError(f"{source}: unknown label{'s' if len(unknown) > 1 else ''} {unknown} in column 'label'; known labels: {labels}")
    return np.array([IGNORE_LABEL if v is None else index[v] for v in values], dtype=np.int64)


def modality_presence(table: pa.Table, modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """modality -> (N,) bool: the row has a vector for it (not null) and its extraction did not fail."""
    failed = failed_modalities(table)
    presence = {}
    for m in modalities:
        if feature_column(m) not in table.column_names:  # the table lacks it altogether
            presence[m] = np.zeros(table.num_rows, dtype=bool)
            continue
        has_vector = ~table.column(feature_column(m)).is_null().to_numpy(zero_copy_only=False)
        presence[m] = has_vector & np.array([m not in f for f in failed], dtype=bool)
    return presence


def usable_rows(table: pa.Table, modalities: tuple[str, ...]) -> tuple[pa.Table, Exclusions]:
    """Drop rows with a broken vector (NaN/inf) or no modality at all, counting each reason.
    With several modalities, a row that lacks some (null vector, failed extraction) is kept
    and the model masks what it lacks; those are counted in `absent`. The same rules as scoring."""
    presence = modality_presence(table, modalities)
    has_any = np.logical_or.reduce([presence[m] for m in modalities])
    failed = np.array([bool(f & set(modalities)) for f in failed_modalities(table)], dtype=bool)
    counts: dict[str, int] = {}
    if "errors" in table.column_names:
        counts["with extraction errors"] = int((~has_any & failed).sum())
    if (~has_any & ~failed).any():
        counts["with no vector"] = int((~has_any & ~failed).sum())
    keep = has_any
    for m in modalities:
        if feature_column(m) not in table.column_names:
            continue
        broken = keep & presence[m] & ~np.isfinite(vectors(table, m)).all(axis=1)
        counts[f"with non-finite {m} features"] = int(broken.sum())
        keep = keep & ~broken
    absent = {m: int((keep & ~presence[m]).sum()) for m in modalities} if len(modalities) > 1 else {}
    return table.filter(pa.array(keep)), Exclusions(counts, absent)


def dialogue_rows(table: pa.Table, config: ModelConfig, labels: list[str], source: str) -> pa.Table:
    """One row per dialogue: id, speakers, labels and each modality's vectors
    flattened to list<float32> of n*D_m values, utterances in order."""
    check_unique_positions(table, source)
    table = table.sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    label_ids = label_indices(table, labels, source)
    dialogue_ids = table.column("dialogue_id").combine_chunks()
    run_ends = pc.run_end_encode(dialogue_ids).run_ends.to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], run_ends]).astype(np.int32)  # (n_dialogues + 1,)
    speaker_names = table.column("speaker").to_pylist()
    speaker_ids = np.concatenate(
        [_speaker_ids(speaker_names[a:b], config) for a, b in zip(offsets[:-1], offsets[1:])]
    )
    columns = {
        "dialogue_id": pc.take(dialogue_ids, pa.array(offsets[:-1])),
        "speakers": pa.ListArray.from_arrays(pa.array(offsets), pa.array(speaker_ids)),
        "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(label_ids)),
    }
    presence = modality_presence(table, config.modalities)
    for m in config.modalities:
        dim = config.input_dim(m)
        given = vectors(table, m) if feature_column(m) in table.column_names else np.zeros((table.num_rows, dim))
        values = np.where(presence[m][:, None], given, 0.0).astype(np.float32)  # absent: zeros, masked
        flat = pa.array(values.reshape(-1))
        # int64 offsets: utterances x dim passes 2**31 at about 2M utterances of 1024-d vectors.
        columns[feature_column(m)] = pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64) * dim), flat)
        columns[_present_column(m)] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(presence[m]))
    return pa.table(columns)


def to_dialogues(rows: pa.Table, config: ModelConfig) -> list[Dialogue]:
    """Rows of `dialogue_rows` (any slice of them) back to Dialogue objects."""
    out = []
    speakers = rows.column("speakers").to_pylist()
    labels = rows.column("labels").to_pylist()
    flats = {m: rows.column(feature_column(m)).to_pylist() for m in config.modalities}
    present = {m: rows.column(_present_column(m)).to_pylist() for m in config.modalities}
    for i, dialogue_id in enumerate(rows.column("dialogue_id").to_pylist()):
        feats = {
            m: np.asarray(flats[m][i], dtype=np.float32).reshape(-1, config.input_dim(m)) for m in config.modalities
        }
        out.append(Dialogue(
            dialogue_id, feats, np.asarray(speakers[i], np.int64), np.asarray(labels[i], np.int64),
            {m: np.asarray(present[m][i], dtype=bool) for m in config.modalities},
        ))
    return out


def _present_column(modality: str) -> str:
    return f"{modality}_present"


def _speaker_ids(names: list[str | None], config: ModelConfig) -> np.ndarray:
    if config.speaker_mode == "fixed":
        return fixed_speaker_ids(names, config.speaker_names, config.max_speakers)
    return relative_speaker_ids(names, config.max_speakers)
