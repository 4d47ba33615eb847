"""Scoring whole dialogues into prediction rows: checks, windows, and the output table.

Pure PyTorch and Arrow (no Ray): pipelines.py maps `DialogueScorer` over groups of
whole dialogues. Every input row comes back exactly once; a row that cannot be
scored (a null, NaN or wrong-length vector, a duplicate position, no speaker)
carries `error` and null predictions, and the rest of its dialogue is scored
without it.

Long dialogues: past `max_context` utterances a dialogue is scored in windows of
`max_context` that overlap by half; each utterance keeps the prediction of the
window where it sits furthest from a cut (a dialogue's own start and end are not
cuts: nothing is missing there). A dialogue that fits in one window is scored in
one pass, exactly as without windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .collate import Dialogue, batches, fixed_speaker_ids, relative_speaker_ids
from .config import ModelConfig
from .engine import predict
from .losses import IGNORE_LABEL
from .schema import feature_column, predictions_schema, predictions_table


def window_spans(n: int, max_context: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most max_context covering range(n), overlapping by half."""
    if n <= max_context:
        return [(0, n)]
    stride = max(1, max_context // 2)
    starts = list(range(0, n - max_context, stride)) + [n - max_context]
    return [(s, s + max_context) for s in starts]


def best_window(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    """(n,) index of the window where each position is furthest from a cut."""
    best = np.zeros(n, dtype=np.int64)
    margin = np.full(n, -1.0)
    positions = np.arange(n)
    for w, (start, end) in enumerate(spans):
        inside = positions[start:end].astype(float)
        left = np.full(len(inside), np.inf) if start == 0 else inside - start
        right = np.full(len(inside), np.inf) if end == n else end - 1 - inside
        distance = np.minimum(left, right)
        better = distance > margin[start:end]
        best[start:end][better] = w
        margin[start:end][better] = distance[better]
    return best


@dataclass
class RowChecks:
    """Per row of a dialogue-sorted table: the reason it cannot be scored, or None; which
    modalities it has; and each modality's vectors for the rows that have them (read once)."""

    errors: list[str | None]
    vectors: dict[str, tuple[np.ndarray, np.ndarray]]  # modality -> (row indices (k,), values (k, D))
    present: dict[str, np.ndarray]  # modality -> (n,) bool

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)

    def matrix(self, modality: str, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) vectors of `rows`; zeros where a row lacks the modality (it is masked)."""
        have, values = self.vectors[modality]
        at = np.minimum(np.searchsorted(have, rows), max(len(have) - 1, 0))
        found = (have[at] == rows) if len(have) else np.zeros(len(rows), dtype=bool)
        out = np.zeros((len(rows), values.shape[1]), dtype=np.float32)
        out[found] = values[at[found]]
        return out

    def used(self, modalities: tuple[str, ...]) -> list[list[str] | None]:
        """Per row, the modalities it is scored with (None for rows with an error)."""
        return [
            [m for m in modalities if self.present[m][i]] if error is None else None
            for i, error in enumerate(self.errors)
        ]


def check_rows(table: pa.Table, config: ModelConfig) -> RowChecks:
    """Input rows sorted by (dialogue_id, utterance_index); the first failing check wins.

    A modality that a row lacks (a null vector, failed extraction, no such column) is absent
    and masked in the model; a row lacking all of them is an error with the first reason.
    A vector that is there but broken (wrong size, NaN) is an error: bad data, not absence."""
    n = table.num_rows
    errors = np.full(n, None, dtype=object)
    ids = table.column("dialogue_id").combine_chunks()
    positions = table.column("utterance_index").to_numpy()
    repeated = np.zeros(n, dtype=bool)  # same dialogue and position as the row before
    if n > 1:
        same_dialogue = pc.equal(ids.slice(1), ids.slice(0, n - 1)).fill_null(False).to_numpy(zero_copy_only=False)
        repeated[1:] = same_dialogue & (positions[1:] == positions[:-1])
    errors[repeated] = "duplicate_utterance_index"
    errors[table.column("speaker").is_null().to_numpy(zero_copy_only=False)] = "null_speaker"
    vectors, present = {}, {}
    why_absent = np.full(n, None, dtype=object)
    for modality, dim in zip(config.modalities, config.input_dims):
        absent, broken, vectors[modality] = _vector_problems(table, modality, dim)
        errors = np.where((errors == None) & (broken != None), broken, errors)  # noqa: E711 (elementwise)
        why_absent = np.where((why_absent == None) & (absent != None), absent, why_absent)  # noqa: E711
        present[modality] = (absent == None) & (broken == None)  # noqa: E711
    nothing = ~np.logical_or.reduce(list(present.values()))
    errors = np.where((errors == None) & nothing, why_absent, errors)  # noqa: E711
    return RowChecks(errors.tolist(), vectors, present)


def _extraction_reasons(table: pa.Table, modality: str, rows: np.ndarray) -> list[str | None]:
    """For `rows`, `modality:reason` from the features table's `errors` (e.g. `audio:decode_error`)."""
    if "errors" not in table.column_names:
        return [None] * len(rows)
    reasons: list[str | None] = []
    for entries in table.column("errors").take(pa.array(rows, pa.int64())).to_pylist():
        found = [e["reason"] for e in entries or [] if e["modality"] == modality]
        reasons.append(f"{modality}:{found[0]}" if found else None)
    return reasons


def _vector_problems(
    table: pa.Table, modality: str, dim: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Per row (n,): why the modality is absent, or None; why its vector is broken, or None;
    and (rows, values) of the rows whose vectors are whole and finite."""
    n = table.num_rows
    name = feature_column(modality)
    absent = np.full(n, None, dtype=object)
    broken = np.full(n, None, dtype=object)
    if name not in table.column_names:
        absent[:] = f"no_{modality}_features"
        return absent, broken, (np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
    column = table.column(name)
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    null = np.flatnonzero(lengths < 0)
    if len(null):  # why extraction left a vector null, when it says so
        reasons = _extraction_reasons(table, modality, null)
        absent[null] = [r or f"null_{modality}_features" for r in reasons]
    for length in np.unique(lengths[(lengths >= 0) & (lengths != dim)]):
        broken[lengths == length] = f"{modality}_features_dim_{length}_not_{dim}"
    rows = np.flatnonzero(lengths == dim)
    values = _matrix(column, rows, dim) if len(rows) else np.zeros((0, dim), np.float32)  # (k, dim)
    finite = np.isfinite(values).all(axis=1)
    broken[rows[~finite]] = f"non_finite_{modality}_features"
    return absent, broken, (rows[finite], values[finite])


def _matrix(column: pa.ChunkedArray, rows: np.ndarray, dim: int) -> np.ndarray:
    """(len(rows), dim) float32 from a list or fixed-size-list column (rows known to have dim values)."""
    taken = column.take(pa.array(rows)).combine_chunks()
    return taken.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(rows), dim)


class DialogueScorer:
    """Rows of whole dialogues in, one prediction row per input row out."""

    def __init__(self, model, config: ModelConfig, labels: list[str], model_id: str, model_version: str,
                 batch_size: int = 16, max_context: int = 512, device: str = "cpu"):
        self.model, self.config, self.labels = model, config, labels
        self.model_id, self.model_version = model_id, model_version
        self.batch_size = batch_size  # dialogues (windows) per forward pass
        self.max_context = min(max_context, config.max_len)
        self.device = device

    def __call__(self, table: pa.Table, keep_columns: list[str] = ()) -> pa.Table:
        table = table.sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
        checks = check_rows(table, self.config)
        windows, owners = self._windows(table, checks)
        n_classes = len(self.labels)
        probabilities = np.full((table.num_rows, n_classes), np.nan, dtype=np.float32)
        weights = np.full((table.num_rows, len(self.config.modalities)), np.nan, dtype=np.float32)
        if windows:
            result = predict(self.model, batches(windows, self.batch_size, self.config.max_speakers), self.device)
            keys = {(d, int(p)): k for k, (d, p) in enumerate(zip(result.dialogue_ids, result.positions))}
            for row, (window_id, position) in owners.items():
                k = keys[(window_id, position)]
                probabilities[row] = result.probabilities[k]
                weights[row] = result.modality_weights[k]
        return predictions_table(
            table, probabilities, weights, checks.errors, self.labels, self.config.modalities,
            self.model_id, self.model_version, keep_columns, checks.used(self.config.modalities),
        )

    def _windows(self, table: pa.Table, checks: RowChecks) -> tuple[list[Dialogue], dict[int, tuple[str, int]]]:
        """Scorable rows of each dialogue cut into windows; row -> (window id, position) that scores it."""
        ok = checks.ok
        ids = table.column("dialogue_id").combine_chunks()
        ends = pc.run_end_encode(ids).run_ends.to_numpy() if len(ids) else []
        ids = ids.to_pylist()
        speakers = table.column("speaker").to_pylist()
        windows: list[Dialogue] = []
        owners: dict[int, tuple[str, int]] = {}
        start = 0
        for end in ends:
            rows = start + np.flatnonzero(ok[start:end])
            if len(rows):
                self._cut(ids[start], rows, speakers, checks, windows, owners)
            start = int(end)
        return windows, owners

    def _cut(self, dialogue_id, rows: np.ndarray, speakers, checks: RowChecks, windows, owners) -> None:
        n = len(rows)
        speaker_ids = self._speaker_ids([speakers[r] for r in rows])
        spans = window_spans(n, self.max_context)
        owner = best_window(spans, n)
        for w, (s, e) in enumerate(spans):
            window_id = f"{dialogue_id}#{w}"
            feats = {m: checks.matrix(m, rows[s:e]) for m in self.config.modalities}
            present = {m: checks.present[m][rows[s:e]] for m in self.config.modalities}
            labels = np.full(e - s, IGNORE_LABEL, np.int64)
            windows.append(Dialogue(window_id, feats, speaker_ids[s:e], labels, present))
            for i in range(s, e):
                if owner[i] == w:
                    owners[int(rows[i])] = (window_id, i - s)

    def _speaker_ids(self, names: list[str]) -> np.ndarray:
        """Relative ids follow order of appearance in the whole dialogue, so every window of a
        long call calls the same person by the same id."""
        if self.config.speaker_mode == "fixed":
            return fixed_speaker_ids(names, self.config.speaker_names, self.config.max_speakers)
        return relative_speaker_ids(names, self.config.max_speakers)



# ---------------------------------------------------------------------------
# The scoring job's pieces that need no Ray: options, task planning, output files.

PREDICT_PLAN = "_predict.json"


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 16  # dialogues (or windows of long ones) per forward pass
    max_context: int = 512  # utterances per window; longer dialogues are scored in overlapping windows
    rows_per_file: int = 10_000  # about this many utterances per task and output file (whole dialogues)
    keep_columns: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()  # output columns to split files by: OUTPUT/col=value/part-NNNNN.parquet
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    overwrite: bool = False


@dataclass
class PredictSummary:
    rows_in: int
    rows_out: int
    labels: dict[str, int]
    errors: dict[str, int]
    output: str
    seconds: float
    skipped_files: int = 0
    modalities: dict[str, int] = field(default_factory=dict)  # "text+audio" -> scored rows

    def describe(self) -> str:
        labels = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items(), key=lambda kv: -kv[1])) or "none"
        errors = ", ".join(f"{k}: {v}" for k, v in self.errors.items()) or "none"
        return "\n".join([
            f"wrote {self.output}: {self.rows_out} rows for {self.rows_in} utterances"
            + (f" ({self.skipped_files} files from an earlier run)" if self.skipped_files else ""),
            f"predicted: {labels}",
            "scored with: " + (", ".join(f"{k} {v}" for k, v in sorted(self.modalities.items(), key=lambda kv: -kv[1])) or "none"),
            f"errors by kind: {errors}",
            f"throughput: {self.rows_in / max(self.seconds, 1e-9):.0f} utterances/s over {self.seconds:.1f} s",
        ])


def check_columns(input_uri: str, options: PredictOptions) -> None:
    """--keep-columns must be input columns and --partition-by output columns, before any work starts."""
    from . import storage
    from .errors import ConfigError

    names = storage.read_head(input_uri, 1).column_names
    missing = [c for c in options.keep_columns if c not in names]
    if missing:
        raise ConfigError(f"--keep-columns {missing} are not in {input_uri} (has: {', '.join(names)})")
    taken = [c for c in options.keep_columns if c in predictions_schema(["x"], ("text",)).names]
    if taken:
        raise ConfigError(f"--keep-columns {taken}: the output already has columns of that name (the gold label cannot be kept as 'label')")
    allowed = {"dialogue_id", "speaker", "label", "error", "model_id", "model_version", *options.keep_columns}
    unknown = [c for c in options.partition_by if c not in allowed]
    if unknown:
        raise ConfigError(f"--partition-by {unknown}: choose among {sorted(allowed)} (add input columns with --keep-columns)")


def checkpoint_identity(checkpoint_uri: str) -> tuple[str, str, ModelConfig]:
    """(model_id, model_version, config): the weights' hash, the sdt-ray version that trained
    them, and the model's shape contract."""
    from . import __version__
    from .checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint_uri)
    return loaded.model_id, str(loaded.meta.get("sdt_ray_version", __version__)), loaded.config


def scoring_tasks(input_uri: str, rows_per_task: int) -> list[dict]:
    """Cut the input into tasks of whole dialogues, reading only `dialogue_id`.

    A task is {"task": i, "rows": n, "slices": [[file, start, stop], ...]}: row ranges of the
    input files in order; a dialogue that crosses a file boundary stays in one task.
    The input must keep each dialogue's rows together (as `extract` writes them).
    """
    import pyarrow.dataset as pads

    from . import storage
    from .errors import InputError

    fs, path = storage.resolve(input_uri)
    files = sorted(pads.dataset(path, filesystem=fs, format="parquet").files) if storage.exists(input_uri) else []
    if not files:
        raise InputError(f"{input_uri}: no Parquet files to score")
    runs: list[tuple[str, int, int]] = []  # (dialogue, file index, row) at each dialogue start
    sizes: list[int] = []  # rows per file
    seen: set[str] = set()
    for k, file in enumerate(files):
        ids = pads.dataset(file, filesystem=fs, format="parquet").to_table(columns=["dialogue_id"]).column(0).combine_chunks()
        sizes.append(len(ids))
        ends = pc.run_end_encode(ids).run_ends.to_numpy() if len(ids) else []
        values = ids.to_pylist()
        start = 0
        for end in ends:
            dialogue = values[start]
            if runs and runs[-1][0] == dialogue and start == 0:
                start = int(end)
                continue  # the dialogue goes on from the previous file
            if dialogue in seen:
                raise InputError(
                    f"{input_uri}: dialogue '{dialogue}' is not contiguous; scoring needs each dialogue's rows "
                    "together (sort the table by dialogue_id, as `sdt-ray extract` writes it)"
                )
            seen.add(dialogue)
            runs.append((dialogue, k, start))
            start = int(end)
    uris = [f"s3://{f}" if storage.is_remote(input_uri) else f for f in files]
    return _cut_tasks(runs, uris, sizes, rows_per_task)


def _cut_tasks(runs, files, sizes, rows_per_task) -> list[dict]:
    """Group consecutive dialogues into tasks of at least rows_per_task rows (the last may be smaller)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])  # global row of each file's first row
    starts = [int(offsets[k] + row) for _, k, row in runs] + [int(offsets[-1])]
    tasks, first = [], 0
    for d in range(1, len(runs) + 1):
        if d == len(runs) or starts[d] - starts[first] >= rows_per_task:
            tasks.append({"task": len(tasks), "rows": starts[d] - starts[first], "slices": _slices(starts[first], starts[d], files, offsets)})
            first = d
    return tasks


def _slices(lo: int, hi: int, files: list[str], offsets: np.ndarray) -> list[list]:
    out = []
    for k, file in enumerate(files):
        a, b = max(lo, int(offsets[k])), min(hi, int(offsets[k + 1]))
        if a < b:
            out.append([file, a - int(offsets[k]), b - int(offsets[k])])
    return out


def read_slices(slices: list[list]) -> pa.Table:
    """The rows of a task: [file URI, start, stop) ranges, in order."""
    import pyarrow.parquet as pq

    from . import storage

    parts = []
    for uri, start, stop in slices:
        fs, path = storage.resolve(uri)
        parts.append(pq.read_table(path, filesystem=fs).slice(start, stop - start))
    return pa.concat_tables(parts, promote_options="permissive")


DONE = "_done"  # OUTPUT/_done/part-NNNNN.parquet: an empty marker once a task's files are all written


def write_task(scored: pa.Table, output_uri: str, task: int, partition_by: tuple[str, ...]) -> None:
    """The task's rows as part-NNNNN.parquet, or one such file per partition folder
    (col=value/..., Hive style), then the task's done marker."""
    from . import storage

    name = _part_name(task)
    if not partition_by:
        storage.write_table(scored, storage.join(output_uri, name))
    else:
        keys = [scored.column(c).cast(pa.string()).to_pylist() for c in partition_by]
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(*keys)):
            groups.setdefault(key, []).append(i)
        for key, rows in sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]]):
            folders = [f"{c}={_partition_value(v)}" for c, v in zip(partition_by, key)]
            storage.write_table(scored.take(pa.array(rows)), storage.join(output_uri, *folders, name))
    storage.write_text(storage.join(output_uri, DONE, name), "")


