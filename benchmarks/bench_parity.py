"""The paper's configurations at the real datasets' sizes, on synthetic features: a few
training epochs and one inference pass per dataset, for a machine with one GPU
(`scripts/gpu_check.sh`), or at a tiny size on CPU (the test).

    python -m benchmarks.bench_parity --device cuda --epochs 3 --output gpu-out/parity.json

Per dataset (jobs/recipes/iemocap.yaml: 120 train dialogues, 5,810 utterances; jobs/recipes/meld.yaml: 1,153
dialogues, 11,098 utterances, MELD's train and dev) it reports epoch time, utterances/s for
training and inference, and peak GPU memory, twice in the same run:
- `ours`: the model as it runs, attention through torch's scaled_dot_product_attention (fused
  kernels where the device has them), in `--precision` (bf16 autocast on CUDA by default);
- `naive`: the same computation written the plain way: fp32 and the unfused math attention
  (softmax(QKᵀ/√d) V as separate kernels).
No Ray: the model and the training loop alone (sdt_ray.engine).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .bench import _sync
from sdt_ray.collate import Dialogue, batches
from sdt_ray.config import RECIPES, RecipeConfig, load_recipe
from sdt_ray.engine import predict, train_epoch
from sdt_ray.losses import SelfDistillationLoss
from sdt_ray.model import SDT

SIZES = {"iemocap": (120, 5810), "meld": (1153, 11098)}  # train dialogues, utterances (sdt_spec §10)


def synthetic_dialogues(recipe: RecipeConfig, dialogues: int, utterances: int, seed: int = 0) -> list[Dialogue]:
    """`dialogues` dialogues holding `utterances` in all (lengths drawn around the mean), with
    random features at the recipe's input sizes, speakers and labels."""
    cfg = recipe.model
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, dialogues)
    lengths = np.maximum(1, np.round(weights / weights.sum() * utterances)).astype(int)
    return [
        Dialogue(
            dialogue_id=f"d{i}",
            features={m: rng.standard_normal((n, cfg.input_dim(m))).astype(np.float32) for m in cfg.modalities},
            speakers=rng.integers(0, cfg.max_speakers, n),
            labels=rng.integers(0, cfg.n_classes, n),
        )
        for i, n in enumerate(lengths)
    ]


def bench_dataset(recipe: RecipeConfig, dialogues: list[Dialogue], epochs: int, device: str, precision: str) -> dict[str, Any]:
    n_utterances = sum(len(d) for d in dialogues)
    results: dict[str, Any] = {"dialogues": len(dialogues), "utterances": n_utterances,
                               "batch_size": recipe.train.batch_size, "hidden": recipe.model.hidden}
    for mode in ("ours", "naive"):
        dtype = torch.bfloat16 if mode == "ours" and precision == "bf16" else None
        results[mode] = _run(recipe, dialogues, n_utterances, epochs, device, dtype, naive=mode == "naive")
    results["speedup_train"] = round(results["naive"]["epoch_s"] / results["ours"]["epoch_s"], 2)
    results["speedup_inference"] = round(results["ours"]["inference_utt_per_s"] / results["naive"]["inference_utt_per_s"], 2)
    return results


def _run(recipe: RecipeConfig, dialogues: list[Dialogue], n_utterances: int, epochs: int, device: str,
         dtype: torch.dtype | None, naive: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = recipe.model
    model = SDT(cfg).to(device)
    loss_fn = SelfDistillationLoss(temperature=recipe.model.temperature).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe.train.lr,
                                 weight_decay=recipe.train.weight_decay)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _mode(device, dtype, naive):
        epoch_s = []
        for epoch in range(epochs):
            epoch_batches = batches(dialogues, recipe.train.batch_size, cfg.max_speakers, shuffle=True, seed=epoch)
            epoch_s.append(_timed_once(lambda: train_epoch(model, loss_fn, optimizer, epoch_batches, device)))
        scoring = batches(dialogues, 16, cfg.max_speakers)
        inference_s = _timed_once(lambda: predict(model, scoring, device))
    steady = epoch_s[1:] or epoch_s  # the first epoch pays for kernel selection and allocation
    return {
        "epoch_s": round(float(np.mean(steady)), 3),
        "epochs_s": [round(s, 3) for s in epoch_s],
        "train_utt_per_s": round(n_utterances / float(np.mean(steady)), 1),
        "inference_utt_per_s": round(n_utterances / inference_s, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "precision": "bf16 autocast" if dtype is not None else "fp32",
        "attention": "math (unfused)" if naive else "scaled_dot_product_attention (default backends)",
    }


@contextlib.contextmanager
def _mode(device: str, dtype: torch.dtype | None, naive: bool):
    with contextlib.ExitStack() as stack:
        if naive:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type=device.split(":")[0], dtype=dtype))
        yield


def _timed_once(work) -> float:
    """Seconds of one call, GPU work included (bench._timed averages repeats after a warm-up)."""
    _sync()
    started = time.perf_counter()
    work()
    _sync()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--datasets", default="iemocap,meld", help="comma-separated: iemocap, meld")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per dataset and mode")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="of `ours` (default: bf16 autocast on CUDA, fp32 on CPU); `naive` is always fp32")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (a tiny CPU check: 0.02)")
    parser.add_argument("--hidden", type=int, default=None, help="override D (a tiny CPU check: 32); default the recipe's 1024")
    parser.add_argument("--output", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    results: dict[str, Any] = {"device": _device_name(args.device), "torch": torch.__version__, "precision": precision}
    for dataset in args.datasets.split(","):
        recipe = load_recipe(RECIPES / f"{dataset}.yaml")
        if args.hidden:
            recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, hidden=args.hidden))
        n_dialogues, n_utterances = (max(2, round(args.scale * n)) for n in SIZES[dataset])
        dialogues = synthetic_dialogues(recipe, n_dialogues, n_utterances)
        results[dataset] = bench_dataset(recipe, dialogues, args.epochs, args.device, precision)
        print(json.dumps({dataset: results[dataset]}, indent=2), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
