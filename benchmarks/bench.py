"""`make bench`: speed and memory, written as JSON plus a plot.

    python -m benchmarks.bench --output bench [--quick]

Measures, on this machine:
- SDT inference and training-step throughput (utterances/s) for the laptop
  text model and the paper's MELD configuration (D=1024, three modalities);
- `parity_forward`: the paper's IEMOCAP configuration at 16 x 50 utterances and
  2 threads (sdt_spec §10);
- `parity_side_by_side` (parity_speed.py): our parity model against the reference's formulas,
  interleaved in this run, with the ratios;
- under `extraction`: text-encoder throughput (bundled MiniLM) in one process; fine-tuning
  throughput of MiniLM plus a head, bare steps in one process and `finetune-text` on Ray Train
  (one epoch of the bundled MELD slice);
- openSMILE (decode + eGeMAPSv02) real-time factor per core: alone in this
  process, and inside an audio-only `extract` job on Ray Data (audio seconds
  per wall second per CPU given to the audio actors);
- end to end: `extract` of text, audio and video over the bundled media corpus
  repeated to >= 2,000 utterances, in utterances/s;
- under `scoring` (bench_scoring.py): the bare forward pass against `predict` on
  local Ray over 100k and 400k synthetic utterances at MELD dims, with peak RSS;
- under `calls` (bench_calls.py): one generated call of 150 and of 1,500 turns through
  import, extract (text + audio), predict and report, with peak RSS of each step;
- under `scale` (bench_scale.py): the driver's peak RSS over `extract` of N and 10N long
  utterances, and its CPU share of `import calls` over many minutes of stereo MP3;
- `extraction.text_ratio`: `extract --modalities text` (MiniLM) on Ray against the same encoder
  in one process, on the same texts and CPUs, side by side in one run;
- under `asr` (bench_asr.py): Whisper base on generated calls with their transcripts withheld:
  word error rate, gold turns matched, emotion figures from gold text, heard text and audio
  alone, recognition throughput per core, the call flow per audio hour, and the recogniser's
  peak memory on a 10-minute and a 2-hour call;
- under `live` (bench_live.py): `sdt-ray serve` on loopback: live scores against `predict --causal`,
  50 calls sending a turn every 2 s for 2 minutes (p50 / p99 latency, turns/s, one score per
  turn), then the same with a replica killed by PID halfway;
and peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdt_ray.config import ModelConfig
from sdt_ray.losses import SelfDistillationLoss
from sdt_ray.model import SDT

CASES = {
    "text_laptop": ModelConfig(input_dims=(384,), n_classes=7),  # train's defaults on MiniLM features
    "meld_parity": ModelConfig(
        modalities=("text", "audio", "visual"), input_dims=(1024, 300, 342), hidden=1024, heads=8,
        dropout=0.5, n_classes=7, frozen_identity_gates=True, normalize_inputs=False,
    ),
}
IEMOCAP_PARITY = ModelConfig(  # sdt_spec §1 and §7: IEMOCAP dims, trained gates, 2 speakers, 6 classes
    modalities=("text", "audio", "visual"), input_dims=(1024, 1582, 342), hidden=1024, heads=8,
    dropout=0.5, n_classes=6, max_speakers=2, normalize_inputs=False,
)


def _timed(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    _sync()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync()
    return (time.perf_counter() - started) / repeats


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_batch(config: ModelConfig, dialogues: int, utterances: int, device: str = "cpu", seed: int = 1) -> dict[str, Any]:
    """Seeded random features x (m -> (B, L, D_m)), speakers and labels (B, L) at `config`'s
    sizes; every utterance real (mask all True)."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (dialogues, utterances)
    return {
        "x": {m: torch.randn(*shape, config.input_dim(m), generator=g, device=device) for m in config.modalities},
        "speakers": torch.randint(0, config.max_speakers, shape, generator=g, device=device),
        "mask": torch.ones(shape, dtype=torch.bool, device=device),
        "labels": torch.randint(0, config.n_classes, shape, generator=g, device=device),
    }


