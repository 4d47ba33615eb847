"""`make bench`: speed and memory, written as JSON plus a plot.

    python -m sdt_ray.bench --output bench-output [--quick]

Measures, on this machine:
- SDT inference and training-step throughput (utterances/s) for the laptop
  text model and the paper's MELD configuration (D=1024, three modalities);
- text-encoder throughput (bundled MiniLM) in one process;
- the whole `extract` job on Ray Data over the bundled demo corpus;
and peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ModelConfig
from .losses import SelfDistillationLoss
from .model import SDT

CASES = {
    "text_laptop": ModelConfig(input_dims=(384,), n_classes=7),  # train's defaults on MiniLM features
    "meld_parity": ModelConfig(
        modalities=("text", "audio", "visual"), input_dims=(1024, 300, 342), hidden=1024, heads=8,
        dropout=0.5, n_classes=7, frozen_identity_gates=True, normalize_inputs=False,
    ),
}


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


def bench_model(config: ModelConfig, dialogues: int, utterances: int, repeats: int, device: str = "cpu") -> dict[str, Any]:
    model = SDT(config).to(device)
    features = {m: torch.randn(dialogues, utterances, config.input_dim(m), device=device) for m in config.modalities}
    speakers = torch.randint(0, config.max_speakers, (dialogues, utterances), device=device)
    mask = torch.ones(dialogues, utterances, dtype=torch.bool, device=device)
    labels = torch.randint(0, config.n_classes, (dialogues, utterances), device=device)
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


def bench_text_encoder(texts: list[str], device: str = "cpu") -> dict[str, Any]:
    from .features.text import TextEncoder

    encoder = TextEncoder(device=device)
    started = time.perf_counter()
    encoder(texts)
    seconds = time.perf_counter() - started
    return {"utterances": len(texts), "seconds": round(seconds, 2), "utt_per_s": round(len(texts) / seconds, 1)}


def bench_extract_job(corpus_rows: int | None) -> dict[str, Any]:
    from . import storage
    from .importers import DEMO_CORPUS, import_corpus
    from .pipelines import ExtractOptions, extract
    from .submit import ray_session

    table = import_corpus("meld", DEMO_CORPUS)
    if corpus_rows:
        table = table.slice(0, corpus_rows)
    with tempfile.TemporaryDirectory() as tmp:
        source = str(Path(tmp) / "utterances.parquet")
        storage.write_table(table, source)
        with ray_session():
            started = time.perf_counter()
            extract(source, str(Path(tmp) / "features"), ExtractOptions(), log=lambda m: None)
            seconds = time.perf_counter() - started
    return {"utterances": table.num_rows, "seconds": round(seconds, 2), "utt_per_s": round(table.num_rows / seconds, 1)}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = [], []
    for case, r in results["model"].items():
        names += [f"{case}\ninference", f"{case}\ntrain step"]
        values += [r["inference_utt_per_s"], r["train_step_utt_per_s"]]
    if "text_encoder" in results:
        names.append("MiniLM encode\n(1 process)")
        values.append(results["text_encoder"]["utt_per_s"])
    if "extract_job" in results:
        names.append("extract job\n(Ray Data)")
        values.append(results["extract_job"]["utt_per_s"])
    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    bars = ax.bar(range(len(values)), values, color="#4477aa")
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("utterances / s (log)")
    ax.set_title(f"sdt-ray throughput on {results['device']}, {results['machine']['cpus']} CPUs, torch threads {results['machine']['torch_threads']}, "
                 f"peak RSS {results['peak_rss_mib']:.0f} MiB", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench-output", help="folder for bench.json and bench.png")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no Ray job (for a smoke check)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the model and encoder run")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data extract job")
    parser.add_argument("--no-encoder", action="store_true", help="skip the text-encoder measurement")
    args = parser.parse_args(argv)
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
    }
    if args.device.startswith("cuda"):  # a GPU only shows its speed on larger batches
        results["model"]["meld_parity_64x50"] = bench_model(CASES["meld_parity"], 64, 50, 5, args.device)
    from .importers import DEMO_CORPUS, import_corpus

    texts = import_corpus("meld", DEMO_CORPUS).column("text").to_pylist()[: 200 if args.quick else 1000]
    if not args.no_encoder:
        results["text_encoder"] = bench_text_encoder(texts, args.device)
    if not (args.quick or args.no_ray):
        results["extract_job"] = bench_extract_job(None)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "bench.png")
    print(json.dumps(results, indent=2))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return results


if __name__ == "__main__":
    main()
