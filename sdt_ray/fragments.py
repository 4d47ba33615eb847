"""Resumable output for `extract`: a plan, fragments, and compaction into part files.

Layout of an output folder while a job runs and after it finishes:

    OUTPUT/_extract.json                  the plan: input fingerprint, options, parts, complete?
    OUTPUT/_fragments/part-00003-<run>-<uuid>.parquet   rows of part 3 written by one batch
    OUTPUT/part-00003.parquet             part 3, whole, rows in (dialogue_id, utterance_index) order

Rows are numbered (`_row`) in (dialogue_id, utterance_index) order and cut into
parts of `rows_per_file`, so part names are deterministic. Each batch writes its
rows as fragments as soon as it is done (a fragment appears whole or not at
all), so a killed job loses at most the batches in flight. A re-run with the
same plan skips every row already in a fragment or a part file; compaction then
merges each part's fragments into its part file, keeping one row per `_row`.
Readers ignore names starting with `_` or `.`, so a half-finished folder never
looks like a features table with missing rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .errors import InputError

PLAN_FILE = "_extract.json"
FRAGMENTS = "_fragments"
ROW = "_row"  # position of the utterance in (dialogue_id, utterance_index) order
PART = "_part"
STATS_COLUMNS = ("_audio_s", "_audio_cpu_s")  # per-row seconds summed for the job's summary
RETRIED_REASONS = {"read_error", "internal_error"}  # may succeed on a resumed run (throttled S3, ...)
_FRAGMENT_NAME = re.compile(r"part-(\d+)-([^-/]+)-[^-/]+\.parquet$")
_PART_NAME = re.compile(r"part-(\d+)\.parquet$")


@dataclass
class Plan:
    fingerprint: str  # input rows + options: a different one is a different job
    input: str
    rows: int
    rows_per_file: int
    options: dict
    complete: bool = False

    @property
    def parts(self) -> int:
        return max(1, -(-self.rows // self.rows_per_file))

    def part_rows(self, part: int) -> int:
        return min(self.rows_per_file, self.rows - part * self.rows_per_file)


def number_rows(table: pa.Table, rows_per_file: int) -> pa.Table:
    """Sort by (dialogue_id, utterance_index) and add `_row` and `_part`."""
    table = table.sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    rows = np.arange(table.num_rows, dtype=np.int64)
    return table.append_column(ROW, pa.array(rows)).append_column(PART, pa.array((rows // rows_per_file).astype(np.int32)))


def fingerprint(table: pa.Table, options: dict) -> str:
    """sha256 over the numbered input rows (Arrow IPC bytes) and the options."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
        writer.write_table(table.replace_schema_metadata(None))
    digest.update(sink.getvalue())
    return digest.hexdigest()[:32]


def read_plan(output_uri: str, name: str = PLAN_FILE) -> Plan | None:
    """The plan at OUTPUT/name; None when there is none or it is not a fragments plan
    (`predict` writes other plans under the same name when its input is a features table)."""
    uri = storage.join(output_uri, name)
    if not storage.exists(uri):
        return None
    document = json.loads(storage.read_text(uri))
    try:
        return Plan(**document)
    except TypeError:
        return None


def write_plan(output_uri: str, plan: Plan, name: str = PLAN_FILE) -> None:
    storage.write_text(storage.join(output_uri, name), json.dumps(asdict(plan), indent=2))


def done_rows(output_uri: str, plan: Plan, parts_uri: str | None = None) -> np.ndarray:
    """(rows,) bool: which rows already sit in a fragment or a finished part file
    (part-NNNNN.parquet in `parts_uri`, by default the output folder itself).

    A fragment row that failed for a transient reason (RETRIED_REASONS) is not done:
    a resumed run extracts it again, and compaction keeps the better copy."""
    done = np.zeros(plan.rows, dtype=bool)
    for uri in storage.list_files(parts_uri or output_uri):
        match = _PART_NAME.search(uri)
        if match:
            start = int(match.group(1)) * plan.rows_per_file
            done[start : start + plan.part_rows(int(match.group(1)))] = True
    if storage.list_files(storage.join(output_uri, FRAGMENTS)):
        written = storage.read_table(storage.join(output_uri, FRAGMENTS), columns=[ROW, "errors"])
        final = [not ({e["reason"] for e in errs or []} & RETRIED_REASONS) for errs in written.column("errors").to_pylist()]
        done[written.column(ROW).to_numpy()[np.array(final, dtype=bool)]] = True
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


def compact_part(output_uri: str, plan: Plan, part: int, metadata: dict[bytes, bytes], run_id: str) -> dict:
    """Merge part `part`'s fragments into `part-NNNNN.parquet`; returns the seconds
    in STATS_COLUMNS summed over the rows this run (`run_id`) extracted."""
    fragments = part_fragments(output_uri, part)
    target = storage.join(output_uri, f"part-{part:05d}.parquet")
    if storage.exists(target):  # an earlier run died after writing the part, before deleting its fragments
        for uri in fragments:
            storage.delete(uri)
        return {c: 0.0 for c in STATS_COLUMNS}
    tables = [storage.read_table(u) for u in fragments]
    this_run = [f"-{run_id}-" in u.rsplit("/", 1)[-1] for u in fragments]
    stats = {c: sum(float(pc.sum(t.column(c)).as_py() or 0.0) for t, mine in zip(tables, this_run) if mine and c in t.column_names) for c in STATS_COLUMNS}
    table = merge_fragments([t.drop_columns([c for c in STATS_COLUMNS if c in t.column_names]) for t in tables], plan, part, output_uri)
    storage.write_table(table.drop_columns([ROW]).replace_schema_metadata(metadata), target)
    for uri in fragments:
        storage.delete(uri)
    return stats


def part_fragments(output_uri: str, part: int) -> list[str]:
    pattern = f"part-{part:05d}-"
    return [u for u in storage.list_files(storage.join(output_uri, FRAGMENTS)) if u.rsplit("/", 1)[-1].startswith(pattern)]


def merge_fragments(tables: list[pa.Table], plan: Plan, part: int, output_uri: str) -> pa.Table:
    """A part's rows from its fragments: one copy of each `_row`, in order, all of them."""
    table = _one_row_each(pa.concat_tables(tables, promote_options="permissive"))
    expected = plan.part_rows(part)
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
