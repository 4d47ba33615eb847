"""The Parquet tables sdt-ray reads and writes, in one place, and their validation.

- utterances: one row per utterance, text and media references (the importers' output)
- features:   the same keys plus one fixed-size float32 vector column per modality

Validation names the file and the column, so a user can fix the input without
reading a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import MODALITIES
from .errors import InputError

SPLITS = ("train", "dev", "test")
IGNORE_LABEL = -1  # label id of padding and of unlabelled utterances, in tensors and arrays
LABELS_METADATA_KEY = b"sdt_ray.labels"  # JSON list: the dataset's label order
ENCODERS_METADATA_KEY = b"sdt_ray.encoders"  # JSON dict: modality -> encoder description

KEY_FIELDS = [
    pa.field("dialogue_id", pa.string(), nullable=False),
    pa.field("utterance_index", pa.int32(), nullable=False),
    pa.field("speaker", pa.string()),
]
LABEL_FIELDS = [
    pa.field("label", pa.string()),  # null when unlabelled
    pa.field("split", pa.string()),  # train | dev | test, or null
]
MEDIA_FIELDS = [
    pa.field("audio_uri", pa.string()),
    pa.field("video_uri", pa.string()),
    pa.field("start_s", pa.float64()),  # seconds into the media file
    pa.field("end_s", pa.float64()),
    pa.field("channel", pa.int16()),
]

HEARD_FIELDS = [  # calls: where a turn's words came from, and how sure the recogniser was
    pa.field("words_from", pa.string()),  # transcript | asr | null (no words: energy turns)
    pa.field("asr_logprob", pa.float32()),  # mean log-probability of the recognised words
    pa.field("asr_no_speech", pa.float32()),  # the recogniser's highest no-speech probability over the turn
]

UTTERANCES_SCHEMA = pa.schema(KEY_FIELDS + [pa.field("text", pa.string())] + LABEL_FIELDS + MEDIA_FIELDS + HEARD_FIELDS)
UTTERANCES_REQUIRED = ("dialogue_id", "utterance_index", "speaker", "text", "label", "split")

# Why a modality of a row has no vector: one entry per failed modality, empty when all went well.
ERROR_TYPE = pa.struct([("modality", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
FEATURE_ERRORS_FIELD = pa.field("errors", pa.list_(ERROR_TYPE))


def feature_column(modality: str) -> str:
    return f"{modality}_features"


def feature_field(modality: str, dim: int) -> pa.Field:
    return pa.field(feature_column(modality), pa.list_(pa.float32(), dim))


def features_schema(dims: dict[str, int], labels: list[str] | None = None) -> pa.Schema:
    vector_fields = [feature_field(m, dims[m]) for m in MODALITIES if m in dims]
    schema = pa.schema(KEY_FIELDS + LABEL_FIELDS + vector_fields + [FEATURE_ERRORS_FIELD])
    return with_labels(schema, labels) if labels else schema


def with_labels(schema: pa.Schema, labels: list[str]) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), LABELS_METADATA_KEY: json.dumps(list(labels)).encode()})


def labels_from_metadata(schema: pa.Schema) -> list[str] | None:
    raw = (schema.metadata or {}).get(LABELS_METADATA_KEY)
    return json.loads(raw) if raw else None


def validate_utterances(table: pa.Table, source: str) -> pa.Table:
    """Check the required columns and cast to the canonical types; missing optional
    media columns are added as nulls. Returns the table in UTTERANCES_SCHEMA order."""
    _require_columns(table, UTTERANCES_REQUIRED, source, "utterances")
    columns = []
    for field in UTTERANCES_SCHEMA:
        if field.name in table.column_names:
            columns.append(_cast_column(table, field, source))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    check_splits(table, source)
    out = pa.Table.from_arrays(columns, schema=UTTERANCES_SCHEMA)
    return out.replace_schema_metadata(table.schema.metadata)


@dataclass(frozen=True)
class FeaturesInfo:
    dims: dict[str, int]  # modality -> vector size
    labels: list[str] | None  # from the table's metadata, when the importer recorded it


def validate_features(
    table: pa.Table, source: str, expected_dims: dict[str, int] | None = None, absent_ok: bool = False
) -> FeaturesInfo:
    """Check keys, label/split types and each vector column's type and size.

    expected_dims: modality -> size that a model or recipe needs; a different size is an
    error naming the column, and so is a missing modality unless `absent_ok` (scoring: the
    model masks a modality the table lacks, as long as one it needs is there).
    """
    _require_columns(table, ("dialogue_id", "utterance_index", "speaker", "label", "split"), source, "features")
    for field in KEY_FIELDS + LABEL_FIELDS:
        _cast_column(table, field, source)
    dims = {m: _vector_dim(table, m, source) for m in MODALITIES if feature_column(m) in table.column_names}
    if not dims:
        raise InputError(
            f"{source}: no feature columns; expected at least one of "
            f"{[feature_column(m) for m in MODALITIES]} (run `sdt-ray extract` first)"
        )
    expected_dims = expected_dims or {}
    if absent_ok and expected_dims and not set(expected_dims) & set(dims):
        raise InputError(f"{source}: none of the model's feature columns {[feature_column(m) for m in expected_dims]}")
    for modality, dim in expected_dims.items():
        if modality not in dims and absent_ok:
            continue
        if modality not in dims:
            raise InputError(f"{source}: column '{feature_column(modality)}' is missing; the model needs {modality}")
        if dims[modality] != dim:
            raise InputError(
                f"{source}: column '{feature_column(modality)}' has dimension {dims[modality]}, expected {dim}"
            )
    check_splits(table, source)
    return FeaturesInfo(dims=dims, labels=labels_from_metadata(table.schema))


def vectors(table: pa.Table, modality: str) -> np.ndarray:
    """A fixed-size list column as a (N, D) float32 array; null rows become NaN."""
    column = table.column(feature_column(modality)).combine_chunks()
    dim = column.type.list_size
    if column.null_count:
        column = pc.fill_null(column, pa.scalar([float("nan")] * dim, column.type))
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, dim)


def vector_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(N, D) float32 -> fixed-size list array; rows where valid is False are null."""
    n, dim = values.shape
    flat = pa.array(values.astype(np.float32, copy=False).reshape(-1), pa.float32())
    mask = None if valid is None else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)


