"""Ray Data jobs. `extract`: utterances table -> features table, all three modalities.

    rows (driver, numbered) -> [audio: decode + openSMILE]  CPU actors
                            -> [frames: decode + face crop]   CPU actors
                            -> [text encoder]                  model actors (GPU when asked)
                            -> [image encoder]                 model actors (GPU when asked)
                            -> fragments (tasks) -> part files (compaction tasks)

Every input row comes out exactly once: a modality that cannot be extracted
keeps a null vector and an entry in `errors`. Finished batches land as
fragments at once, so a re-run resumes (fragments.py).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from . import fragments, storage
from .errors import ConfigError, InputError
from .features.audio import DEFAULT_FEATURE_SET, AudioFeatureStage, feature_set_dim
from .features.speech import resolve_speech_model, speech_model_dim
from .features.text import TextFeatureStage, resolve_text_model, text_model_dim
from .features.text_card import CARD_METADATA_KEY, CONTEXT_COLUMN, context_texts, read_card
from .features.visual import DEFAULT_FRAMES, FrameStage, VisualFeatureStage, resolve_visual_model
from .pools import PoolSize, StageDemand, size_pools
from .scoring import (
    DONE,
    PREDICT_PLAN,
    PredictOptions,
    PredictSummary,
    ScoreStage,
    StreamScoreStage,
    check_columns,
    checkpoint_identity,
    compact_scored_part,
    dialogue_chunks,
    mark_complete,
    predict_summary,
    prepare_output,
    scoring_tasks,
    task_items,
    whole_dialogues,
)
from .schema import (
    ENCODERS_METADATA_KEY,
    LABELS_METADATA_KEY,
    KEY_FIELDS,
    LABEL_FIELDS,
    error_counts,
    feature_column,
    labels_from_metadata,
    validate_utterances,
)
from .submit import ray_session, require_shared_storage

SUPPORTED_MODALITIES = ("text", "audio", "visual")
MEDIA_COLUMN = {"audio": "audio_uri", "visual": "video_uri"}
WRITER_CPUS = 0.25  # fragment writes and compaction are I/O: a quarter CPU each


@dataclass(frozen=True)
class ExtractOptions:
    modalities: tuple[str, ...] = ("text",)
    text_model: str | None = None  # local folder, `minilm`, or an id in the user's own HF cache
    text_max_length: int = 128  # tokens
    audio_feature_set: str = DEFAULT_FEATURE_SET
    audio_encoder: str | None = None  # a transformers speech model instead of openSMILE (local folder or cached id)
    visual_model: str | None = None  # local folder, an id in the user's HF cache, or `random-vit`
    frames: int = DEFAULT_FRAMES  # frames sampled per utterance
    batch_size: int = 64  # utterances per batch handed to a stage
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


def extract(
    input_uri: str,
    output_uri: str,
    options: ExtractOptions = ExtractOptions(),
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> ExtractSummary:
    started = time.time()
    _check_options(options)
    require_shared_storage(address, {"--input": input_uri, "--output": output_uri})
    table, metadata = _read_input(input_uri, options)
    # Resolving the encoders checks the models and the feature set before any output is written.
    metadata[ENCODERS_METADATA_KEY] = json.dumps(_encoders(options)).encode()
    numbered = fragments.number_rows(table, options.rows_per_file)
    plan = _open_plan(output_uri, input_uri, numbered, options.job_options(), options.rows_per_file, options.overwrite, log)
    done = fragments.done_rows(output_uri, plan)
    pending = numbered.filter(pa.array(~done))
    run_id = uuid.uuid4().hex[:8]
    timing = _timing_columns(table)
    with ray_session(address):
        pools = _run_stages(pending, output_uri, options, run_id, int(done.sum()), log, timing) if pending.num_rows else {}
        stats = _compact(output_uri, plan, metadata, run_id)
    storage.delete(storage.join(output_uri, fragments.FRAGMENTS))
    summary = _finish(output_uri, numbered.num_rows, int(done.sum()), time.time() - started, stats)
    plan.complete = True
    fragments.write_plan(output_uri, plan)
    summary.pools = pools
    return summary


def _check_options(options: ExtractOptions) -> None:
    unsupported = [m for m in options.modalities if m not in SUPPORTED_MODALITIES]
    if unsupported or not options.modalities:
        raise ConfigError(f"unknown modalities {unsupported}; choose from {list(SUPPORTED_MODALITIES)}")
    counts = {"--rows-per-file": options.rows_per_file, "--batch-size": options.batch_size, "--frames": options.frames}
    for flag, value in counts.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if options.cpus_per_actor <= 0 or options.gpus_per_actor < 0 or (options.actors is not None and options.actors < 1):
        raise ConfigError("--cpus-per-actor must be positive, --gpus-per-actor not negative, --actors at least 1")


def _read_input(input_uri: str, options: ExtractOptions, keep_columns: tuple[str, ...] = ()) -> tuple[pa.Table, dict[bytes, bytes]]:
    """The validated utterances table (plus `keep_columns` as they are), and the metadata to carry (label order)."""
    raw = storage.read_table(input_uri)
    table = validate_utterances(raw, input_uri)
    for name in keep_columns:
        if name not in table.column_names:
            table = table.append_column(raw.schema.field(name), raw.column(name))
    for modality, column in MEDIA_COLUMN.items():
        if modality in options.modalities and column not in raw.column_names:
            raise InputError(f"{input_uri}: {modality} extraction needs a '{column}' column (has: {', '.join(raw.column_names)})")
    labels = labels_from_metadata(raw.schema)
    metadata = {LABELS_METADATA_KEY: json.dumps(labels).encode()} if labels else {}
    card = read_card(resolve_text_model(options.text_model)) if "text" in options.modalities else None
    if card is not None:  # a fine-tuned encoder: its card travels into the features table
        metadata[CARD_METADATA_KEY] = card.to_json().encode()
        if card.context:  # and it reads each utterance with its previous turns, as it was trained
            table = table.append_column(CONTEXT_COLUMN, pa.array(context_texts(table, card.context, card.separator)))
    return table.replace_schema_metadata(None), metadata


def _open_plan(output_uri: str, input_uri: str, numbered: pa.Table, job: dict, rows_per_file: int, overwrite: bool, log,
               name: str = fragments.PLAN_FILE) -> fragments.Plan:
    """A new plan, or the unfinished one at `output_uri` when input and options (`job`) match."""
    plan = fragments.Plan(
        fingerprint=fragments.fingerprint(numbered, job),
        input=input_uri,
        rows=numbered.num_rows,
        rows_per_file=rows_per_file,
        options=job,
    )
    previous = fragments.read_plan(output_uri, name)
    if storage.exists(output_uri) and not overwrite:
        if previous is None or previous.complete:
            raise InputError(f"{output_uri} already exists; pass --overwrite to replace it")
        if previous.fingerprint != plan.fingerprint:
            raise InputError(
                f"{output_uri} holds an unfinished run on different input, model or options; "
                "rerun with the same ones to resume, or pass --overwrite to start over"
            )
        log(f"resuming the unfinished run in {output_uri}")
        return previous
    storage.delete(output_uri)
    fragments.write_plan(output_uri, plan, name)
    return plan


def _encoders(options: ExtractOptions) -> dict[str, str]:
    """What made each vector, for the features table's metadata."""
    described = {
        "text": lambda: _describe_text_model(options.text_model),
        "audio": lambda: (
            f"{resolve_speech_model(options.audio_encoder)} (mean of last hidden states, {speech_model_dim(options.audio_encoder)})"
            if options.audio_encoder
            else f"opensmile {options.audio_feature_set} functionals ({feature_set_dim(options.audio_feature_set)})"
        ),
        "visual": lambda: f"{resolve_visual_model(options.visual_model)} (mean of {options.frames} face crops)",
    }
    return {m: described[m]() for m in options.modalities}


