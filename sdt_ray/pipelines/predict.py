"""`predict`: a features table (or, with `extraction`, an utterances table) + a checkpoint ->
one prediction row per utterance, on Ray Data.

    features:   task items -> [ScoreStage: read the task's rows, score, write its part]
    utterances: task items -> [read] -> [extraction stages] -> [scorer] -> fragments -> parts

Tasks are whole dialogues (tasks.py), one part per task; output.py keeps the output apart
from its inputs, resumable and never mixed with another job's.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable

import ray
from ray.data import ActorPoolStrategy

from .. import fragments, output, storage
from ..errors import ConfigError, InputError
from ..features.audio import feature_set_dim
from ..features.speech import speech_model_dim
from ..features.text import text_model_dim
from ..pools import StageDemand
from ..schema import feature_column, predictions_schema
from ..scoring import PredictOptions, checkpoint_identity
from ..session import ray_session, require_shared_storage
from ..tasks import INPUT_SHA, input_files, plan_input, task_items
from .extract import MEDIA_COLUMN, ExtractOptions, _check_options, _stage_demands, input_uris, prepare_input
from .stages import ReadOptions, ScoreStage, StreamScoreStage, write_scored_part
from .wiring import check_all_done, compact_parts, describe_pools, fewer_actors, pool_sizes, stream_chunks

PLAN = "_predict.json"
CARRIED = [fragments.ROW, fragments.PART, "errors", INPUT_SHA]  # through the scorer to the fragments; not in the output


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
    nodes: list[str] = field(default_factory=list)  # Ray node ids whose actors scored (or wrote) parts in this run

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
    inputs = {"--input": input_uri, "--checkpoint": checkpoint_uri}
    if extraction is not None:
        inputs["--text-model"] = input_uris(input_uri, extraction)["--text-model"]
    output.check_separate(output_uri, inputs)
    require_shared_storage(address, {"--checkpoint": checkpoint_uri, "--input": input_uri, "--output": output_uri})
    model_id, model_version, config = checkpoint_identity(checkpoint_uri)  # fails early on a bad checkpoint; actors load their own
    check_columns(input_uri, options)
    if extraction is not None:
        return _predict_streaming(checkpoint_uri, input_uri, output_uri, options, extraction, config, model_id, model_version, address, log)
    inputs = plan_input(input_uri, options.rows_per_file, _check_features_schema)
    tasks = inputs.tasks
    plan = output.Plan("predict", inputs.files, _job_options(model_id, options), [t["rows"] for t in tasks])
    plan = output.open_output(output_uri, plan, PLAN, options.overwrite, log)
    with ray_session(address):
        finished = output.finished_parts(output_uri, plan)
        todo = [t["task"] for t in tasks if t["task"] not in finished]
        if finished:
            log(f"resuming {output_uri}: {len(finished)} of {len(tasks)} files already written")
        nodes = _score(checkpoint_uri, output_uri, options, model_version, tasks, todo, log) if todo else []
    return _finish(output_uri, plan, time.time() - started, len(finished), nodes)


def _job_options(model_id: str, options: PredictOptions, **more) -> dict:
    """What decides predict's output: a resumed run must agree on these."""
    causal = {"causal": True} if options.causal else {}  # absent when off: earlier runs' plans still resume
    return {"model_id": model_id, "max_context": options.context, **causal, "rows_per_file": options.rows_per_file,
            "keep_columns": list(options.keep_columns), "partition_by": list(options.partition_by), **more}


def _check_features_schema(empty, uri: str) -> None:
    """Each file has the keys and at least one vector column (their values are checked per row)."""
    missing = [c for c in ("dialogue_id", "utterance_index", "speaker") if c not in empty.column_names]
    if missing:
        raise InputError(f"{uri}: missing columns {missing} in the features table (has: {', '.join(empty.column_names)})")
    if not any(feature_column(m) in empty.column_names for m in ("text", "audio", "visual")):
        raise InputError(f"{uri}: no feature columns (text_features, audio_features, visual_features); run `sdt-ray extract` first")


def _score(checkpoint_uri: str, output_uri: str, options: PredictOptions, model_version: str, tasks: list[dict],
           todo: list[int], log) -> list[str]:
    demand = StageDemand("score", options.cpus_per_actor, options.gpus_per_actor)
    size = fewer_actors(pool_sizes([demand], options.actors)["score"], len(todo))
    rows = sum(tasks[t]["rows"] for t in todo)
    log(f"scoring {rows} utterances: {len(todo)} of {len(tasks)} files to write, {size.actors} actor(s) x {size.num_cpus:g} CPU")
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
    return sorted({row["node"] for row in ds.take_all()})


