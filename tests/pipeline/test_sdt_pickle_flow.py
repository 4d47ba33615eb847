"""The authors' feature files round trip on real local Ray: a synthetic pickle of each layout
-> `import sdt-pickle` -> `reproduce` (train a few epochs on Ray Train, evaluate on test),
the IEMOCAP layout under the paper's protocol and the MELD layout under dev selection."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdt_ray.cli import app
from tests.helpers.sdt_pickle_files import synthetic_items, write_pickle


pytestmark = pytest.mark.slow


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def tiny_recipe(folder: Path, classes: int) -> Path:
    """The parity recipes' shape (jobs/recipes/iemocap.yaml, meld.yaml) at a tiny size."""
    recipe = folder / "tiny.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "name": "tiny",
        "model": {"modalities": ["text", "audio", "visual"], "hidden": 16, "heads": 2, "n_classes": classes,
                  "normalize_inputs": False},
        "train": {"epochs": 3, "workers": 1, "batch_size": 4, "ema_decay": 0.0, "select_on": "dev"},
    }))
    return recipe


@pytest.mark.parametrize("dataset,protocol,classes", [("iemocap", "paper", 6), ("meld", "dev", 7)])
def test_pickle_imported_and_reproduced(ray_local, tmp_path, dataset, protocol, classes):
    pickle_path = write_pickle(tmp_path / f"{dataset}.pkl", synthetic_items(dataset, train=40, test=8))
    features, out_dir = tmp_path / "features.parquet", tmp_path / "repro"
    assert "dialogues: train 36, dev 4, test 8" in invoke(
        "import", "sdt-pickle", pickle_path, "--dataset", dataset, "--output", features)
    args = ["reproduce", "--dataset", dataset, "--features", features, "--output", out_dir, "--protocol", protocol,
            "--seeds", 1, "--epochs", 2, "--config", tiny_recipe(tmp_path, classes)]
    out = invoke(*args)
    assert "[text+audio+visual]" in out and out.count("\nepoch ") == 2
    results = json.loads((out_dir / "results.json").read_text())
    seed = json.loads((out_dir / "none" / "seed0" / "test" / "metrics.json").read_text())
    table = (out_dir / "results.md").read_text()
    paper = {"iemocap": "73.95 | 74.08", "meld": "67.55 | 66.60"}[dataset]
    assert f"| SDT, paper (Ma et al. 2023) | best test epoch, not a fair estimate | {paper} | – |" in table
    assert results["rows"][0]["n"] == 1 and len(seed["labels"]) == classes and seed["split"] == "test"
    if protocol == "paper":
        assert results["selection"] == seed["selection"] == "test-selected, not a fair estimate"
        assert seed["selected_on"] == "test" and "| SDT, sdt-ray | test-selected, not a fair estimate |" in table
        assert "All sdt-ray rows above are test-selected" in out
    else:
        assert results["selection"] == "dev-selected" and "selection" not in seed and seed["selected_on"] == "dev"
        assert "| SDT, sdt-ray | dev-selected |" in table and "test-selected" not in table
    again = invoke(*args)  # a second run finds its seed done and only rewrites the table
    assert "none seed 0: done already" in again and "\nepoch " not in again