def _partition_value(value: str | None) -> str:
    if value is None:
        return "__null__"  # unscored rows have no label
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)


def _part_name(task: int) -> str:
    return f"part-{task:05d}.parquet"


def prepare_output(output_uri: str, input_uri: str, model_id: str, tasks: list[dict], options: PredictOptions, log) -> list[int]:
    """Task indices still to write. A finished output is refused (or replaced with overwrite);
    an unfinished one with the same input, model and options is resumed."""
    import hashlib
    import json

    from . import storage
    from .errors import InputError

    plan = {
        "input": input_uri, "model_id": model_id, "tasks": len(tasks), "rows": sum(t["rows"] for t in tasks),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.__dict__.items() if k in ("max_context", "rows_per_file", "keep_columns", "partition_by")},
    }
    plan["fingerprint"] = hashlib.sha256(json.dumps([plan, [t["slices"] for t in tasks]], sort_keys=True).encode()).hexdigest()[:32]
    plan_uri = storage.join(output_uri, PREDICT_PLAN)
    if storage.exists(output_uri) and not options.overwrite:
        previous = json.loads(storage.read_text(plan_uri)) if storage.exists(plan_uri) else None
        if previous is None or previous.get("complete"):
            raise InputError(f"{output_uri} already exists; pass --overwrite to replace it")
        if previous["fingerprint"] != plan["fingerprint"]:
            raise InputError(f"{output_uri} holds an unfinished scoring of other input, model or options; pass --overwrite")
        done = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(output_uri, DONE))}
        todo = [t["task"] for t in tasks if _part_name(t["task"]) not in done]
        log(f"resuming {output_uri}: {len(tasks) - len(todo)} of {len(tasks)} files already written")
        return todo
    storage.delete(output_uri)
    storage.write_text(plan_uri, json.dumps(plan, indent=2))
    return [t["task"] for t in tasks]


