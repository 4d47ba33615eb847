"""The authors' feature files round trip on real local Ray: a synthetic pickle of each layout
-> `import sdt-pickle` -> train a few epochs (Ray Train, selected on the carved dev split)
-> evaluate on test."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdt_ray.cli import app

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_sdt_pickle import synthetic_items, write_pickle  # noqa: E402

pytestmark = pytest.mark.slow


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("dataset,classes", [("iemocap", 6), ("meld", 7)])
def test_pickle_import_train_evaluate(ray_local, tmp_path, dataset, classes):
    pickle_path = write_pickle(tmp_path / f"{dataset}.pkl", synthetic_items(dataset, train=40, test=8))
    features, run, evaluation = tmp_path / "features.parquet", tmp_path / "run", tmp_path / "eval"
    out = invoke("import", "sdt-pickle", pickle_path, "--dataset", dataset, "--output", features)
    assert "dialogues: train 36, dev 4, test 8" in out
    recipe = tmp_path / "tiny.yaml"  # the parity recipes' shape (jobs/iemocap.yaml, meld.yaml) at a tiny size
    recipe.write_text(json.dumps({  # JSON is YAML
        "name": f"tiny-{dataset}",
        "model": {"modalities": ["text", "audio", "visual"], "hidden": 16, "heads": 2, "n_classes": classes,
                  "normalize_inputs": False},
        "train": {"epochs": 3, "workers": 1, "batch_size": 4, "ema_decay": 0.0, "select_on": "dev"},
    }))
    out = invoke("train", "--features", features, "--output", run, "--config", recipe, "--seed", 0)
    assert "[text+audio+visual]" in out and "selecting on dev" in out and out.count("\nepoch ") == 3
    invoke("evaluate", "--checkpoint", run / "best", "--features", features, "--split", "test", "--output", evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["selected_on"] == "dev"
    assert len(metrics["labels"]) == classes and metrics["n_utterances"] > 0
