"""Ray Train on real local Ray: DDP over 2 workers, dev selection, checkpoint
export, evaluation, explicit resume."""

import dataclasses
import json
from pathlib import Path

import pytest
from tests.helpers.synthetic import LABELS, features_table

from sdt_ray import storage
from sdt_ray.checkpoint import load_checkpoint
from sdt_ray.config import RecipeConfig
from sdt_ray.errors import ConfigError
from sdt_ray.evaluate import evaluate
from sdt_ray.train import train


def recipe(**train_overrides) -> RecipeConfig:
    base = RecipeConfig()
    # ema_decay 0.5: a few dozen steps here, so a fast average (the path is the same).
    settings = {"epochs": 4, "patience": 10, "workers": 2, "batch_size": 4, "lr": 3e-3, "ema_decay": 0.5, **train_overrides}
    return dataclasses.replace(base, model=dataclasses.replace(base.model, hidden=16, heads=2, dropout=0.1), train=dataclasses.replace(base.train, **settings))


@pytest.fixture(scope="module")
def features_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("feat") / "features.parquet")
    storage.write_table(features_table(), path)
    return path


@pytest.fixture(scope="module")
def trained(ray_local, features_path, tmp_path_factory):
    """A 3-epoch run, then the same run resumed to 4 epochs: two Ray Train runs (each costs about
    20 s of start-up here) serve both the plain run's and the resume's tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    first = train(features_path, str(run_dir), recipe(epochs=3), log=lambda m: None)
    first_history = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines = []
    result = train(features_path, str(run_dir), recipe(), resume=True, log=lines.append)
    return run_dir, result, lines, (first, first_history)


def test_two_worker_run_writes_best_checkpoint_and_metrics(trained):
    run_dir, result, lines, _ = trained
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert result.best_epoch == max(range(4), key=lambda e: (history[e]["dev_weighted_f1"], -e))
    assert any(line.startswith("training SDT [text]") and "2 worker(s) with dialogues 12, 12" in line for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 4  # one readable line per epoch

    loaded = load_checkpoint(run_dir / "best")
    assert loaded.labels == LABELS
    assert loaded.config.input_dims == (16,) and loaded.config.class_names == tuple(LABELS)
    assert loaded.meta["selection"]["epoch"] == result.best_epoch
    # The learnable synthetic task: dev weighted F1 well above chance (1/3).
    assert history[result.best_epoch]["dev_weighted_f1"] > 0.7


def test_best_checkpoint_holds_the_dev_selected_weights(trained, features_path, tmp_path):
    run_dir, result, _, _ = trained
    dev = evaluate(str(run_dir / "best"), features_path, "dev", str(tmp_path / "dev"))
    # Scoring best/ on dev reproduces the selected epoch's dev figure, not the last epoch's.
    assert dev.metrics["weighted_f1"] == pytest.approx(result.best_metrics["dev_weighted_f1"], abs=1e-6)


def test_evaluate_writes_metrics_and_plot(trained, features_path, tmp_path):
    run_dir, _, _, _ = trained
    result = evaluate(str(run_dir / "best"), features_path, "test", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["weighted_f1"] > 0.6
    assert metrics["labels"] == LABELS and len(metrics["confusion_matrix"]) == 3
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_utterances"] == result.metrics["n_utterances"]
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_best_is_calibrated_on_dev_and_evaluate_reports_it(trained, features_path, tmp_path):
    """The temperature in best/ is the one that minimises dev ECE of best/'s own logits (train's
    default fit), found here again from scratch; evaluate reports ECE at T = 1 and at it, with the diagram."""
    import numpy as np

    from sdt_ray.calibration import fit_temperature_ece
    from sdt_ray.collate import batches
    from sdt_ray.dialogues import dialogue_rows, select_split, to_dialogues
    from sdt_ray.engine import predict

    run_dir, result, lines, _ = trained
    loaded = load_checkpoint(run_dir / "best")
    assert loaded.calibration == result.calibration and loaded.calibration["fitted_on"] == "dev"
    assert any(line.startswith("calibration on dev") for line in lines)
    dev = select_split(storage.read_table(features_path), "dev", features_path)
    dialogues = to_dialogues(dialogue_rows(dev, loaded.config, loaded.labels, features_path), loaded.config)
    scored = predict(loaded.model, batches(dialogues, 4, loaded.config.max_speakers))
    assert loaded.temperature == pytest.approx(fit_temperature_ece(scored.logits, scored.labels), rel=1e-4)
    assert loaded.calibration["fitted_by"] == "ece"
    assert loaded.calibration["n_utterances"] == len(scored.labels)

    ev = evaluate(str(run_dir / "best"), features_path, "test", str(tmp_path / "eval"))
    calibration = json.loads((tmp_path / "eval" / "metrics.json").read_text())["calibration"]
    assert calibration["temperature"] == loaded.temperature and calibration["fitted_on"] == "dev"
    assert calibration["fitted_by"] == "ece"
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(calibration)
    assert sum(calibration["reliability_after"]["count"]) == ev.metrics["n_utterances"]
    assert (tmp_path / "eval" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite([calibration["ece_before"], calibration["ece_after"]]).all()


def test_run_dir_is_never_silently_reused(trained, features_path):
    run_dir, _, _, _ = trained
    with pytest.raises(ConfigError, match="already holds run .* pass --resume"):
        train(features_path, str(run_dir), recipe(), log=lambda m: None)


def test_resume_continues_from_the_latest_checkpoint(trained, features_path, tmp_path):
    run_dir, result, lines, (first, first_history) = trained
    assert first.epochs_run == 3 and len(first_history) == 3
    assert result.epochs_run == 4
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    # The resumed run kept the first three epochs' records and trained only the fourth.
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[:3] == first_history
    assert [h["attempt"] for h in result.history] == [0, 0, 0, 1]  # only epoch 4 ran after the restart
    assert Path(result.best_dir, "model.safetensors").exists()
    with pytest.raises(ConfigError, match="holds no run to resume"):
        train(features_path, str(tmp_path / "empty"), recipe(), resume=True, log=lambda m: None)
