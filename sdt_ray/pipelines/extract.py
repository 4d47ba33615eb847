"""`extract`: utterances table -> features table, all three modalities, on Ray Data.

    input files --(driver: footers and key columns only)--> tasks of whole dialogues
    task items -> [read the task's rows: only the columns the stages need]  reader actors
               -> [audio: decode + openSMILE]                              CPU actors
               -> [frames: decode + face crop]                             CPU actors
               -> [text encoder]                                           model actors (GPU when asked)
               -> [image encoder]                                          model actors (GPU when asked)
               -> fragments (tasks) -> one part file per task (compaction tasks)

The driver never reads text, media URIs or vectors (tasks.py). Every input row comes out
exactly once: a modality that cannot be extracted keeps a null vector and an entry in
`errors`. Finished batches land as fragments at once, so a re-run resumes (output.py).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

from .. import fragments, output, storage
from ..errors import ConfigError, InputError
from ..features.audio import DEFAULT_FEATURE_SET, AudioFeatureStage, feature_set_dim
from ..features.speech import resolve_speech_model, speech_model_dim
from ..features.local_models import check_precision
from ..features.text import TextFeatureStage, resolve_text_model, text_precision
from ..text_card import CARD_METADATA_KEY, TextInput, read_card
from ..features.visual import DEFAULT_FRAMES, FrameStage, VisualFeatureStage, resolve_visual_model
from ..pools import PoolSize, StageDemand
from ..schema import ENCODERS_METADATA_KEY, KEY_FIELDS, LABEL_FIELDS, LABELS_METADATA_KEY, check_splits, feature_column
from ..schema import labels_from_metadata, validate_utterances
from ..session import ray_session, require_shared_storage
from ..tasks import INPUT_SHA, InputPlan, plan_input
from .stages import ReadOptions
from .wiring import check_all_done, compact_parts, describe_pools, pool_sizes, stream_chunks

SUPPORTED_MODALITIES = ("text", "audio", "visual")
MEDIA_COLUMN = {"audio": "audio_uri", "visual": "video_uri"}
MEDIA_COLUMNS = {"audio": ("audio_uri", "start_s", "end_s", "channel"), "visual": ("video_uri", "start_s", "end_s")}
PLAN = "_extract.json"
HEARD_COLUMNS = ("text", "words_from", "asr_logprob", "asr_no_speech")


@dataclass(frozen=True)
class ExtractOptions:
    modalities: tuple[str, ...] = ("text",)
    text_model: str | None = None  # local folder, `minilm`, or an id in the user's own HF cache
    text_max_length: int | None = None  # tokens per input; None: a fine-tuned encoder's own (its card), else 128
    text_precision: str | None = None  # fp32 or bf16; None: a fine-tuned encoder's own (its card), else fp32
    audio_feature_set: str = DEFAULT_FEATURE_SET
    audio_encoder: str | None = None  # a transformers speech model instead of openSMILE (local folder or cached id)
    visual_model: str | None = None  # local folder, an id in the user's HF cache, or `random-vit`
    frames: int = DEFAULT_FRAMES  # frames sampled per utterance
    # Utterances per block handed to the stages (whole dialogues, at least this many), and the
    # resume granularity. The text encoder length-sorts within a block: 64 rows ran one thread at
    # 63 utterances/s, 512 at 136 (MiniLM, MELD texts), from padding alone.
    batch_size: int = 512
    rows_per_file: int = 10_000  # rows per output part file
    actors: int | None = None  # per stage; default: sized from the cluster's resources
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # model stages only
    overwrite: bool = False

    def job_options(self) -> dict:
        """What decides the output's content: a resumed run must agree on these."""
        scale = {"batch_size", "actors", "cpus_per_actor", "gpus_per_actor", "overwrite"}
        return {k: v for k, v in asdict(self).items() if k not in scale}