def _describe_text_model(model: str | None) -> str:
    path = resolve_text_model(model)
    card = read_card(path)
    return f"{path} ({card.summary()})" if card else path


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
        text = {"model": options.text_model, "max_length": options.text_max_length}
        stages.append((StageDemand("text", cpu, gpu), TextFeatureStage, text))
    if "visual" in options.modalities:
        stages.append((StageDemand("visual", cpu, gpu), VisualFeatureStage, {"model": options.visual_model}))
    return stages


def _pool_sizes(demands: list[StageDemand], actors: int | None) -> dict[str, PoolSize]:
    resources = ray.cluster_resources()
    try:
        return size_pools(demands, float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0)), actors)
    except ValueError as exc:
        raise ConfigError(f"{exc} (drop --gpus-per-actor, or connect to a cluster with GPUs)") from None


def _timing_columns(table: pa.Table) -> list[str]:
    """start_s, end_s, channel travel into the features table when the utterances cut media
    by time (calls, meetings), so predictions can keep them (`--keep-columns`) and reports
    can draw turns over time; decided on the whole input, so every part has the same columns."""
    cut = "start_s" in table.column_names and table.column("start_s").null_count < table.num_rows
    return [c for c in ("start_s", "end_s", "channel") if cut and c in table.column_names]


