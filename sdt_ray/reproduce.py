"""`sdt-ray reproduce`: the paper's configuration over seeds, under one of two protocols, and a
Markdown table next to the paper's figures.

- `dev` (default): every run selects its epoch on the dev split; the test figures are a fair
  estimate of what the model does on unseen data.
- `paper`: the reference code's protocol, the best test epoch of each run (sdt_spec §7). Its
  figures say how close sdt-ray comes to the published ones, not how good the model is, and
  every file and table it writes says "test-selected, not a fair estimate".

Ablations (the paper's Table 4) are recipe changes: `--ablation no-distillation,intra-only`.
A seed whose test figures exist already is not run again, so an interrupted run continues.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import storage
from .config import RECIPES, RecipeConfig, load_recipe
from .errors import ConfigError
from .evaluate import TEST_SELECTED, evaluate
from .summary import KEYS, summarize
from .train import train

# Table 2 of the paper (accuracy, weighted F1, %); it reports no macro F1.
PAPER_FIGURES = {"iemocap": {"accuracy": 73.95, "weighted_f1": 74.08}, "meld": {"accuracy": 67.55, "weighted_f1": 66.60}}
PROTOCOLS = {"dev": "dev", "paper": "test"}  # protocol -> the split that selects the epoch
# name -> (row title, model changes, loss changes)
ABLATIONS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "none": ("SDT", {}, {}),
    "no-distillation": ("w/o self-distillation (γ2 = γ3 = 0)", {}, {"gamma_students": 0.0, "gamma_kl": 0.0}),
    "no-unimodal-gates": ("w/o unimodal gates", {"unimodal_gates": False, "frozen_identity_gates": False}, {}),
    "no-multimodal-gate": ("w/o multimodal gate (concatenation + linear)", {"multimodal_gate": False}, {}),
    "intra-only": ("intra-modal transformers only", {"transformers": "intra"}, {}),
    "inter-only": ("inter-modal transformers only", {"transformers": "inter"}, {}),
}


@dataclass(frozen=True)
class ReproduceOptions:
    dataset: str  # iemocap | meld: which of the paper's figures to set beside ours
    protocol: str = "dev"
    seeds: int = 5
    ablations: tuple[str, ...] = ("none",)
    epochs: int | None = None  # fewer than the recipe's, for a quick look
    workers: int | None = None
    use_gpu: bool = False  # one GPU per Ray Train worker
    address: str | None = None  # a Ray cluster to train on (None: local Ray)

    def __post_init__(self) -> None:
        if self.dataset not in PAPER_FIGURES:
            raise ConfigError(f"--dataset {self.dataset}: choose one of {', '.join(PAPER_FIGURES)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol {self.protocol}: choose dev or paper")
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise ConfigError(f"--ablation {','.join(unknown)}: choose from {', '.join(ABLATIONS)}")
        if self.seeds < 1:
            raise ConfigError("--seeds must be at least 1")

    @property
    def selection(self) -> str:
        return TEST_SELECTED if self.protocol == "paper" else "dev-selected"


def run_recipe(base: RecipeConfig, options: ReproduceOptions, ablation: str, seed: int) -> RecipeConfig:
    _, model_changes, loss_changes = ABLATIONS[ablation]
    train_changes: dict[str, Any] = {"select_on": PROTOCOLS[options.protocol], "seed": seed}
    if options.epochs is not None:
        train_changes["epochs"] = options.epochs
    if options.workers is not None:
        train_changes["workers"] = options.workers
    if options.use_gpu:
        train_changes["use_gpu"] = True
    return dataclasses.replace(
        base,
        name=f"{base.name}-{options.protocol}-{ablation}",
        model=dataclasses.replace(base.model, **model_changes),
        loss=dataclasses.replace(base.loss, **loss_changes),
        train=dataclasses.replace(base.train, **train_changes),
    )


def reproduce(features_uri: str, output_uri: str, recipe: RecipeConfig, options: ReproduceOptions,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    rows = []
    for ablation in options.ablations:
        eval_dirs = [_seed(features_uri, output_uri, recipe, options, ablation, seed, log) for seed in range(options.seeds)]
        rows.append({"ablation": ablation, "title": ABLATIONS[ablation][0], **summarize(eval_dirs)})
    results = {
        "dataset": options.dataset,
        "protocol": options.protocol,
        "selection": options.selection,
        "seeds": options.seeds,
        "recipe": recipe.name,
        "paper": PAPER_FIGURES[options.dataset],
        "rows": rows,
    }
    storage.write_text(storage.join(output_uri, "results.json"), json.dumps(results, indent=2))
    table = markdown_table(results)
    storage.write_text(storage.join(output_uri, "results.md"), table + "\n")
    log(table)
    log(f"wrote {output_uri}/results.md and {output_uri}/results.json")
    return results


def parity_recipe(dataset: str, path: str | Path | None = None) -> RecipeConfig:
    """The recipe `reproduce` trains: `path`, or the paper's configuration for `dataset` in jobs/recipes/."""
    return load_recipe(path or RECIPES / f"{dataset}.yaml")


def _seed(features_uri, output_uri, recipe, options, ablation, seed, log) -> str:
    run_dir = storage.join(output_uri, ablation, f"seed{seed}")
    eval_dir = storage.join(run_dir, "test")
    if storage.exists(storage.join(eval_dir, "metrics.json")):
        log(f"{ablation} seed {seed}: done already ({eval_dir})")
        return eval_dir
    log(f"{ablation} seed {seed}: training, {options.selection} -> {run_dir}")
    result = train(features_uri, run_dir, run_recipe(recipe, options, ablation, seed),
                   resume=storage.exists(storage.join(run_dir, "run.json")), address=options.address, log=log)
    evaluation = evaluate(result.best_dir, features_uri, "test", eval_dir)
    log(f"{ablation} seed {seed}: test weighted F1 {evaluation.metrics['weighted_f1']:.4f} ({options.selection})")
    return eval_dir


def markdown_table(results: dict[str, Any]) -> str:
    """The paper's layout (accuracy, weighted F1, in %), our rows as mean ± std over seeds."""
    dataset, selection = results["dataset"].upper(), results["selection"]
    paper = results["paper"]
    lines = [
        f"### {dataset}: sdt-ray ({selection}, {results['seeds']} seeds) beside the paper",
        "",
        "| model | selection | accuracy | weighted F1 | macro F1 |",
        "|---|---|---|---|---|",
        f"| SDT, paper (Ma et al. 2023) | best test epoch, not a fair estimate | {paper['accuracy']:.2f} | "
        f"{paper['weighted_f1']:.2f} | – |",
    ]
    for row in results["rows"]:
        cells = " | ".join(f"{100 * row[k]['mean']:.2f} ± {100 * row[k]['std']:.2f}" for k in KEYS)
        lines.append(f"| {row['title']}, sdt-ray | {selection} | {cells} |")
    if results["protocol"] == "paper":
        lines += ["", f"All sdt-ray rows above are {selection}: each run kept its best test epoch, as the paper did."]
    return "\n".join(lines)
