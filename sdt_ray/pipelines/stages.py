"""The pipelines' own stages (the encoders' stages live in features/): callable classes that
Ray Data maps over a stream, each loading what it needs once per actor.

    chunk items -> ReadStage -> [extraction stages] -> [StreamScoreStage] -> write_fragments
    task items -> ScoreStage (read, score, write the part)                       (predict)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .. import fragments, output
from ..text_card import CONTEXT_COLUMN, TextInput, context_texts
from ..schema import KEY_FIELDS, UTTERANCES_SCHEMA, add_errors
from ..scoring import PredictOptions, load_scorer
from ..tasks import INPUT_SHA, READ_ERROR, RowGroupCache, check_whole_chunks, content_sha256, mark_chunk, number_task
from ..tasks import read_slices, whole_dialogues


@dataclass(frozen=True)
class ReadOptions:
    columns: tuple[str, ...]  # what the stages after this one read (keys and labels included)
    output_uri: str  # where this job's fragments lie (rows finished by an earlier run are skipped)
    whole_dialogues: bool = False  # the scorer follows: tag chunks, resume dialogue by dialogue
    modalities: tuple[str, ...] = ()  # a row that cannot be read gets a read_error under each
    context: TextInput | None = None  # a fine-tuned encoder's input, when it reads the turns around each utterance


class ReadStage:
    """Chunk items (tasks.chunk_items) in, one per call; the chunk's rows out, read where they
    lie, only `columns`, cast to the utterances schema, numbered within their task, without
    the rows an earlier run finished, each carrying the chunk's INPUT_SHA (the hash of every
    row read, finished or not). One block per chunk, so every actor after it gets work."""

    def __init__(self, options: ReadOptions):
        self.options = options
        self.cache = RowGroupCache()  # consecutive chunks of a task mostly share a row group: decode it once

    def __call__(self, item: pa.Table) -> pa.Table:
        o = self.options
        task, offset, chunk = (item.column(c)[0].as_py() for c in ("task", "offset", "chunk"))
        slices = json.loads(item.column("slices")[0].as_py())
        read = read_slices(slices, list(o.columns), self.cache)
        table = number_task(_as_utterances(read, o.columns), task, offset)
        table = table.append_column(INPUT_SHA, pa.array([f"{offset}:{content_sha256(read)}"] * table.num_rows, pa.string()))
        if o.context:  # before finished rows go: a turn's context is its dialogue's (whole in a chunk)
            table = table.append_column(CONTEXT_COLUMN, pa.array(context_texts(table, o.context), pa.string()))
        if item.column("resume")[0].as_py():
            n = table.num_rows
            pending = ~fragments.done_rows(o.output_uri, task, offset + n)[offset:]
            if o.whole_dialogues:
                pending = whole_dialogues(pending, table)
            table = table.filter(pa.array(pending))
        table = _with_read_errors(table, o.modalities)
        return mark_chunk(table, chunk) if o.whole_dialogues else table


def _as_utterances(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """The columns read, cast to the utterances schema's types (others kept as they are); an
    optional media column that was asked for but is not in the file comes as nulls."""
    for field in UTTERANCES_SCHEMA:
        if field.name in table.column_names and table.schema.field(field.name).type != field.type:
            table = table.set_column(table.column_names.index(field.name), field, table.column(field.name).cast(field.type))
        elif field.name not in table.column_names and field.name in columns:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.replace_schema_metadata(None)


def _with_read_errors(table: pa.Table, modalities: tuple[str, ...]) -> pa.Table:
    """An `errors` column: rows that could not be read carry read_error under each modality."""
    failed = [("read_error", d) if d else None for d in table.column(READ_ERROR).to_pylist()]
    for modality in modalities:
        table = add_errors(table, modality, failed)
    return table


# ---------------------------------------------------------------------------
# Scoring


class ScoreStage:
    """One task (whole dialogues) per call: read its rows, score, write its part and done marker.

    Loads the checkpoint once per actor. Returns one summary row per task."""

    def __init__(self, checkpoint_uri: str, output_uri: str, options: PredictOptions, model_version: str, threads: int | None = None):
        self.scorer = load_scorer(checkpoint_uri, options, model_version, threads)
        self.output_uri = output_uri
        self.keep_columns = list(options.keep_columns)
        self.partition_by = tuple(options.partition_by)
        self.columns = [f.name for f in KEY_FIELDS] + [f"{m}_features" for m in self.scorer.config.modalities]
        self.columns += ["errors"] + self.keep_columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = 0
        for task, slices in zip(batch.column("task").to_pylist(), batch.column("slices").to_pylist()):
            table = read_slices(json.loads(slices), self.columns)
            scored = self.scorer(table, self.keep_columns)
            output.write_part(scored, self.output_uri, task, self.partition_by)
            output.mark_done(self.output_uri, task, scored.num_rows, prediction_counts(scored), content_sha256(table))
            rows += scored.num_rows
        import ray  # the node this actor runs on, for the job's summary (the rest of this module needs no Ray)

        return pa.table({"rows": [rows], "node": [ray.get_runtime_context().get_node_id()]})


class StreamScoreStage:
    """Extracted rows (whole dialogues) in, prediction rows out, carrying `_row`, `_part`
    and the extraction `errors` for the fragment writer."""

    def __init__(self, checkpoint_uri: str, options: PredictOptions, model_version: str, carry: list[str], threads: int | None = None):
        self.scorer = load_scorer(checkpoint_uri, options, model_version, threads)
        self.keep_columns = list(options.keep_columns) + list(carry)

    def __call__(self, batch: pa.Table) -> pa.Table:
        check_whole_chunks(batch)
        return self.scorer(batch, self.keep_columns)


def prediction_counts(scored: pa.Table) -> dict:
    """A part's summary for its done marker: rows per label, per error and per modalities used."""
    used = pc.binary_join(scored.column("modalities_used"), "+")
    return {"labels": _counts(scored.column("label")), "errors": _counts(scored.column("error")), "modalities": _counts(used)}


def _counts(column) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def write_scored_part(output_uri: str, part: int, partition_by: tuple[str, ...], carried: list[str]):
    """predict --extract's part writer for fragments.compact_part."""

    def write(table: pa.Table) -> dict:
        table = table.drop_columns([c for c in carried if c in table.column_names])
        output.write_part(table, output_uri, part, partition_by)
        return prediction_counts(table)

    return write