def mark_complete(output_uri: str) -> None:
    import json

    from . import storage

    plan_uri = storage.join(output_uri, PREDICT_PLAN)
    plan = json.loads(storage.read_text(plan_uri))
    plan["complete"] = True
    storage.write_text(plan_uri, json.dumps(plan, indent=2))


def predict_summary(output_uri: str, rows_in: int, seconds: float, skipped: int) -> PredictSummary:
    from . import storage
    from .errors import InputError

    table = storage.read_table(output_uri, columns=["label", "error", "modalities_used"])
    if table.num_rows != rows_in:
        raise InputError(f"scoring wrote {table.num_rows} rows for {rows_in} input utterances")
    labels = _counts(table.column("label"))
    errors = _counts(table.column("error"))
    used = pc.binary_join(table.column("modalities_used"), "+")
    return PredictSummary(rows_in, table.num_rows, labels, errors, output_uri, seconds, skipped, _counts(used))


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def task_items(tasks: list[dict], todo: list[int]) -> list[dict]:
    """The rows Ray Data carries to ScoreStage, one per task to do."""
    return [{"task": tasks[i]["task"], "slices": json.dumps(tasks[i]["slices"])} for i in todo]


def load_scorer(checkpoint_uri: str, options: PredictOptions, model_version: str, threads: int | None) -> DialogueScorer:
    """The checkpoint on this actor's device (GPU when the actor was given one)."""
    import torch

    from .checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() and options.gpus_per_actor > 0 else "cpu"
    loaded = load_checkpoint(checkpoint_uri, device=device)
    return DialogueScorer(loaded.model, loaded.config, loaded.labels, loaded.model_id, model_version,
                          options.batch_size, options.max_context, device)


