"""`reproduce` without Ray: the recipe each row and protocol trains, and the Markdown table."""

import pytest

from sdt_ray.config import load_recipe
from sdt_ray.errors import ConfigError
from sdt_ray.reproduce import ReproduceOptions, markdown_table, run_recipe

MELD = load_recipe("jobs/recipes/meld.yaml")


def test_the_paper_protocol_selects_on_test_and_ablations_change_the_recipe():
    options = ReproduceOptions(dataset="meld", protocol="paper", epochs=3, workers=2)
    recipe = run_recipe(MELD, options, "none", seed=4)
    assert (recipe.train.select_on, recipe.train.seed, recipe.train.epochs, recipe.train.workers) == ("test", 4, 3, 2)
    assert recipe.model == MELD.model and recipe.loss == MELD.loss  # the parity model as it is
    assert run_recipe(MELD, ReproduceOptions(dataset="meld"), "none", 0).train.select_on == "dev"
    assert not MELD.train.use_gpu and run_recipe(MELD, ReproduceOptions(dataset="meld", use_gpu=True), "none", 0).train.use_gpu
    plain = run_recipe(MELD, options, "no-distillation", 0).loss
    assert (plain.gamma_fused, plain.gamma_students, plain.gamma_kl) == (1.0, 0.0, 0.0)
    ungated = run_recipe(MELD, options, "no-unimodal-gates", 0).model  # MELD's frozen gates go too
    assert not ungated.unimodal_gates and not ungated.frozen_identity_gates
    assert not run_recipe(MELD, options, "no-multimodal-gate", 0).model.multimodal_gate
    assert run_recipe(MELD, options, "intra-only", 0).model.transformers == "intra"
    assert run_recipe(MELD, options, "inter-only", 0).model.transformers == "inter"


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="--protocol best: choose dev or paper"):
        ReproduceOptions(dataset="meld", protocol="best")
    with pytest.raises(ConfigError, match="--ablation no-heads"):
        ReproduceOptions(dataset="meld", ablations=("no-heads",))
    with pytest.raises(ConfigError, match="--dataset emorynlp"):
        ReproduceOptions(dataset="emorynlp")


def figures(mean, std):
    return {"mean": mean, "std": std}


def test_markdown_table_in_the_papers_layout():
    results = {
        "dataset": "meld", "protocol": "paper", "selection": "test-selected, not a fair estimate", "seeds": 2,
        "paper": {"accuracy": 67.55, "weighted_f1": 66.60},
        "rows": [{"title": "SDT", "accuracy": figures(0.6612, 0.0041), "weighted_f1": figures(0.6534, 0.005),
                  "macro_f1": figures(0.4, 0.01)}],
    }
    assert markdown_table(results).splitlines() == [
        "### MELD: sdt-ray (test-selected, not a fair estimate, 2 seeds) beside the paper",
        "",
        "| model | selection | accuracy | weighted F1 | macro F1 |",
        "|---|---|---|---|---|",
        "| SDT, paper (Ma et al. 2023) | best test epoch, not a fair estimate | 67.55 | 66.60 | – |",
        "| SDT, sdt-ray | test-selected, not a fair estimate | 66.12 ± 0.41 | 65.34 ± 0.50 | 40.00 ± 1.00 |",
        "",
        "All sdt-ray rows above are test-selected, not a fair estimate: each run kept its best test epoch, as the paper did.",
    ]
