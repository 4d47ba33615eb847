"""Ray Data jobs. `extract`: utterances table -> features table.

Each modality is one map stage over an actor pool that loads its encoder once
per actor. Every input row comes out exactly once: a row that cannot be
encoded (empty text, ...) keeps null vectors and an `error` reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy

from . import storage
from .errors import ConfigError, InputError
from .features.text import TextFeatureStage, resolve_text_model
from .schema import (
    ENCODERS_METADATA_KEY,
    LABELS_METADATA_KEY,
    UTTERANCES_REQUIRED,
    features_output,
    labels_from_metadata,
    validate_utterances,
)
from .submit import ray_session

SUPPORTED_MODALITIES = ("text",)  # audio and visual stages arrive with the media extraction work


@dataclass(frozen=True)
class ExtractOptions:
    modalities: tuple[str, ...] = ("text",)
    text_model: str | None = None  # local folder, `minilm`, or an id in the user's own HF cache
    text_max_length: int = 128  # tokens
    batch_size: int = 256  # utterances per block handed to an actor
    actors: int | None = None  # default: sized from the cluster's CPUs
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    overwrite: bool = False


@dataclass
class ExtractSummary:
    rows_in: int
    rows_out: int
    errors: dict[str, int]
    output: str


def extract(
    input_uri: str,
    output_uri: str,
    options: ExtractOptions = ExtractOptions(),
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> ExtractSummary:
    unsupported = [m for m in options.modalities if m not in SUPPORTED_MODALITIES]
    if unsupported:
        raise ConfigError(f"extraction of {unsupported} is not available yet; supported: {list(SUPPORTED_MODALITIES)}")
    metadata = _check_input(input_uri)
    _prepare_output(output_uri, options.overwrite)
    with ray_session(address):
        ds = _read(input_uri)
        rows_in = ds.count()
        actors = options.actors or _auto_actors(options.cpus_per_actor)
        log(f"extracting {'+'.join(options.modalities)} features for {rows_in} utterances with {actors} actor(s)")
        ds = ds.repartition(max(actors * 2, rows_in // (options.batch_size * 8) or 1))
        if "text" in options.modalities:
            ds = ds.map_batches(
                TextFeatureStage,
                fn_constructor_kwargs={
                    "model": options.text_model,
                    "max_length": options.text_max_length,
                    "threads": max(1, int(options.cpus_per_actor)),
                },
                batch_size=options.batch_size,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=actors),
                num_cpus=options.cpus_per_actor,
                num_gpus=options.gpus_per_actor,
            )
        metadata[ENCODERS_METADATA_KEY] = json.dumps({"text": resolve_text_model(options.text_model)}).encode()
        modalities = list(options.modalities)
        # The label order and the encoder travel in every file's schema metadata.
        ds = ds.map_batches(
            lambda b: features_output(b, modalities).replace_schema_metadata(metadata),
            batch_format="pyarrow",
            batch_size=None,
        )
        fs, path = storage.resolve(output_uri)
        ds.write_parquet(path, filesystem=fs)
    return _finish(output_uri, rows_in)


def _check_input(input_uri: str) -> dict[bytes, bytes]:
    """Validate the utterances table's columns on its first rows; return its schema metadata."""
    table = storage.read_head(input_uri, 1000)
    validate_utterances(table, input_uri)
    metadata = dict(table.schema.metadata or {})
    labels = labels_from_metadata(table.schema)
    return {LABELS_METADATA_KEY: metadata[LABELS_METADATA_KEY]} if labels else {}


def _prepare_output(output_uri: str, overwrite: bool) -> None:
    if not storage.exists(output_uri):
        return
    if not overwrite:
        raise InputError(f"{output_uri} already exists; pass --overwrite to replace it")
    fs, path = storage.resolve(output_uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def _read(input_uri: str) -> ray.data.Dataset:
    fs, path = storage.resolve(input_uri)
    return ray.data.read_parquet(path, filesystem=fs).select_columns(list(UTTERANCES_REQUIRED))


def _auto_actors(cpus_per_actor: float) -> int:
    """Leave one CPU for reading and writing (RAY_NOTES: actor-pool deadlock on 2 CPUs)."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int((cpus - 1.0) // cpus_per_actor))


def _finish(output_uri: str, rows_in: int) -> ExtractSummary:
    """Count the rows written and their errors: every input row must come out once."""
    errors = storage.read_table(output_uri, columns=["error"]).column("error")
    if len(errors) != rows_in:
        raise InputError(f"extraction wrote {len(errors)} rows for {rows_in} input utterances")
    return ExtractSummary(rows_in, len(errors), dict(zip(*_value_counts(errors))), output_uri)


def _value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(column.drop_null())
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()