class ScoreStage:
    """One task (whole dialogues) per call: read its rows, score, write its part file.

    Loads the checkpoint once per actor. Returns one summary row per task."""

    def __init__(self, checkpoint_uri: str, output_uri: str, options: PredictOptions, model_version: str, threads: int | None = None):
        self.scorer = load_scorer(checkpoint_uri, options, model_version, threads)
        self.output_uri = output_uri
        self.keep_columns = list(options.keep_columns)
        self.partition_by = tuple(options.partition_by)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = 0
        for task, slices in zip(batch.column("task").to_pylist(), batch.column("slices").to_pylist()):
            slices = json.loads(slices)  # JSON in transit: Arrow has no column type for [str, int, int]
            table = read_slices(slices)
            scored = self.scorer(table, self.keep_columns)
            write_task(scored, self.output_uri, task, self.partition_by)
            rows += scored.num_rows
        return pa.table({"rows": [rows]})


# ---------------------------------------------------------------------------
# predict --extract: utterances stream through the extraction stages into the scorer.
# The stream's blocks are chunks of whole dialogues; every stage takes a block as
# its batch, so a dialogue reaches the scorer whole. Scored rows land as fragments
# (fragments.py) and are merged into part files at the end, so a killed job resumes.

CHUNK = "_chunk"  # which chunk of whole dialogues a row travels in
CHUNK_ROWS = "_chunk_rows"  # that chunk's size, to prove at the scorer that it arrived whole