def _vector_dim(table: pa.Table, modality: str, source: str) -> int:
    name = feature_column(modality)
    kind = table.schema.field(name).type
    if pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type):
        return kind.list_size
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.unique(pc.list_value_length(table.column(name)).drop_null()).to_pylist()
        if len(lengths) > 1:
            raise InputError(f"{source}: column '{name}' has vectors of different sizes {sorted(lengths)[:5]}")
        raise InputError(
            f"{source}: column '{name}' is a variable-size list; expected fixed_size_list<float32>"
            + (f"[{lengths[0]}]" if lengths else "")
        )
    raise InputError(f"{source}: column '{name}' has type {kind}; expected fixed_size_list<float32>")


def _require_columns(table: pa.Table, required: tuple[str, ...], source: str, kind: str) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"in the {kind} table (has: {', '.join(table.column_names)})"
        )


def _cast_column(table: pa.Table, field: pa.Field, source: str) -> pa.ChunkedArray:
    column = table.column(field.name)
    try:
        column = column.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"{source}: column '{field.name}' has type {column.type}, expected {field.type} ({exc})"
        ) from None
    if not field.nullable and column.null_count:
        raise InputError(f"{source}: column '{field.name}' has {column.null_count} null values")
    return column


def check_splits(table: pa.Table, source: str) -> None:
    values = set(pc.unique(table.column("split").cast(pa.string())).to_pylist()) - {None}
    unknown = values - set(SPLITS)
    if unknown:
        raise InputError(f"{source}: column 'split' has unknown values {sorted(unknown)}; expected {list(SPLITS)}")


def add_errors(batch: pa.Table, modality: str, errors: list) -> pa.Table:
    """Append this modality's failures to each row's `errors` list (created when absent).

    errors[i]: (reason, detail), a bare reason, or None when row i is fine."""
    previous = batch.column("errors").to_pylist() if "errors" in batch.column_names else [[] for _ in range(batch.num_rows)]
    merged = []
    for entries, error in zip(previous, errors):
        entries = list(entries or [])
        if error is not None:
            reason, detail = (error, "") if isinstance(error, str) else error
            entries.append({"modality": modality, "reason": reason, "detail": detail})
        merged.append(entries)
    column = pa.array(merged, FEATURE_ERRORS_FIELD.type)
    if "errors" in batch.column_names:
        return batch.set_column(batch.column_names.index("errors"), FEATURE_ERRORS_FIELD, column)
    return batch.append_column(FEATURE_ERRORS_FIELD, column)