def _run_stages(
    pending: pa.Table, output_uri: str, options: ExtractOptions, run_id: str, resumed: int, log,
    timing: list[str] = (),
) -> dict[str, PoolSize]:
    stages = _stage_demands(options)
    sizes = _pool_sizes([demand for demand, _, _ in stages], options.actors)
    pools = _describe_pools(sizes)
    log(
        f"extracting {'+'.join(options.modalities)} for {pending.num_rows} utterances"
        + (f" ({resumed} done by an earlier run)" if resumed else "")
        + f"; pools: {pools}"
    )
    size = options.batch_size
    ds = ray.data.from_arrow([pending.slice(i, size) for i in range(0, pending.num_rows, size)])
    ds = _map_stages(ds, stages, sizes, size)
    columns = _fragment_columns(options.modalities, timing)
    ds = ds.map_batches(
        lambda batch: fragments.write_fragments(batch.select(columns), output_uri, run_id),
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=WRITER_CPUS,
    )
    written = sum(row["rows"] for row in ds.take_all())
    if written != pending.num_rows:
        raise InputError(f"extraction wrote {written} rows for {pending.num_rows} pending utterances")
    return sizes


MODEL_STAGES = ("text", "visual", "score")  # torch stages: their threads follow their CPUs


def _map_stages(ds, stages: list[tuple[StageDemand, type, dict]], sizes: dict[str, PoolSize], batch_size: int | None):
    """Each stage as an actor pool over the stream; batch_size None hands each stage whole blocks."""
    for demand, stage, kwargs in stages:
        pool = sizes[demand.name]
        if demand.name in MODEL_STAGES or kwargs.get("speech_model"):
            kwargs = {**kwargs, "threads": max(1, int(pool.num_cpus))}
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
        )
    return ds


def _describe_pools(sizes: dict[str, PoolSize]) -> str:
    return ", ".join(f"{n} {s.actors}x{s.num_cpus:g} CPU" + (f" {s.num_gpus:g} GPU" if s.num_gpus else "") for n, s in sizes.items())


def _fragment_columns(modalities: tuple[str, ...], timing: list[str] = ()) -> list[str]:
    names = [f.name for f in KEY_FIELDS + LABEL_FIELDS] + list(timing)
    names += [feature_column(m) for m in SUPPORTED_MODALITIES if m in modalities] + ["errors", fragments.ROW, fragments.PART]
    return names + (list(fragments.STATS_COLUMNS) if "audio" in modalities else [])


def _compact(output_uri: str, plan: fragments.Plan, metadata: dict[bytes, bytes], run_id: str) -> dict[str, float]:
    """Merge each part's fragments into its part file, in parallel Ray tasks."""
    compact = ray.remote(num_cpus=WRITER_CPUS)(fragments.compact_part)
    results = ray.get([compact.remote(output_uri, plan, p, metadata, run_id) for p in fragments.fragment_parts(output_uri)])
    return {c: float(sum(r[c] for r in results)) for c in fragments.STATS_COLUMNS}