@dataclass
class ExtractSummary:
    rows_in: int
    rows_out: int
    errors: dict[str, int]  # `modality:reason` -> rows
    output: str
    resumed_rows: int = 0  # rows an earlier run had finished
    seconds: float = 0.0  # wall time of this run
    stats: dict[str, float] = field(default_factory=dict)  # seconds summed over this run's rows
    pools: dict[str, PoolSize] = field(default_factory=dict)  # the actor pools this run used
    nodes: list[str] = field(default_factory=list)  # Ray node ids whose (last stage's) actors extracted rows in this run

    @property
    def extracted_rows(self) -> int:
        return self.rows_in - self.resumed_rows

    def describe(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in self.errors.items()) or "none"
        lines = [
            f"wrote {self.output}: {self.rows_out} rows for {self.rows_in} utterances"
            + (f" ({self.resumed_rows} from an earlier run)" if self.resumed_rows else ""),
            f"errors by kind: {errors}",
            f"throughput: {self.extracted_rows / max(self.seconds, 1e-9):.1f} utterances/s over {self.seconds:.1f} s",
        ]
        audio_s, cpu_s = self.stats.get("_audio_s", 0.0), self.stats.get("_audio_cpu_s", 0.0)
        if audio_s:
            lines.append(
                f"audio: {audio_s:.0f} s, {audio_s / max(self.seconds, 1e-9):.1f} audio s per wall s; "
                f"openSMILE + decode {audio_s / max(cpu_s, 1e-9):.1f}x real time per core"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class PreparedInput:
    """What the driver knows of an utterances table before any work: its tasks, the columns
    each task reads, and the metadata its output carries."""

    plan: InputPlan
    columns: tuple[str, ...]
    metadata: dict[bytes, bytes]
    timing: tuple[str, ...]  # start_s, end_s, channel when the utterances cut media by time; HEARD_COLUMNS for calls
    context: TextInput | None  # a fine-tuned text encoder's input, when it reads the turns around each utterance


def extract(
    input_uri: str,
    output_uri: str,
    options: ExtractOptions = ExtractOptions(),
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> ExtractSummary:
    started = time.time()
    _check_options(options)
    output.check_separate(output_uri, input_uris(input_uri, options))
    require_shared_storage(address, {"--input": input_uri, "--output": output_uri})
    prepared = prepare_input(input_uri, options)
    # Resolving the encoders checks the models and the feature set before any output is written.
    prepared.metadata[ENCODERS_METADATA_KEY] = json.dumps(_encoders(options)).encode()
    tasks = prepared.plan.tasks
    plan = output.Plan("extract", prepared.plan.files, options.job_options(), [t["rows"] for t in tasks])
    plan = output.open_output(output_uri, plan, PLAN, options.overwrite, log)
    run_id = uuid.uuid4().hex[:8]
    with ray_session(address):
        finished = output.finished_parts(output_uri, plan)
        todo = [t["task"] for t in tasks if t["task"] not in finished]
        resumed = _resumed_rows(output_uri, plan, finished)
        pools, nodes = _run_stages(prepared, todo, output_uri, options, run_id, resumed, log) if todo else ({}, [])
        metadata = prepared.metadata
        stats = compact_parts(output_uri, plan, lambda p: fragments.write_features_part(output_uri, p, metadata), run_id)
    done = check_all_done(output_uri, plan)
    storage.delete(storage.join(output_uri, fragments.FRAGMENTS))
    output.complete(output_uri, plan, PLAN, done)
    rows_out = sum(m["rows"] for m in done.values())
    return ExtractSummary(plan.rows, rows_out, output.summed(done.values(), "errors"), output_uri, resumed,
                          time.time() - started, stats, pools, nodes)


def _resumed_rows(output_uri: str, plan: output.Plan, finished: dict) -> int:
    """Rows an earlier run finished: whole parts, and rows in the fragments of the others
    (a crash leaves at most the batches in flight there: a few row ids to read)."""
    rows = sum(plan.part_rows[p] for p in finished)
    for part in fragments.fragment_parts(output_uri):
        if part not in finished:
            rows += int(fragments.done_rows(output_uri, part, plan.part_rows[part]).sum())
    return rows


def input_uris(input_uri: str, options: ExtractOptions) -> dict[str, str | None]:
    """What extraction reads, for keeping the output apart from it: the table and a local text model."""
    local = options.text_model if options.text_model and os.path.isdir(options.text_model) else None
    return {"--input": input_uri, "--text-model": local}


def _check_options(options: ExtractOptions) -> None:
    unsupported = [m for m in options.modalities if m not in SUPPORTED_MODALITIES]
    if unsupported or not options.modalities:
        raise ConfigError(f"unknown modalities {unsupported}; choose from {list(SUPPORTED_MODALITIES)}")
    counts = {"--rows-per-file": options.rows_per_file, "--batch-size": options.batch_size, "--frames": options.frames}
    for flag, value in counts.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if options.text_precision is not None:
        check_precision(options.text_precision, "--text-precision")
    if options.cpus_per_actor <= 0 or options.gpus_per_actor < 0 or (options.actors is not None and options.actors < 1):
        raise ConfigError("--cpus-per-actor must be positive, --gpus-per-actor not negative, --actors at least 1")


def prepare_input(input_uri: str, options: ExtractOptions, keep_columns: tuple[str, ...] = ()) -> PreparedInput:
    """The utterances table's tasks and checks, from footers and key columns: missing or
    mistyped columns, null keys, split values and non-contiguous dialogues are one InputError
    naming the file and the column."""

    def check_schema(empty, uri):
        validate_utterances(empty, uri)
        for modality, column in MEDIA_COLUMN.items():
            if modality in options.modalities and column not in empty.column_names:
                raise InputError(f"{uri}: {modality} extraction needs a '{column}' column (has: {', '.join(empty.column_names)})")
        missing = [c for c in keep_columns if c not in empty.column_names]
        if missing:
            raise ConfigError(f"--keep-columns {missing} are not in {uri} (has: {', '.join(empty.column_names)})")

    plan = plan_input(input_uri, options.rows_per_file, check_schema, extra_keys=("split",), check_keys=check_splits,
                      rows_per_chunk=options.batch_size)
    labels = labels_from_metadata(plan.schema)
    metadata = {LABELS_METADATA_KEY: json.dumps(labels).encode()} if labels else {}
    card = read_card(resolve_text_model(options.text_model)) if "text" in options.modalities else None
    if card is not None:  # a fine-tuned encoder: its card travels into the features table
        metadata[CARD_METADATA_KEY] = card.to_json().encode()
    spec = card.text_input() if card is not None else None
    context = spec if spec is not None and spec.has_context else None
    timing = _timing_columns(plan)
    columns = [f.name for f in KEY_FIELDS + LABEL_FIELDS] + (["text"] if "text" in options.modalities or context else [])
    for modality in options.modalities:
        columns += MEDIA_COLUMNS.get(modality, ())
    columns = tuple(dict.fromkeys(columns + list(timing) + list(keep_columns)))
    return PreparedInput(plan, columns, metadata, timing, context)


def _timing_columns(plan: InputPlan) -> tuple[str, ...]:
    """start_s, end_s, channel travel into the features table when the utterances cut media
    by time (calls, meetings), and HEARD_COLUMNS when they hold words of calls, so predictions can keep them (`--keep-columns`) and reports
    can draw turns over time; decided from the footers' statistics of every file, so every
    part has the same columns."""
    cut = "start_s" in plan.schema.names and "start_s" in plan.filled
    # Calls with words (a transcript or the recogniser): the words and the recogniser's
    # confidence travel too, for the report's per-call pages.
    heard = "words_from" in plan.schema.names and "words_from" in plan.filled
    return (("start_s", "end_s", "channel") if cut else ()) + (HEARD_COLUMNS if heard else ())


def _encoders(options: ExtractOptions) -> dict[str, str]:
    """What made each vector, for the features table's metadata."""
    described = {
        "text": lambda: _describe_text_model(options.text_model, options.text_precision),
        "audio": lambda: (
            f"{resolve_speech_model(options.audio_encoder)} (mean of last hidden states, {speech_model_dim(options.audio_encoder)})"
            if options.audio_encoder
            else f"opensmile {options.audio_feature_set} functionals ({feature_set_dim(options.audio_feature_set)})"
        ),
        "visual": lambda: f"{resolve_visual_model(options.visual_model)} (mean of {options.frames} face crops)",
    }
    return {m: described[m]() for m in options.modalities}


def _describe_text_model(model: str | None, precision: str | None) -> str:
    path = resolve_text_model(model)
    card = read_card(path)
    precision = text_precision(precision, card)
    return (f"{path} ({card.summary()})" if card else path) + (f", computed in {precision}" if precision != "fp32" else "")


def _stage_demands(options: ExtractOptions) -> list[tuple[StageDemand, type, dict]]:
    """(demand, stage class, constructor kwargs) in pipeline order."""
    cpu, gpu = options.cpus_per_actor, options.gpus_per_actor
    stages = []
    if "audio" in options.modalities:
        if options.audio_encoder:  # a torch model: GPUs help, and it takes the actor's CPUs as threads
            stages.append((StageDemand("audio", cpu, gpu, weight=3.0), AudioFeatureStage, {"speech_model": options.audio_encoder}))
        else:
            stages.append((StageDemand("audio", cpu, weight=3.0), AudioFeatureStage, {"feature_set": options.audio_feature_set}))
    if "visual" in options.modalities:
        frames = {"model": options.visual_model, "frames": options.frames}
        stages.append((StageDemand("frames", cpu, weight=3.0), FrameStage, frames))
    if "text" in options.modalities:
        text = {"model": options.text_model, "max_length": options.text_max_length, "precision": options.text_precision}
        stages.append((StageDemand("text", cpu, gpu), TextFeatureStage, text))
    if "visual" in options.modalities:
        stages.append((StageDemand("visual", cpu, gpu), VisualFeatureStage, {"model": options.visual_model}))
    return stages


def _run_stages(prepared: PreparedInput, todo: list[int], output_uri: str, options: ExtractOptions, run_id: str,
                resumed: int, log) -> tuple[dict[str, PoolSize], list[str]]:
    stages = _stage_demands(options)
    sizes = pool_sizes([demand for demand, _, _ in stages], options.actors)
    pending = sum(prepared.plan.tasks[t]["rows"] for t in todo)
    log(
        f"extracting {'+'.join(options.modalities)} for {pending} utterances in {len(todo)} tasks"
        + (f" ({resumed} done by an earlier run)" if resumed else "")
        + f"; pools: {describe_pools(sizes)}"
    )
    read = ReadOptions(prepared.columns, output_uri, modalities=options.modalities, context=prepared.context)
    columns = _fragment_columns(options.modalities, prepared.timing)
    return sizes, stream_chunks(prepared.plan.tasks, todo, read, stages, sizes, output_uri, run_id, columns)


def _fragment_columns(modalities: tuple[str, ...], timing: list[str] = ()) -> list[str]:
    names = [f.name for f in KEY_FIELDS + LABEL_FIELDS] + list(timing)
    names += [feature_column(m) for m in SUPPORTED_MODALITIES if m in modalities] + ["errors", fragments.ROW, fragments.PART, INPUT_SHA]
    return names + (list(fragments.STATS_COLUMNS) if "audio" in modalities else [])