def add_feature_column(batch: pa.Table, modality: str, values: np.ndarray, errors: list, record: bool = True) -> pa.Table:
    """Append `<modality>_features`, null where errors[i] is set; with `record`, also
    add those failures to the `errors` column (a stage that recorded them earlier passes False)."""
    valid = np.array([e is None for e in errors], dtype=bool)
    batch = batch.append_column(feature_field(modality, values.shape[1]), vector_array(values, valid))
    return add_errors(batch, modality, errors) if record else batch


def failed_modalities(table: pa.Table) -> list[set[str]]:
    """Per row, the modalities whose extraction failed."""
    if "errors" not in table.column_names:
        return [set() for _ in range(table.num_rows)]
    return [{e["modality"] for e in entries or []} for entries in table.column("errors").to_pylist()]


def error_counts(table: pa.Table) -> dict[str, int]:
    """`modality:reason` -> rows, over the `errors` column."""
    counts: dict[str, int] = {}
    if "errors" not in table.column_names:
        return counts
    flat = pc.list_flatten(table.column("errors"))
    for entry in flat.to_pylist():
        key = f"{entry['modality']}:{entry['reason']}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def features_output(batch: pa.Table, modalities: list[str]) -> pa.Table:
    """Keep the features table's columns, in schema order."""
    names = [f.name for f in KEY_FIELDS + LABEL_FIELDS] + [feature_column(m) for m in modalities] + ["errors"]
    return batch.select(names)


def probability_column(label: str) -> str:
    return f"prob_{label}"


def predictions_schema(labels: list[str], modalities: tuple[str, ...], keep: list[pa.Field] = ()) -> pa.Schema:
    """One row per input utterance: the prediction, or null predictions and an `error`."""
    weights = pa.struct([pa.field(m, pa.float32()) for m in modalities])
    return pa.schema(
        KEY_FIELDS
        + [pa.field("label", pa.string()), pa.field("confidence", pa.float32())]
        + [pa.field(probability_column(label), pa.float32()) for label in labels]
        + [
            pa.field("modality_weights", weights),  # the fusion gate's alpha per modality
            pa.field("modalities_used", pa.list_(pa.string())),
            pa.field("error", pa.string()),  # why the row was not scored; null when it was
            pa.field("model_id", pa.string()),  # sha256 of the checkpoint's weights, first 16 hex digits
            pa.field("model_version", pa.string()),
        ]
        + list(keep)
    )


def predictions_table(
    rows: pa.Table, probabilities: np.ndarray, weights: np.ndarray, errors: list[str | None], labels: list[str],
    modalities: tuple[str, ...], model_id: str, model_version: str, keep_columns: list[str] = (),
    used: list[list[str] | None] | None = None,
) -> pa.Table:
    """rows: the input rows (keys first); probabilities (N, C) and weights (N, M), NaN where errors[i] is set;
    used: per row, the modalities it was scored with (default: all of them)."""
    n = rows.num_rows
    scored = np.array([e is None for e in errors], dtype=bool)
    null = pa.array(~scored)
    best = np.nan_to_num(probabilities).argmax(axis=1) if n else np.zeros(0, np.int64)
    columns = [rows.column(f.name).cast(f.type) for f in KEY_FIELDS]
    columns.append(pa.array(np.array(labels, dtype=object)[best] if n else [], pa.string(), mask=~scored))
    columns.append(pa.array(probabilities.max(axis=1, initial=-np.inf) if n else [], pa.float32(), mask=~scored))
    columns += [pa.array(probabilities[:, c], pa.float32(), mask=~scored) for c in range(len(labels))]
    weight_fields = [pa.array(weights[:, m], pa.float32()) for m in range(len(modalities))]
    columns.append(pa.StructArray.from_arrays(weight_fields, names=list(modalities), mask=null))
    if used is None:
        used = [list(modalities) if ok else None for ok in scored]
    columns.append(pa.array(used, pa.list_(pa.string())))
    columns.append(pa.array(errors, pa.string()))
    columns.append(pa.array([model_id] * n, pa.string()))
    columns.append(pa.array([model_version] * n, pa.string()))
    keep = [rows.schema.field(c) for c in keep_columns]
    columns += [rows.column(c) for c in keep_columns]
    return pa.Table.from_arrays(columns, schema=predictions_schema(labels, modalities, keep))