def _finish(output_uri: str, rows_in: int, resumed: int, seconds: float, stats: dict[str, float]) -> ExtractSummary:
    """Count the rows written and their errors: every input row must come out once."""
    table = storage.read_table(output_uri, columns=["errors"])
    if table.num_rows != rows_in:
        raise InputError(f"extraction wrote {table.num_rows} rows for {rows_in} input utterances")
    return ExtractSummary(rows_in, table.num_rows, error_counts(table), output_uri, resumed, seconds, stats)


# ---------------------------------------------------------------------------
# predict: features table + checkpoint -> one prediction row per utterance


def predict_job(
    checkpoint_uri: str,
    input_uri: str,
    output_uri: str,
    options: PredictOptions = PredictOptions(),
    address: str | None = None,
    log: Callable[[str], None] = print,
    extraction: ExtractOptions | None = None,
) -> PredictSummary:
    """Score every utterance; whole dialogues per task, one output file per task (`part-NNNNN.parquet`).

    With `extraction`, the input is an utterances table: extraction and scoring run as one
    streaming job (`_predict_streaming`) and no features table is written."""
    started = time.time()
    require_shared_storage(address, {"--checkpoint": checkpoint_uri, "--input": input_uri, "--output": output_uri})
    model_id, model_version, config = checkpoint_identity(checkpoint_uri)  # fails early on a bad checkpoint; actors load their own
    check_columns(input_uri, options)
    if extraction is not None:
        return _predict_streaming(checkpoint_uri, input_uri, output_uri, options, extraction, config, model_id, model_version, address, log)
    tasks = scoring_tasks(input_uri, options.rows_per_file)
    rows_in = sum(t["rows"] for t in tasks)
    todo = prepare_output(output_uri, input_uri, model_id, tasks, options, log)
    with ray_session(address):
        if todo:
            demand = StageDemand("score", options.cpus_per_actor, options.gpus_per_actor)
            size = _pool_sizes([demand], options.actors)["score"]
            size = replace(size, actors=min(size.actors, len(todo)))  # an idle actor would only load the model
            log(f"scoring {rows_in} utterances: {len(todo)} of {len(tasks)} files to write, {size.actors} actor(s) x {size.num_cpus:g} CPU")
            items = task_items(tasks, todo)
            ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block per task: every actor gets work
            ds = ds.map_batches(
                ScoreStage,
                fn_constructor_kwargs={
                    "checkpoint_uri": checkpoint_uri, "output_uri": output_uri, "options": options,
                    "model_version": model_version, "threads": max(1, int(size.num_cpus)),
                },
                batch_size=1,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=size.actors),
                num_cpus=size.num_cpus,
                num_gpus=size.num_gpus,
            )
            ds.take_all()
    summary = predict_summary(output_uri, rows_in, time.time() - started, len(tasks) - len(todo))
    mark_complete(output_uri)
    return summary


CARRIED = [fragments.ROW, fragments.PART, "errors"]  # through the scorer to the fragments; not in the output


def _predict_streaming(
    checkpoint_uri: str, input_uri: str, output_uri: str, options: PredictOptions, extraction: ExtractOptions,
    config, model_id: str, model_version: str, address: str | None, log,
) -> PredictSummary:
    """utterances -> [extraction stages] -> [scorer] -> fragments -> part files, in one Ray Data job.

    Blocks are chunks of whole dialogues and every stage takes a whole block, so each
    dialogue reaches the scorer whole (StreamScoreStage checks it)."""
    started = time.time()
    modalities = _extractable(config.modalities, input_uri, log)
    extraction = replace(extraction, modalities=modalities, rows_per_file=options.rows_per_file, overwrite=options.overwrite)
    _check_options(extraction)
    _check_encoder_dims(config, extraction)
    table, _ = _read_input(input_uri, extraction, options.keep_columns)
    numbered = fragments.number_rows(table, options.rows_per_file)
    job = {"model_id": model_id, "extraction": extraction.job_options(), "max_context": options.max_context,
           "keep_columns": list(options.keep_columns), "partition_by": list(options.partition_by)}
    plan = _open_plan(output_uri, input_uri, numbered, job, options.rows_per_file, options.overwrite, log, PREDICT_PLAN)
    finished = storage.join(output_uri, DONE)
    skipped = len(storage.list_files(finished))
    pending = numbered.filter(pa.array(whole_dialogues(~fragments.done_rows(output_uri, plan, finished), numbered)))
    run_id = uuid.uuid4().hex[:8]
    with ray_session(address):
        if pending.num_rows:
            _stream(pending, checkpoint_uri, output_uri, options, extraction, model_version, run_id, log)
        compact = ray.remote(num_cpus=WRITER_CPUS)(compact_scored_part)
        carried = [c for c in CARRIED if c != fragments.PART]  # the fragment writer drops `_part`
        ray.get([compact.remote(output_uri, plan, p, options.partition_by, carried) for p in fragments.fragment_parts(output_uri)])
    storage.delete(storage.join(output_uri, fragments.FRAGMENTS))
    summary = predict_summary(output_uri, numbered.num_rows, time.time() - started, skipped)
    mark_complete(output_uri)
    return summary