def _finish(output_uri: str, plan: output.Plan, seconds: float, skipped: int, nodes: list[str]) -> PredictSummary:
    """The summary from the parts' done markers (never from the output's rows), then the plan says complete."""
    markers = check_all_done(output_uri, plan)
    done = markers.values()
    rows_out = sum(m["rows"] for m in done)
    summary = PredictSummary(plan.rows, rows_out, output.summed(done, "labels"), output.summed(done, "errors"), output_uri,
                             seconds, skipped, output.summed(done, "modalities"), nodes)
    if rows_out != plan.rows:
        raise InputError(f"scoring wrote {rows_out} rows for {plan.rows} input utterances")
    output.complete(output_uri, plan, PLAN, markers)
    return summary


def check_columns(input_uri: str, options: PredictOptions) -> None:
    """--keep-columns must be input columns and --partition-by output columns, before any work starts."""
    names = _input_columns(input_uri)
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


def _input_columns(input_uri: str) -> list[str]:
    """The first file's column names, from its footer."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(input_files(input_uri)[0])
    return pq.read_schema(path, filesystem=fs).names


# ---------------------------------------------------------------------------
# predict --extract: utterances stream through the extraction stages into the scorer


def _predict_streaming(
    checkpoint_uri: str, input_uri: str, output_uri: str, options: PredictOptions, extraction: ExtractOptions,
    config, model_id: str, model_version: str, address: str | None, log,
) -> PredictSummary:
    """task items -> [read] -> [extraction stages] -> [scorer] -> fragments -> part files, in one Ray Data job.

    The reader cuts each task into chunks of whole dialogues and every later stage takes a
    whole block, so each dialogue reaches the scorer whole (StreamScoreStage checks it)."""
    started = time.time()
    modalities = _extractable(config.modalities, input_uri, log)
    extraction = replace(extraction, modalities=modalities, rows_per_file=options.rows_per_file, overwrite=options.overwrite)
    _check_options(extraction)
    _check_encoder_dims(config, extraction)
    prepared = prepare_input(input_uri, extraction, options.keep_columns)
    tasks = prepared.plan.tasks
    job = _job_options(model_id, options, extraction=extraction.job_options())
    plan = output.open_output(output_uri, output.Plan("predict", prepared.plan.files, job, [t["rows"] for t in tasks]),
                              PLAN, options.overwrite, log)
    run_id = uuid.uuid4().hex[:8]
    with ray_session(address):
        finished = output.finished_parts(output_uri, plan)
        todo = [t["task"] for t in tasks if t["task"] not in finished]
        if finished:
            log(f"resuming {output_uri}: {len(finished)} of {len(tasks)} files already written")
        nodes = []
        if todo:
            read = ReadOptions(prepared.columns, output_uri, whole_dialogues=True,
                               modalities=extraction.modalities, context=prepared.context)
            nodes = _stream(tasks, todo, read, checkpoint_uri, output_uri, options, extraction, model_version, run_id, log)
        carried = [c for c in CARRIED if c != fragments.PART]  # the fragment writer drops `_part`
        compact_parts(output_uri, plan, lambda p: write_scored_part(output_uri, p, options.partition_by, carried), run_id)
    storage.delete(storage.join(output_uri, fragments.FRAGMENTS))
    return _finish(output_uri, plan, time.time() - started, len(finished), nodes)


def _extractable(modalities: tuple[str, ...], input_uri: str, log) -> tuple[str, ...]:
    """The model's modalities that the utterances table can give: text always, audio and visual
    when their media column exists. The others are absent for every row (masked, not extracted)."""
    names = _input_columns(input_uri)
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


def _stream(tasks: list[dict], todo: list[int], read: ReadOptions, checkpoint_uri: str, output_uri: str, options: PredictOptions,
            extraction: ExtractOptions, model_version: str, run_id: str, log) -> list[str]:
    stages = _stage_demands(extraction)
    score = {"checkpoint_uri": checkpoint_uri, "options": options, "model_version": model_version, "carry": CARRIED}
    stages.append((StageDemand("score", options.cpus_per_actor, options.gpus_per_actor), StreamScoreStage, score))
    sizes = pool_sizes([demand for demand, _, _ in stages], options.actors)
    rows = sum(tasks[t]["rows"] for t in todo)
    log(f"extracting {'+'.join(extraction.modalities)} and scoring {rows} utterances; pools: {describe_pools(sizes)}")
    return stream_chunks(tasks, todo, read, stages, sizes, output_uri, run_id)