def dialogue_chunks(numbered: pa.Table, rows_per_chunk: int) -> list[pa.Table]:
    """Consecutive whole dialogues of a (dialogue_id, utterance_index)-sorted table, cut after
    each dialogue that brings a chunk to rows_per_chunk rows (a longer dialogue is a chunk alone)."""
    if numbered.num_rows == 0:
        return []
    ids = numbered.column("dialogue_id").combine_chunks()
    ends = pc.run_end_encode(ids).run_ends.to_numpy()  # row after each dialogue
    bounds, start = [], 0
    for end in ends:
        if end - start >= rows_per_chunk or end == numbered.num_rows:
            bounds.append((start, int(end)))
            start = int(end)
    chunks = []
    for k, (a, b) in enumerate(bounds):
        chunk = numbered.slice(a, b - a)
        chunk = chunk.append_column(CHUNK, pa.array(np.full(b - a, k, np.int64)))
        chunks.append(chunk.append_column(CHUNK_ROWS, pa.array(np.full(b - a, b - a, np.int64))))
    return chunks


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


class StreamScoreStage:
    """Extracted rows (whole dialogues) in, prediction rows out, carrying `_row`, `_part`
    and the extraction `errors` for the fragment writer."""

    def __init__(self, checkpoint_uri: str, options: PredictOptions, model_version: str, carry: list[str], threads: int | None = None):
        self.scorer = load_scorer(checkpoint_uri, options, model_version, threads)
        self.keep_columns = list(options.keep_columns) + list(carry)

    def __call__(self, batch: pa.Table) -> pa.Table:
        check_whole_chunks(batch)
        return self.scorer(batch, self.keep_columns)


def compact_scored_part(output_uri: str, plan, part: int, partition_by: tuple[str, ...], carried: list[str]) -> int:
    """Merge a part's scored fragments into its file(s) and done marker; returns rows written."""
    from . import fragments, storage

    uris = fragments.part_fragments(output_uri, part)
    if not storage.exists(storage.join(output_uri, DONE, _part_name(part))):
        table = fragments.merge_fragments([storage.read_table(u) for u in uris], plan, part, output_uri)
        write_task(table.drop_columns(carried), output_uri, part, partition_by)
    for uri in uris:
        storage.delete(uri)
    return len(uris)
