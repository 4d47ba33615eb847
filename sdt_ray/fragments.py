"""Fragments: rows finished by a batch, waiting to be merged into their part (output.py).

    OUTPUT/_fragments/part-00003-<run>-<uuid>.parquet   rows of part 3 written by one batch

Each batch writes its rows as fragments as soon as it is done (a fragment appears whole or
not at all), so a killed job loses at most the batches in flight. A task's first stage
skips the rows its part's fragments already hold (`done_rows`); compaction then merges
each part's fragments into its part file, keeping one row per `_row`, checks the count
against the plan, and writes the part's done marker before deleting the fragments.
Readers ignore names starting with `_` or `.`, so a half-finished folder never looks like
a table with missing rows.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import output, storage
from .errors import InputError
from .failpoints import reached
from .schema import error_counts
from .tasks import INPUT_SHA, ROW, TASK as PART, part_input_sha256

FRAGMENTS = output.FRAGMENTS
STATS_COLUMNS = ("_audio_s", "_audio_cpu_s")  # per-row seconds summed for the job's summary
RETRIED_REASONS = {"read_error", "internal_error"}  # may succeed on a resumed run (throttled S3, ...)
_FRAGMENT_NAME = re.compile(r"part-(\d+)-([^-/]+)-[^-/]+\.parquet$")


def done_rows(output_uri: str, part: int, rows: int) -> np.ndarray:
    """(rows,) bool: which rows of `part` already sit in a fragment (read by the worker that
    runs the part, never by the driver). A row that failed for a transient reason
    (RETRIED_REASONS) is not done: a resumed run extracts it again, and compaction keeps
    the better copy."""
    done = np.zeros(rows, dtype=bool)
    uris = part_fragments(output_uri, part)
    if uris:
        written = pa.concat_tables([storage.read_table(u, columns=[ROW, "errors"]) for u in uris])
        final = [not ({e["reason"] for e in errs or []} & RETRIED_REASONS) for errs in written.column("errors").to_pylist()]
        ids = written.column(ROW).to_numpy()[np.array(final, dtype=bool)]
        done[ids[ids < rows]] = True  # a chunk asks about its own rows and those before them only
    return done


def write_fragments(batch: pa.Table, output_uri: str, run_id: str) -> pa.Table:
    """Write a finished batch as one fragment per part it touches; returns (part, rows) per fragment."""
    parts = batch.column(PART).to_numpy()
    written = {"part": [], "rows": []}
    for part in np.unique(parts):
        rows = batch.filter(pa.array(parts == part))
        name = f"part-{int(part):05d}-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
        storage.write_table(rows.drop_columns([PART]), storage.join(output_uri, FRAGMENTS, name))
        written["part"].append(int(part))
        written["rows"].append(rows.num_rows)
    return pa.table({"part": pa.array(written["part"], pa.int32()), "rows": pa.array(written["rows"], pa.int64())})


def fragment_parts(output_uri: str) -> list[int]:
    """Parts that have fragments waiting for compaction."""
    names = storage.list_files(storage.join(output_uri, FRAGMENTS))
    return sorted({int(m.group(1)) for m in map(_FRAGMENT_NAME.search, names) if m})


def compact_part(output_uri: str, plan: output.Plan, part: int, write, run_id: str) -> dict:
    """Merge part `part`'s fragments, `write(table)` its file(s) and return the part's summary
    (a dict), then write its done marker (with the part's input hash) and delete the fragments.
    Returns {"stats": the seconds in STATS_COLUMNS summed over the rows this run (`run_id`)
    extracted, "changed": a message when rows of one chunk were read with different contents
    (the input changed between runs: nothing is written), else None}."""
    uris = part_fragments(output_uri, part)
    stats = {c: 0.0 for c in STATS_COLUMNS}
    if output.part_done(output_uri, plan, part) is None:  # else an earlier run died before deleting the fragments
        tables = [storage.read_table(u) for u in uris]
        this_run = [f"-{run_id}-" in u.rsplit("/", 1)[-1] for u in uris]
        stats = {c: sum(float(pc.sum(t.column(c)).as_py() or 0.0) for t, mine in zip(tables, this_run) if mine and c in t.column_names)
                 for c in STATS_COLUMNS}
        table = merge_fragments([t.drop_columns([c for c in STATS_COLUMNS if c in t.column_names]) for t in tables], plan, part, output_uri)
        input_sha, changed = part_input_sha256(table)
        if changed:  # kept for the user to see; the driver reports it (a raise here would be a Ray traceback)
            return {"stats": stats, "changed": f"part {part}, rows {changed[:3]} on"}
        summary = write(table.drop_columns([ROW, INPUT_SHA]))
        reached("compaction")
        output.mark_done(output_uri, part, table.num_rows, summary, input_sha)
    for uri in uris:
        storage.delete(uri)
    return {"stats": stats, "changed": None}


def write_features_part(output_uri: str, part: int, metadata: dict[bytes, bytes]):
    """extract's part writer for compact_part: part-NNNNN.parquet with the table's metadata;
    the summary is the part's error counts."""

    def write(table: pa.Table) -> dict:
        storage.write_table(table.replace_schema_metadata(metadata), storage.join(output_uri, output.part_name(part)))
        return {"errors": error_counts(table)}

    return write


def part_fragments(output_uri: str, part: int) -> list[str]:
    pattern = f"part-{part:05d}-"
    return [u for u in storage.list_files(storage.join(output_uri, FRAGMENTS)) if u.rsplit("/", 1)[-1].startswith(pattern)]


def merge_fragments(tables: list[pa.Table], plan: output.Plan, part: int, output_uri: str) -> pa.Table:
    """A part's rows from its fragments: one copy of each `_row`, in order, all of them."""
    table = _one_row_each(pa.concat_tables(tables, promote_options="permissive")) if tables else None
    expected = plan.part_rows[part]
    if table is None:
        raise InputError(f"{output_uri}: part {part} has none of its {expected} rows after the run")
    if table.num_rows != expected:
        raise InputError(f"{output_uri}: part {part} has {table.num_rows} of its {expected} rows after the run")
    return table


def _one_row_each(table: pa.Table) -> pa.Table:
    """Rows in `_row` order, one copy each: a retried task or a resumed retry may have
    written a row twice, and the copy with the fewest errors wins."""
    n_errors = pc.list_value_length(table.column("errors")).fill_null(0)
    table = table.append_column("_n_errors", n_errors).sort_by([(ROW, "ascending"), ("_n_errors", "ascending")])
    table = table.drop_columns(["_n_errors"])
    rows = table.column(ROW).to_numpy()
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return table if first.all() else table.filter(pa.array(first))
