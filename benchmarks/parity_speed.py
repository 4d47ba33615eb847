"""Our parity model against the reference computation (benchmarks/reference_sdt.py), side by
side: one process, the same inputs and torch threads, the repetitions interleaved (ours,
reference, ours, ...), so that a slower minute on a shared machine slows both. Reported as
utterances/s for each and the ratio ours / reference (above 1: ours is faster), for inference
and for a training step (forward, loss, backward, Adam), at IEMOCAP dims (16 x 50) and MELD
dims (16 x 10), 2 threads as in docs/sdt_spec.md §10.

    python -m benchmarks.parity_speed [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch

from sdt_ray.losses import SelfDistillationLoss
from sdt_ray.model import SDT

from .bench import CASES, IEMOCAP_PARITY, random_batch
from .reference_sdt import ReferenceSDT

SHAPES = {"iemocap_16x50": (IEMOCAP_PARITY, 16, 50), "meld_16x10": (CASES["meld_parity"], 16, 10)}
AGREEMENT = 1e-3  # largest |Δ log-probability| allowed between the two before timing (fp32, D = 1024)


def interleaved(steps: dict[str, Callable[[], None]], repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Mean seconds per call of each step, the steps called in turn `repeats` times after one
    warm-up call each."""
    for step in steps.values():
        step()
    totals = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            started = clock()
            step()
            totals[name] += clock() - started
    return {name: total / repeats for name, total in totals.items()}


def side_by_side(config, dialogues: int, utterances: int, repeats: int, threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """Both models on the same random batch; their outputs are checked to agree first."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = SDT(config)
        reference = ReferenceSDT(model)
        batch = random_batch(config, dialogues, utterances)
        difference = _max_logprob_difference(model, reference, batch)
        if difference > AGREEMENT:
            raise AssertionError(f"the reference and our model disagree by {difference:.2e} in log-probability")
        infer = interleaved({"ours": lambda: _infer_ours(model, batch), "reference": lambda: _infer_reference(reference, batch)}, repeats)
        train = interleaved(_train_steps(model, reference, batch, config.temperature), repeats)
    finally:
        torch.set_num_threads(previous)
    n = dialogues * utterances
    result = {"batch": f"{dialogues}x{utterances}", "torch_threads": threads, "repeats": repeats,
              "max_logprob_difference": float(f"{difference:.3g}")}
    for name in ("ours", "reference"):
        result[name] = {"inference_utt_per_s": round(n / infer[name], 1), "train_step_utt_per_s": round(n / train[name], 1)}
    result["ratio_inference"] = round(infer["reference"] / infer["ours"], 3)
    result["ratio_train_step"] = round(train["reference"] / train["ours"], 3)
    return result


def bench_parity_side_by_side(repeats: int, shapes: dict | None = None) -> dict[str, Any]:
    return {name: side_by_side(config, d, u, repeats) for name, (config, d, u) in (shapes or SHAPES).items()}


def _max_logprob_difference(model: SDT, reference: ReferenceSDT, batch: dict) -> float:
    model.eval()
    with torch.inference_mode():
        ours = model(batch["x"], batch["speakers"], batch["mask"]).logits  # (B, L, C)
        theirs, _ = reference(batch["x"], batch["speakers"], batch["mask"])  # (B, L, C)
    return (torch.log_softmax(ours, -1) - torch.log_softmax(theirs, -1)).abs().max().item()


def _infer_ours(model: SDT, batch: dict) -> None:
    model.eval()
    with torch.inference_mode():
        model(batch["x"], batch["speakers"], batch["mask"])


def _infer_reference(reference: ReferenceSDT, batch: dict) -> None:
    with torch.inference_mode():
        reference(batch["x"], batch["speakers"], batch["mask"])


def _train_steps(model: SDT, reference: ReferenceSDT, batch: dict, temperature: float) -> dict[str, Callable[[], None]]:
    """One training step each: forward in training mode (dropout on), the SDT loss, backward,
    Adam (the paper's weight decay)."""
    loss_fn = SelfDistillationLoss(temperature=temperature)
    ours_opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=1e-4, weight_decay=1e-5)
    labels, mask = batch["labels"], batch["mask"]

    def ours() -> None:
        model.train()
        out = model(batch["x"], batch["speakers"], mask)
        ours_opt.zero_grad()
        loss_fn(out.logits, out.modality_logits, labels, mask).total.backward()
        ours_opt.step()

    def theirs() -> None:
        fused, students = reference(batch["x"], batch["speakers"], mask, training=True)
        reference_opt.zero_grad()
        loss_fn(fused, students, labels, mask).total.backward()
        reference_opt.step()

    return {"ours": ours, "reference": theirs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of each step, after a warm-up")
    print(json.dumps(bench_parity_side_by_side(parser.parse_args().repeats), indent=2))
