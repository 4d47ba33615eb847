"""Scoring whole dialogues into prediction rows: checks, windows, and the output table.

Pure PyTorch and Arrow (no Ray): the pipelines' scoring stages (pipelines/stages.py) map
`DialogueScorer` over groups of whole dialogues. Every input row comes back exactly once; a row that cannot be
scored (a null, NaN or wrong-length vector, a duplicate position, no speaker)
carries `error` and null predictions, and the rest of its dialogue is scored
without it.

Long dialogues: past `max_context` utterances a dialogue is scored in windows of
`max_context` that overlap by half; each utterance keeps the prediction of the
window where it sits furthest from a cut (a dialogue's own start and end are not
cuts: nothing is missing there). A dialogue that fits in one window is scored in
one pass, exactly as without windows.

Causal scoring (`predict --causal`, and every live turn): each utterance is scored from its
dialogue up to itself, the last `max_context` of those turns, and keeps the prediction at its
own (last) position. That is what a live call has seen when the turn is spoken, so a live score
can be checked against a batch one and an archive rescored as it was seen live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .collate import Dialogue, batches, fixed_speaker_ids, relative_speaker_ids
from .config import ModelConfig
from .engine import predict
from .schema import IGNORE_LABEL, feature_column, predictions_table
from .tasks import READ_ERROR


def window_spans(n: int, max_context: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most max_context covering range(n), overlapping by half."""
    if n <= max_context:
        return [(0, n)]
    stride = max(1, max_context // 2)
    starts = list(range(0, n - max_context, stride)) + [n - max_context]
    return [(s, s + max_context) for s in starts]


def causal_spans(n: int, max_context: int) -> list[tuple[int, int]]:
    """[start, end) per position i: the window of at most max_context turns that ends at i."""
    return [(max(0, i + 1 - max_context), i + 1) for i in range(n)]


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
    if READ_ERROR in table.column_names:  # its input rows could not be read (a corrupt page): nothing else to check
        errors[table.column(READ_ERROR).is_valid().to_numpy(zero_copy_only=False)] = "read_error"
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


FULL_CONTEXT = 512  # utterances per window in batch scoring: longer dialogues are cut in overlapping windows
CAUSAL_CONTEXT = 32  # turns a causal (or live) score sees, itself included: `serve` keeps as many per call


class DialogueScorer:
    """Rows of whole dialogues in, one prediction row per input row out."""

    def __init__(self, model, config: ModelConfig, labels: list[str], model_id: str, model_version: str,
                 batch_size: int = 16, max_context: int = FULL_CONTEXT, device: str = "cpu", temperature: float = 1.0,
                 causal: bool = False):
        self.model, self.config, self.labels = model, config, labels
        self.causal = causal  # each utterance from the turns up to itself only (causal_spans)
        self.temperature = temperature  # the checkpoint's calibration: probabilities are softmax(logits / T)
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
            result = predict(self.model, batches(windows, self.batch_size, self.config.max_speakers), self.device, self.temperature)
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
        if self.causal:
            spans = causal_spans(n, self.max_context)
            owner = np.arange(n)  # position i keeps the window that ends at it
        else:
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


@dataclass(frozen=True)
class PredictOptions:
    batch_size: int = 16  # dialogues (or windows of long ones) per forward pass
    max_context: int | None = None  # utterances per window; None: FULL_CONTEXT, or CAUSAL_CONTEXT with `causal`
    causal: bool = False  # each utterance scored from the turns up to itself, as live scoring sees it
    rows_per_file: int = 10_000  # about this many utterances per task and output file (whole dialogues)
    keep_columns: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()  # output columns to split files by: OUTPUT/col=value/part-NNNNN.parquet
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    overwrite: bool = False

    @property
    def context(self) -> int:
        """The window, with its default resolved."""
        if self.max_context is not None:
            return self.max_context
        return CAUSAL_CONTEXT if self.causal else FULL_CONTEXT


def load_scorer(checkpoint_uri: str, options: PredictOptions, model_version: str, threads: int | None) -> DialogueScorer:
    """The checkpoint on this actor's device (GPU when the actor was given one)."""
    import torch

    from .checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() and options.gpus_per_actor > 0 else "cpu"
    loaded = load_checkpoint(checkpoint_uri, device=device)
    return DialogueScorer(loaded.model, loaded.config, loaded.labels, loaded.model_id, model_version,
                          options.batch_size, options.context, device, loaded.temperature, options.causal)


def checkpoint_identity(checkpoint_uri: str) -> tuple[str, str, ModelConfig]:
    """(model_id, model_version, config): the weights' hash, the sdt-ray version that trained
    them, and the model's shape contract."""
    from . import __version__
    from .checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint_uri)
    return loaded.model_id, str(loaded.meta.get("sdt_ray_version", __version__)), loaded.config