def _extractable(modalities: tuple[str, ...], input_uri: str, log) -> tuple[str, ...]:
    """The model's modalities that the utterances table can give: text always, audio and visual
    when their media column exists. The others are absent for every row (masked, not extracted)."""
    names = storage.read_head(input_uri, 1).column_names
    given = tuple(m for m in modalities if m == "text" or MEDIA_COLUMN[m] in names)
    missing = [m for m in modalities if m not in given]
    if not given:
        raise InputError(f"{input_uri}: none of the model's modalities {list(modalities)} can be extracted from it")
    if missing:
        log(f"{input_uri} has no {', '.join(MEDIA_COLUMN[m] for m in missing)}: scoring without {', '.join(missing)}")
    return given


def _check_encoder_dims(config, extraction: ExtractOptions) -> None:
    """The encoders must make vectors of the sizes the checkpoint was trained on (text and audio
    are checked before any work; a wrong visual model shows as a per-row dim error)."""
    needed = {m: d for m, d in zip(config.modalities, config.input_dims) if m in extraction.modalities}
    made = {}
    if "text" in needed:
        made["text"] = (text_model_dim(extraction.text_model), f"--text-model {extraction.text_model or 'minilm'}")
    if "audio" in needed and extraction.audio_encoder:
        made["audio"] = (speech_model_dim(extraction.audio_encoder), f"--audio-encoder {extraction.audio_encoder}")
    elif "audio" in needed:
        made["audio"] = (feature_set_dim(extraction.audio_feature_set), f"--audio-feature-set {extraction.audio_feature_set}")
    wrong = [f"{m} vectors of {needed[m]} values, but {flag} makes {dim}" for m, (dim, flag) in made.items() if dim != needed[m]]
    if wrong:
        raise ConfigError("the checkpoint needs " + "; ".join(wrong) + " (use the encoders its features were extracted with)")


def _stream(pending: pa.Table, checkpoint_uri: str, output_uri: str, options: PredictOptions, extraction: ExtractOptions,
            model_version: str, run_id: str, log) -> None:
    stages = _stage_demands(extraction)
    score = {"checkpoint_uri": checkpoint_uri, "options": options, "model_version": model_version, "carry": CARRIED}
    stages.append((StageDemand("score", options.cpus_per_actor, options.gpus_per_actor), StreamScoreStage, score))
    sizes = _pool_sizes([demand for demand, _, _ in stages], options.actors)
    log(f"extracting {'+'.join(extraction.modalities)} and scoring {pending.num_rows} utterances; pools: {_describe_pools(sizes)}")
    ds = ray.data.from_arrow(dialogue_chunks(pending, extraction.batch_size))
    ds = _map_stages(ds, stages, sizes, batch_size=None)
    ds = ds.map_batches(
        lambda batch: fragments.write_fragments(batch, output_uri, run_id), batch_size=None, batch_format="pyarrow", num_cpus=WRITER_CPUS
    )
    written = sum(row["rows"] for row in ds.take_all())
    if written != pending.num_rows:
        raise InputError(f"scoring wrote {written} rows for {pending.num_rows} pending utterances")
