"""An input table cut into tasks of whole dialogues, and a task's rows read where they lie.

The driver plans and never holds the archive: it reads each input file's footer (row
count, schema, column statistics) and its key columns (`dialogue_id`, `utterance_index`,
and `split` for an utterances table), one file at a time, and keeps only the tasks:

    {"task": 3, "rows": 10012, "slices": [["s3://b/utt/part-1.parquet", 9120, 10000],
                                          ["s3://b/utt/part-2.parquet", 0, 9132]]}

row ranges of the input files, in order, each task at least `rows_per_task` rows of whole
dialogues (a dialogue that crosses a file boundary stays in one task). Workers read their
task's slices, only the columns their stages need. Each dialogue's rows must lie together
(as every importer and `extract` write them); a dialogue split in two runs, or a null key,
is one InputError naming the file and the column, before any work.

A data page that cannot be read inside a task does not end the job: its rows come back with
their keys (read again alone, as the driver read them) and the reason in `READ_ERROR`.

The worker that reads rows also hashes them (`content_sha256`): a part's done marker carries
the SHA-256 of the rows it was made from, and a resumed part whose rows were read twice with
different contents is caught at compaction, even where an input file kept its size and mtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage
from .errors import InputError

READ_ERROR = "_read_error"  # why a row's other columns could not be read; null when they were
KEY_COLUMNS = ("dialogue_id", "utterance_index")
TASK = "_part"  # the task (= output part) a row belongs to
ROW = "_row"  # a row's position in its task, in (dialogue_id, utterance_index) order
INPUT_SHA = "_input_sha256"  # per row: "<chunk offset>:<SHA-256 of the chunk's rows as read>"


@dataclass
class InputPlan:
    files: list[dict]  # output.file_facts of each input file, in order
    tasks: list[dict]  # {"task", "rows", "slices"}
    schema: pa.Schema  # the first file's (its metadata carries the label order)
    filled: set[str] = field(default_factory=set)  # columns with a non-null value somewhere (footer statistics)

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.tasks)


def input_files(input_uri: str) -> list[str]:
    """The Parquet files of a table (a file or a folder, local or s3://), in name order."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(input_uri)
    if not storage.exists(input_uri):
        raise InputError(f"{input_uri}: no such file or folder")
    try:
        files = sorted(pads.dataset(path, filesystem=fs, format="parquet").files)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{input_uri}: not a readable Parquet table ({exc})") from None
    if not files:
        raise InputError(f"{input_uri}: no Parquet files")
    return [f"s3://{f}" if storage.is_remote(input_uri) else f for f in files]


def plan_input(input_uri: str, rows_per_task: int, check_schema=None, extra_keys: tuple[str, ...] = (), check_keys=None,
               rows_per_chunk: int | None = None) -> InputPlan:
    """Tasks of whole dialogues over `input_uri`, from footers and key columns only; with
    rows_per_chunk, each task also lists its chunks (whole dialogues, the unit a stream's
    first stage reads: one Ray Data block each).

    check_schema(empty_table, file_uri) raises InputError for a file whose columns do not fit
    (it sees no rows); extra_keys are further small columns to read per file (e.g. `split`),
    which check_keys(keys_table, file_uri) checks."""
    from .output import file_facts

    files = input_files(input_uri)
    facts, runs, sizes, filled = [], [], [], set()
    seen: set[str] = set()
    schema = None
    for k, uri in enumerate(files):
        fs, path = storage.resolve(uri)
        try:
            meta = pq.read_metadata(path, filesystem=fs)
            file_schema = meta.schema.to_arrow_schema()
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{uri}: not a readable Parquet file ({exc})") from None
        schema = schema or file_schema
        if check_schema is not None:
            check_schema(file_schema.empty_table(), uri)
        filled |= _filled_columns(meta)
        keys = _read_keys(uri, fs, path, extra_keys)
        if check_keys is not None:
            check_keys(keys, uri)
        sizes.append(keys.num_rows)
        facts.append(file_facts(uri, keys.num_rows))
        _dialogue_runs(keys, uri, k, runs, seen)
    tasks = _cut_tasks(runs, files, sizes, rows_per_task, rows_per_chunk)
    return InputPlan(facts, tasks, schema, filled)


def _read_keys(uri: str, fs, path: str, extra: tuple[str, ...]) -> pa.Table:
    columns = list(KEY_COLUMNS) + [c for c in extra]
    try:
        names = pq.read_schema(path, filesystem=fs).names
        keys = pq.read_table(path, filesystem=fs, columns=[c for c in columns if c in names])
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{uri}: its key columns cannot be read ({exc})") from None
    for name in KEY_COLUMNS:
        if name not in keys.column_names:
            raise InputError(f"{uri}: missing column '{name}' (has: {', '.join(names)})")
        if keys.column(name).null_count:
            raise InputError(f"{uri}: column '{name}' has {keys.column(name).null_count} null values")
    try:
        keys.column("utterance_index").cast(pa.int32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{uri}: column 'utterance_index' is not an integer column ({exc})") from None
    return keys


def _filled_columns(meta: pq.FileMetaData) -> set[str]:
    """Columns that hold a non-null value in some row group; a column without statistics counts as filled."""
    filled = set()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            stats = column.statistics
            if stats is None or not stats.has_null_count or stats.null_count < group.num_rows:
                filled.add(column.path_in_schema.split(".")[0])
    return filled


def _dialogue_runs(keys: pa.Table, uri: str, k: int, runs: list, seen: set[str]) -> None:
    """Append (dialogue, file index, first row) for each dialogue that starts in this file."""
    ids = keys.column("dialogue_id").combine_chunks().cast(pa.string())
    ends = pc.run_end_encode(ids).run_ends.to_numpy() if len(ids) else []
    values = ids.to_pylist()
    start = 0
    for end in ends:
        dialogue = values[start]
        if runs and runs[-1][0] == dialogue and start == 0:  # the dialogue goes on from the previous file
            start = int(end)
            continue
        if dialogue in seen:
            raise InputError(
                f"{uri}: column 'dialogue_id': dialogue '{dialogue}' is not contiguous (its rows lie in two places); "
                "each dialogue's rows must be together: sort the table by dialogue_id, as sdt-ray's importers and "
                "`extract` write it"
            )
        seen.add(dialogue)
        runs.append((dialogue, k, start))
        start = int(end)


def _cut_tasks(runs, files, sizes, rows_per_task, rows_per_chunk) -> list[dict]:
    """Group consecutive dialogues into tasks of at least rows_per_task rows (the last may be
    smaller), and each task into chunks of at least rows_per_chunk rows of whole dialogues."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])  # global row of each file's first row
    starts = [int(offsets[k] + row) for _, k, row in runs] + [int(offsets[-1])]
    tasks = []
    for first, end in _groups(starts, 0, len(runs), rows_per_task):
        chunks = [{"offset": starts[a] - starts[first], "rows": starts[b] - starts[a], "slices": _slices(starts[a], starts[b], files, offsets)}
                  for a, b in _groups(starts, first, end, rows_per_chunk)] if rows_per_chunk else []
        tasks.append({"task": len(tasks), "rows": starts[end] - starts[first], "slices": _slices(starts[first], starts[end], files, offsets),
                      "chunks": chunks})
    return tasks


def _groups(starts: list[int], first: int, end: int, rows: int) -> list[tuple[int, int]]:
    """[a, b) runs of consecutive dialogues first..end-1, each closed once it holds `rows` rows."""
    groups, a = [], first
    for d in range(first + 1, end + 1):
        if d == end or starts[d] - starts[a] >= rows:
            groups.append((a, d))
            a = d
    return groups


def _slices(lo: int, hi: int, files: list[str], offsets: np.ndarray) -> list[list]:
    out = []
    for k, file in enumerate(files):
        a, b = max(lo, int(offsets[k])), min(hi, int(offsets[k + 1]))
        if a < b:
            out.append([file, a - int(offsets[k]), b - int(offsets[k])])
    return out


def task_items(tasks: list[dict], todo: list[int]) -> list[dict]:
    """The rows Ray Data carries to a task's first stage, one per task to do (slices as JSON:
    Arrow has no column type for [str, int, int])."""
    return [{"task": tasks[i]["task"], "slices": json.dumps(tasks[i]["slices"])} for i in todo]


def chunk_items(tasks: list[dict], todo: list[int], resume: set[int]) -> list[dict]:
    """One row per chunk of the tasks to do: its task, its first row's place in the task, a job-wide
    chunk id, its slices, and whether its task has fragments of an earlier run to skip."""
    items, chunk = [], 0
    for task in tasks:
        for c in task["chunks"]:
            if task["task"] in todo:
                items.append({"task": task["task"], "offset": c["offset"], "chunk": chunk, "slices": json.dumps(c["slices"]),
                              "resume": task["task"] in resume})
            chunk += 1
    return items


# ---------------------------------------------------------------------------
# Reading a task


class RowGroupCache:
    """The last few row groups read, by (file, group, columns): readers of consecutive chunks
    of one task decode each row group once, not once per chunk."""

    def __init__(self, size: int = 2):
        self.size = size
        self.groups: dict[tuple, pa.Table] = {}

    def get(self, key: tuple, read) -> pa.Table:
        if self.size == 0:
            return read()
        if key not in self.groups:
            if len(self.groups) >= self.size:
                self.groups.pop(next(iter(self.groups)))
            self.groups[key] = read()
        return self.groups[key]


def read_slices(slices: list[list], columns: list[str] | None = None, cache: RowGroupCache | None = None) -> pa.Table:
    """The rows of a task: [file URI, start, stop) ranges, in order, with `columns` only (all
    when None). Rows of a row group that cannot be read come back with their keys, nulls
    elsewhere, and the reason in READ_ERROR (null for every row when all went well)."""
    parts = []
    for uri, start, stop in slices:
        parts += _read_range(uri, start, stop, columns, cache or RowGroupCache(0))
    table = pa.concat_tables(parts, promote_options="permissive")
    if READ_ERROR not in table.column_names:
        table = table.append_column(READ_ERROR, pa.nulls(table.num_rows, pa.string()))
    return table


def content_sha256(table: pa.Table) -> str:
    """SHA-256 of a table's contents as read: its Arrow IPC stream (schema, then the batches),
    which is the same bytes for the same rows read the same way."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def combined_sha256(hashes: list[str]) -> str:
    """One SHA-256 over an ordered list of hashes (a part's chunks, a job's parts)."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def part_input_sha256(table: pa.Table) -> tuple[str, list[int]]:
    """A compacted part's input hash from its rows' INPUT_SHA values (its chunks in offset
    order), and the chunk offsets whose rows came with more than one hash: rows read in two
    runs whose input differed."""
    by_offset: dict[int, set[str]] = {}
    for value in pc.unique(table.column(INPUT_SHA)).to_pylist():
        offset, sha = value.split(":", 1)
        by_offset.setdefault(int(offset), set()).add(sha)
    changed = sorted(o for o, shas in by_offset.items() if len(shas) > 1)
    return combined_sha256([f"{o}:{min(by_offset[o])}" for o in sorted(by_offset)]), changed


def _read_range(uri: str, start: int, stop: int, columns: list[str] | None, cache: RowGroupCache) -> list[pa.Table]:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        names = [c for c in columns if c in parquet.schema_arrow.names] if columns is not None else None
        out, offset = [], 0
        for g in range(parquet.metadata.num_row_groups):
            n = parquet.metadata.row_group(g).num_rows
            a, b = max(start, offset), min(stop, offset + n)
            if a < b:
                group = cache.get((uri, g, tuple(names or ())), lambda: _read_group(parquet, g, names, uri))
                out.append(group.slice(a - offset, b - a))
            offset += n
        return out


def _read_group(parquet: pq.ParquetFile, group: int, columns: list[str] | None, uri: str) -> pa.Table:
    try:
        return parquet.read_row_group(group, columns=columns)
    except (pa.ArrowException, OSError) as exc:  # a corrupt page: keep the rows (keys read alone, as the driver did), say why
        keys = parquet.read_row_group(group, columns=list(KEY_COLUMNS))
        detail = f"{uri}: row group {group}: {str(exc)[:200]}"
        return keys.append_column(READ_ERROR, pa.array([detail] * keys.num_rows, pa.string()))


def number_task(table: pa.Table, task: int, offset: int = 0) -> pa.Table:
    """Sort a task's rows (or a chunk's, whose first row is row `offset` of its task) by
    utterance_index within each dialogue, dialogues in the input's order (they lie together),
    and add `_row` and `_part`."""
    n = table.num_rows
    ids = table.column("dialogue_id").combine_chunks()
    ends = pc.run_end_encode(ids).run_ends.to_numpy() if n else np.zeros(0, np.int64)
    dialogue = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))  # (n,) which dialogue run
    order = np.lexsort((table.column("utterance_index").to_numpy(zero_copy_only=False), dialogue))
    table = table.take(pa.array(order))
    rows = np.arange(offset, offset + n, dtype=np.int64)
    return table.append_column(ROW, pa.array(rows)).append_column(TASK, pa.array(np.full(n, task, np.int32)))


# ---------------------------------------------------------------------------
# Chunks of whole dialogues, for streams whose last stage needs dialogues whole (planned
# by the driver: a stage's yields would be merged into one block, and one block feeds one actor)

CHUNK = "_chunk"  # which chunk of whole dialogues a row travels in
CHUNK_ROWS = "_chunk_rows"  # that chunk's size, to prove at the scorer that it arrived whole


def mark_chunk(table: pa.Table, chunk: int) -> pa.Table:
    """Tag a chunk's rows with its id and size, so the scorer can prove it arrived whole."""
    n = table.num_rows
    table = table.append_column(CHUNK, pa.array(np.full(n, chunk, np.int64)))
    return table.append_column(CHUNK_ROWS, pa.array(np.full(n, n, np.int64)))


def whole_dialogues(rows: np.ndarray, numbered: pa.Table) -> np.ndarray:
    """(n,) bool: rows selected by `rows`, widened to every row of each dialogue they touch
    (a resumed run rescores whole dialogues, never a fragment of one's context)."""
    ids = numbered.column("dialogue_id")
    touched = pc.unique(ids.filter(pa.array(rows)))
    return pc.is_in(ids, value_set=touched).to_numpy(zero_copy_only=False)


def check_whole_chunks(batch: pa.Table) -> None:
    counts = pc.value_counts(batch.column(CHUNK).combine_chunks())
    sizes = dict(zip(batch.column(CHUNK).to_pylist(), batch.column(CHUNK_ROWS).to_pylist()))
    for chunk, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
        if count != sizes[chunk]:
            raise RuntimeError(f"chunk {chunk} reached the scorer with {count} of its {sizes[chunk]} rows: a dialogue would be split")