def bench_model(config: ModelConfig, dialogues: int, utterances: int, repeats: int, device: str = "cpu") -> dict[str, Any]:
    model = SDT(config).to(device)
    batch = random_batch(config, dialogues, utterances, device)
    features, speakers, mask, labels = batch["x"], batch["speakers"], batch["mask"], batch["labels"]
    loss_fn = SelfDistillationLoss(temperature=config.temperature)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def infer() -> None:
        with torch.inference_mode():
            model(features, speakers, mask)

    def train_step() -> None:
        out = model(features, speakers, mask)
        optimizer.zero_grad()
        loss_fn(out.logits, out.modality_logits, labels, mask).total.backward()
        optimizer.step()

    n = dialogues * utterances
    model.eval()
    infer_s = _timed(infer, repeats)
    model.train()
    train_s = _timed(train_step, repeats)
    return {
        "batch": f"{dialogues}x{utterances}",
        "inference_utt_per_s": round(n / infer_s, 1),
        "train_step_utt_per_s": round(n / train_s, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }


def bench_text_encoder(texts: list[str], device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    from sdt_ray.features.text import TextEncoder

    encoder = TextEncoder(device=device, precision=precision)
    started = time.perf_counter()
    encoder(texts)
    seconds = time.perf_counter() - started
    return {"utterances": len(texts), "seconds": round(seconds, 2), "utt_per_s": round(len(texts) / seconds, 1)}


def bench_finetune_step(texts: list[str], batch_size: int = 32, device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """The bundled MiniLM plus a head: optimiser steps on length-sorted batches, in one process,
    at `precision` (fp32, or bf16 autocast as `finetune-text --precision bf16` runs them)."""
    from sdt_ray.features.local_models import autocast
    from sdt_ray.features.text import tokenize
    from sdt_ray.text_classifier import UtteranceClassifier, load_base

    tokenizer, encoder = load_base(None)
    model = UtteranceClassifier(encoder, 7).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    texts = sorted(texts, key=len)  # as finetune-text's length buckets do
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]

    def step(batch: list[str]) -> None:
        tokens, mask = tokenize(tokenizer, batch, None, 128)
        with autocast(device, precision):
            loss = model(tokens.to(device), mask.to(device)).logits.float().logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up
    _sync()
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    _sync()
    seconds = time.perf_counter() - started
    return {"utterances": len(texts), "batch_size": batch_size, "seconds": round(seconds, 2), "utt_per_s": round(len(texts) / seconds, 1)}


def bench_finetune_job(workdir: str) -> dict[str, Any]:
    """`finetune-text` (Ray Train, defaults, 1 epoch) on the bundled MELD slice: train utterances/s."""
    from sdt_ray.finetune import FinetuneOptions, finetune_text
    from sdt_ray.importers import DEMO_CORPUS, import_corpus
    from sdt_ray.storage import write_table

    utterances = str(Path(workdir) / "finetune_utterances.parquet")
    write_table(import_corpus("meld", DEMO_CORPUS), utterances)
    started = time.perf_counter()
    result = finetune_text(utterances, str(Path(workdir) / "finetune_encoder"), FinetuneOptions(epochs=1, overwrite=True), log=lambda m: None)
    epoch = result.history[0]
    return {"train_utterances": epoch["steps"] * 32, "epoch_seconds": epoch["seconds"], "utt_per_s": epoch["utterances_per_s"],
            "wall_seconds": round(time.perf_counter() - started, 1), "workers": epoch["workers"]}


def demo_media_table(min_rows: int):
    """The bundled media corpus, repeated (dialogue ids suffixed _r0, _r1, ...) to at least `min_rows`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from sdt_ray.importers import DEMO_MEDIA, import_manifest

    table = import_manifest(DEMO_MEDIA)
    copies = -(-min_rows // table.num_rows)
    ids = table.column("dialogue_id")
    parts = [table.set_column(0, table.schema.field(0), pc.binary_join_element_wise(ids, pa.scalar(f"r{k}"), "_")) for k in range(copies)]
    return pa.concat_tables(parts).replace_schema_metadata(table.schema.metadata)


def bench_opensmile_alone(rows: int) -> dict[str, Any]:
    """Decode + openSMILE over the demo clips in this process, the same stage code the actors run."""
    from sdt_ray.features.audio import AudioFeatureStage

    table = demo_media_table(rows).slice(0, rows)
    stage = AudioFeatureStage()
    started, cpu = time.perf_counter(), time.thread_time()
    out = stage(table)
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
    audio_s = float(sum(out.column("_audio_s").to_pylist()))
    return {
        "utterances": rows, "audio_seconds": round(audio_s, 1), "wall_seconds": round(wall, 2),
        "rtf_per_core": round(audio_s / cpu, 1), "rtf_wall": round(audio_s / wall, 1),
    }


def bench_extract_job(rows: int, modalities: tuple[str, ...], actors: int | None = None) -> dict[str, Any]:
    """`extract` on local Ray over the demo media corpus repeated to `rows` utterances."""
    from sdt_ray import storage
    from sdt_ray.pipelines import ExtractOptions, extract
    from sdt_ray.session import ray_session

    table = demo_media_table(rows)
    options = ExtractOptions(modalities=modalities, visual_model="random-vit", batch_size=32, actors=actors)
    with tempfile.TemporaryDirectory() as tmp, ray_session():
        source = str(Path(tmp) / "utterances.parquet")
        storage.write_table(table, source)
        summary = extract(source, str(Path(tmp) / "features"), options, log=lambda m: None)
    audio_s = summary.stats.get("_audio_s", 0.0)
    result = {
        "modalities": list(modalities), "utterances": summary.rows_out, "seconds": round(summary.seconds, 1),
        "utt_per_s": round(summary.rows_out / summary.seconds, 1), "errors": summary.errors,
        "pools": {name: {"actors": p.actors, "cpus": p.num_cpus} for name, p in summary.pools.items()},
    }
    if audio_s:
        pool = summary.pools["audio"]
        audio_cpus = pool.actors * min(pool.num_cpus, 1.0)  # openSMILE is single-threaded: one core per actor at most
        result["audio_seconds"] = round(audio_s, 1)
        result["audio_s_per_wall_s"] = round(audio_s / summary.seconds, 1)
        # Wall clock of the whole job (start-up, writes and compaction included) per CPU the audio actors hold.
        result["rtf_per_core_wall"] = round(audio_s / (summary.seconds * audio_cpus), 1)
        result["rtf_per_core_cpu"] = round(audio_s / summary.stats["_audio_cpu_s"], 1)
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput bars (log scale), openSMILE's real-time factor, and scoring against corpus size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [_throughput_panel]
    if "parity_side_by_side" in results:
        panels.append(_parity_panel)
    if "opensmile" in results["extraction"]:
        panels.append(_opensmile_panel)
    if "scoring" in results:
        panels.append(_scoring_panel)
    if "calls" in results:
        panels.append(_calls_panel)
    if "scale" in results:
        panels.append(_scale_panel)
    if "live" in results:
        panels.append(_live_panel)
    widths = {_throughput_panel: 3, _parity_panel: 1, _opensmile_panel: 1, _scoring_panel: 1.4, _calls_panel: 1.2, _scale_panel: 1,
              _live_panel: 1.4}
    ratios = [widths[panel] for panel in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 4.2 * len(panels), 4.8), dpi=120,
                             gridspec_kw={"width_ratios": ratios}, squeeze=False)
    for panel, ax in zip(panels, axes[0]):
        panel(results, ax)
    fig.suptitle(f"sdt-ray on {results['device']}, {results['machine']['cpus']} CPUs, torch {results['machine']['torch']}; "
                 f"peak RSS of the bench process {results['peak_rss_mib']:.0f} MiB", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


EXTRACTION_BARS = {  # key under "extraction" -> its bar's label
    "text_encoder": "MiniLM encode\n(1 process)",
    "end_to_end": "extract text+\naudio+video",
    "finetune_step": "MiniLM fine-tune\nsteps (1 process)",
    "text_encoder_bf16": "MiniLM encode\nbf16",
    "finetune_step_bf16": "MiniLM fine-tune\nsteps bf16",
    "finetune_job": "finetune-text\n(Ray Train)",
}


def _throughput_panel(results: dict[str, Any], ax) -> None:
    names, values = [], []
    for case, r in results["model"].items():
        names += [f"{case}\ninference", f"{case}\ntrain step"]
        values += [r["inference_utt_per_s"], r["train_step_utt_per_s"]]
    parity = results["parity_forward"]
    names += ["IEMOCAP parity\n16x50 inference", "IEMOCAP parity\n16x50 train step"]
    values += [parity["inference_utt_per_s"], parity["train_step_utt_per_s"]]
    extraction = results["extraction"]
    for key, name in EXTRACTION_BARS.items():
        if key in extraction:
            names.append(name)
            values.append(extraction[key]["utt_per_s"])
    bars = ax.bar(range(len(values)), values, color="#4477aa")
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(values)), names, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("utterances / s (log)")
    ax.set_title(f"model throughput (torch threads {results['machine']['torch_threads']}; parity bars at 2 threads)", fontsize=9)


def _parity_panel(results: dict[str, Any], ax) -> None:
    """Ours / the reference computation, side by side in this run (1 = as fast)."""
    shapes = results["parity_side_by_side"]
    names = [f"{shape.replace('_', ' ')}\n{kind}" for shape in shapes for kind in ("inference", "train step")]
    values = [shapes[shape][key] for shape in shapes for key in ("ratio_inference", "ratio_train_step")]
    bars = ax.bar(range(len(values)), values, color="#228833")
    ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values], fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(values)), names, fontsize=7)
    ax.set_ylabel("ours / reference (throughput)")
    ax.set_title("parity model vs the reference's formulas\n(interleaved, same inputs, 2 threads)", fontsize=9)


def _opensmile_panel(results: dict[str, Any], ax) -> None:
    opensmile = results["extraction"]["opensmile"]
    labels = ["alone\n(1 process)", "in pipeline\n(wall / CPU)", "in pipeline\n(actor CPU time)"]
    rtf = [opensmile["alone"]["rtf_per_core"], opensmile["pipeline"]["rtf_per_core_wall"], opensmile["pipeline"]["rtf_per_core_cpu"]]
    bars = ax.bar(range(3), rtf, color=["#999999", "#4477aa", "#88aacc"])
    ax.bar_label(bars, labels=[f"{v:.1f}x" for v in rtf], fontsize=8)
    ax.axhline(OPENSMILE_BOUND * rtf[0], color="#cc3311", linestyle="--", linewidth=1, label=f"{OPENSMILE_BOUND:g} x alone (bound)")
    ax.set_xticks(range(3), labels, fontsize=8)
    ax.set_ylabel("audio s per CPU s (real-time factor)")
    ax.set_title(f"openSMILE + decode, ratio {opensmile['ratio_wall']:.2f}", fontsize=9)
    ax.legend(fontsize=8)


def _scoring_panel(results: dict[str, Any], ax) -> None:
    scoring = results["scoring"]
    sizes = [run["utterances"] for run in scoring["runs"]]
    bare = [run["bare"]["utt_per_s"] for run in scoring["runs"]]
    ours = [run["predict"]["utt_per_s"] for run in scoring["runs"]]
    ax.plot(sizes, bare, "o-", color="#999999", label="bare forward (1 process)")
    ax.plot(sizes, ours, "o-", color="#4477aa", label="sdt-ray predict (Ray, 2 CPUs)")
    ax.plot(sizes, [SCORING_BOUND * b for b in bare], "--", color="#cc3311", linewidth=1, label=f"{SCORING_BOUND:g} x bare (bound)")
    rss = "\n".join(f"{run['utterances']:,}: driver {run['predict']['rss_driver_mb']:,}, workers {run['predict']['rss_workers_mb']:,}"
                    for run in scoring["runs"])
    ax.text(0.98, 0.04, "peak RSS of predict (MB)\n" + rss, transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "#cccccc"})
    ax.set_xscale("log")
    ax.set_ylim(0, max(bare + ours) * 1.25)
    ax.set_xlabel("corpus size (utterances, log)")
    ax.set_ylabel("utterances / s")
    ax.set_title(f"scoring at MELD dims: predict / bare = {scoring['ratio']:.2f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def _calls_panel(results: dict[str, Any], ax) -> None:
    """Peak RSS of extract and predict against call length: flat means bounded."""
    calls = results["calls"]
    turns = [run["turns"] for run in calls["runs"]]
    for step, marker in (("extract", "o"), ("predict", "s")):
        workers = [run[step]["rss_workers_mb"] for run in calls["runs"]]
        driver = [run[step]["rss_driver_mb"] for run in calls["runs"]]
        ax.plot(turns, workers, marker=marker, label=f"{step}: Ray workers")
        ax.plot(turns, driver, marker=marker, linestyle="--", label=f"{step}: driver")
    ax.axhline(calls["whole_decode_mb"], color="grey", linestyle=":", label="the longest call decoded whole")
    ax.set_xscale("log")
    ax.set_xlabel("turns in one call (log)")
    ax.set_ylabel("peak RSS (MB)")
    minutes = calls["runs"][-1]["audio_minutes"]
    ax.set_title(f"one call through import, extract, predict, report\n(longest: {minutes:.0f} min of stereo audio)", fontsize=9)
    ax.set_ylim(0, None)
    ax.legend(fontsize=7, loc="upper left")


def _live_panel(results: dict[str, Any], ax) -> None:
    """Per-turn latency over time, steady and with a replica killed halfway, against the 250 ms goal."""
    live = results["live"]
    for phase, colour in (("steady", "#4477aa"), ("failover", "#ee7733")):
        points = np.array(live[phase]["timeline"]).reshape(-1, 2)
        ax.scatter(points[:, 0], points[:, 1], s=3, color=colour, alpha=0.5,
                   label=f"{phase}: p50 {live[phase]['p50_ms']} ms, p99 {live[phase]['p99_ms']} ms, {live[phase]['unscored']} unscored")
    ax.axvline(live["failover"]["kill_at_s"], color="#ee7733", linestyle=":", linewidth=1, label="replica killed")
    ax.axhline(250, color="#cc3311", linestyle="--", linewidth=1, label="goal: p99 250 ms")
    ax.set_yscale("log")
    ax.set_xlabel("seconds into the phase")
    ax.set_ylabel("latency per turn (ms, log)")
    ax.set_title(f"sdt-ray serve: {live['calls']} calls, a turn every {live['interval_s']:g} s, "
                 f"{live['replicas']} replicas on {live['cpus']} CPUs\nlive vs predict --causal: max diff "
                 f"{live['equality']['max_abs_diff']:.1e} over {live['equality']['turns']} turns", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def _scale_panel(results: dict[str, Any], ax) -> None:
    """The driver's peak RSS for extract at N and 10N (flat means it never holds the archive)."""
    scale = results["scale"]
    runs = scale["extract"]["runs"]
    labels = [f"{r['utterances']:,} utt\n({r['text_mb']:.0f} MB text)" for r in runs]
    bars = ax.bar(range(len(runs)), [r["driver_peak_rss_mb"] for r in runs], color="#4477aa")
    ax.bar_label(bars, labels=[f"{r['driver_peak_rss_mb']:.0f}" for r in runs], fontsize=8)
    ax.axhline(runs[0]["driver_peak_rss_mb"] + scale["extract"]["bound_mb"], color="#cc3311", linestyle="--", linewidth=1,
               label=f"N + {scale['extract']['bound_mb']} MB")
    ax.set_xticks(range(len(runs)), labels, fontsize=8)
    ax.set_ylabel("driver peak RSS (MB)")
    calls = scale["import_calls"]
    ax.set_title(f"extract: driver +{scale['extract']['driver_growth_mb']:.0f} MB from N to 10N\n"
                 f"import calls: driver CPU {calls['driver_cpu_share']:.0%} of wall ({calls['audio_minutes']:.0f} min of MP3)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench", help="folder for results.json and results.png")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no Ray job (for a smoke check)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the model and encoder run")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data extract and predict jobs")
    parser.add_argument("--utterances", type=int, default=2000, help="utterances in the extract jobs (demo corpus repeated)")
    parser.add_argument("--scoring-sizes", default="100000,400000",
                        help="comma-separated corpus sizes (utterances) for the scoring runs; the first gives the headline")
    parser.add_argument("--no-encoder", action="store_true", help="skip the text-encoder measurement")
    parser.add_argument("--scale-utterances", type=int, default=2000, help="N: the driver-memory runs extract N and 10N")
    parser.add_argument("--scale-calls", type=int, default=24, help="generated MP3 calls for the import calls CPU share")
    parser.add_argument("--scale-call-minutes", type=float, default=2.5, help="minutes per generated call")
    parser.add_argument("--text-ratio-utterances", type=int, default=20_000, help="texts for extraction.text_ratio")
    parser.add_argument("--asr-calls", type=int, default=13, help="generated calls for the speech-recognition figures (asr)")
    parser.add_argument("--asr-long-minutes", default="10,120", help="long-call lengths (minutes) for the recogniser's memory ('' skips)")
    parser.add_argument("--live-calls", type=int, default=50, help="concurrent calls in the live load test (0 skips it)")
    parser.add_argument("--live-seconds", type=float, default=120.0, help="seconds each live load phase sends turns")
    parser.add_argument("--call-turns", default="150,1500",
                        help="comma-separated call lengths (turns) for the long-call memory runs (espeak-ng needed)")
    args = parser.parse_args(argv)
    if not (args.quick or args.no_ray) and shutil.which("espeak-ng") is None:
        # the call and ASR runs speak their calls; fail now rather than after the first 15 minutes
        parser.error("espeak-ng is not installed (apt-get install espeak-ng, or run `make bench`), or pass --quick / --no-ray")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    import os

    repeats = 2 if args.quick else 10
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "device": args.device,
        "model": {name: bench_model(cfg, 16, 10, repeats if name == "text_laptop" else max(1, repeats // 3), args.device)
                  for name, cfg in CASES.items()},
        "parity_forward": bench_parity_forward(max(1, repeats // 3), args.device),
    }
    from .parity_speed import bench_parity_side_by_side

    results["parity_side_by_side"] = bench_parity_side_by_side(1 if args.quick else 5)
    if args.device.startswith("cuda"):  # a GPU only shows its speed on larger batches
        results["model"]["meld_parity_64x50"] = bench_model(CASES["meld_parity"], 64, 50, 5, args.device)
    results["extraction"] = bench_extraction(args)
    if not (args.quick or args.no_ray):
        from .bench_scoring import bench_scoring

        results["scoring"] = bench_scoring(tuple(int(s) for s in args.scoring_sizes.split(",")), workdir=str(out))
        from .bench_calls import bench_calls

        results["calls"] = bench_calls(tuple(int(n) for n in args.call_turns.split(",")), workdir=str(out))
        from .bench_scale import bench_scale

        results["scale"] = bench_scale(args.scale_utterances, args.scale_calls, args.scale_call_minutes, workdir=str(out))
        from .bench_asr import bench_asr, bench_long_call

        results["asr"] = bench_asr(args.asr_calls, workdir=str(out))
        if args.asr_long_minutes:
            results["asr"]["long_call"] = bench_long_call(tuple(float(m) for m in args.asr_long_minutes.split(",")), workdir=str(out))
    if not (args.quick or args.no_ray) and args.live_calls:
        from .bench_live import bench_live

        results["live"] = bench_live(args.live_calls, 2.0, args.live_seconds, workdir=str(out))
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "results.png")
    print(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
    return results


OPENSMILE_BOUND = 0.9  # issue 16: openSMILE inside extract >= 0.9x openSMILE alone per core
SCORING_BOUND = 0.9  # issue 16: predict >= 0.9x the bare forward pass at 100k utterances
PARITY_REFERENCE = {"inference_utt_per_s": [1160, 1306], "train_step_utt_per_s": [283, 318]}  # sdt_spec §10


def bench_parity_forward(repeats: int, device: str) -> dict[str, Any]:
    """The paper's IEMOCAP configuration, 16 dialogues x 50 utterances, 2 torch threads: the
    setting of the reference code's figures in sdt_spec §10 (compare side by side only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = bench_model(IEMOCAP_PARITY, 16, 50, repeats, device)
    finally:
        torch.set_num_threads(threads)
    return {**ours, "torch_threads": 2, "reference_code_range": PARITY_REFERENCE}


def bench_extraction(args) -> dict[str, Any]:
    """Text encoder alone; openSMILE alone and inside an audio-only extract; extract end to end."""

    results: dict[str, Any] = {}
    if not args.no_encoder:
        from sdt_ray.importers import DEMO_CORPUS, import_corpus

        texts = import_corpus("meld", DEMO_CORPUS).column("text").to_pylist()[: 200 if args.quick else 1000]
        results["text_encoder"] = bench_text_encoder(texts, args.device)
        results["finetune_step"] = bench_finetune_step(texts[: 256 if args.quick else 640], device=args.device)
        # The same two in bf16 (--precision bf16, --text-precision bf16), right after: the ratios
        # are bf16's rate over fp32's on the same texts in the same process.
        results["text_encoder_bf16"] = bench_text_encoder(texts, args.device, precision="bf16")
        results["finetune_step_bf16"] = bench_finetune_step(texts[: 256 if args.quick else 640], device=args.device, precision="bf16")
        results["bf16_ratio"] = {key: round(results[f"{key}_bf16"]["utt_per_s"] / results[key]["utt_per_s"], 3)
                                 for key in ("text_encoder", "finetune_step")}
    if not (args.quick or args.no_ray):
        alone = bench_opensmile_alone(200)
        # One audio actor, as openSMILE alone runs in one process: the ratio is then the pipeline's
        # cost per core. (By default 2 CPUs get two audio actors: more audio per wall second.)
        pipeline = bench_extract_job(args.utterances, ("audio",), actors=1)
        results["opensmile"] = {
            "alone": alone, "pipeline": pipeline,
            "ratio_wall": round(pipeline["rtf_per_core_wall"] / alone["rtf_per_core"], 3),
            "ratio_cpu": round(pipeline["rtf_per_core_cpu"] / alone["rtf_per_core"], 3),
        }
        results["opensmile_ratio"] = results["opensmile"]["ratio_wall"]
        from .bench_scale import bench_text_ratio

        results["text_job"] = bench_text_ratio(args.text_ratio_utterances)
        results["text_ratio"] = results["text_job"]["ratio"]
        results["end_to_end"] = bench_extract_job(args.utterances, ("text", "audio", "visual"))
        with tempfile.TemporaryDirectory() as workdir:
            results["finetune_job"] = bench_finetune_job(workdir)
    return results


if __name__ == "__main__":
    main()
