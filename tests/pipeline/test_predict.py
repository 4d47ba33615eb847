"""`predict` on real local Ray: one row per utterance, the same figures as `evaluate`,
bad rows kept with their errors, and no duplicates on a re-run."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.helpers.synthetic import LABELS, features_table, with_values
from sdt_ray import storage
from sdt_ray.errors import InputError
from sdt_ray.evaluate import evaluate
from sdt_ray.metrics import classification_report
from sdt_ray.pipelines import predict_job
from sdt_ray.scoring import PredictOptions

QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def checkpoint(text_checkpoint):
    return text_checkpoint


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Two files, cut inside a dialogue: a task must still hold the whole dialogue."""
    table = features_table({"train": 10, "dev": 4, "test": 8}).sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    folder = tmp_path_factory.mktemp("features")
    cut = int(np.flatnonzero(np.array(table.column("utterance_index").to_pylist()) == 1)[5])  # inside a dialogue
    storage.write_table(table.slice(0, cut), str(folder / "part-00000.parquet"))
    storage.write_table(table.slice(cut), str(folder / "part-00001.parquet"))
    return str(folder), table


def read_sorted(out):
    return storage.read_table(out).sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])


def test_predictions_match_evaluate_exactly(ray_local, checkpoint, features, tmp_path):
    path, table = features
    out = str(tmp_path / "predictions")
    summary = predict_job(checkpoint, path, out, PredictOptions(rows_per_file=20, keep_columns=("split",)), **QUIET)
    assert summary.rows_in == summary.rows_out == table.num_rows and summary.errors == {}
    predicted = read_sorted(out)
    assert predicted.column("error").null_count == predicted.num_rows
    test_rows = predicted.filter(pc.equal(predicted.column("split"), "test"))
    gold = table.filter(pc.equal(table.column("split"), "test")).column("label").to_pylist()
    ours = classification_report(
        np.array([LABELS.index(g) for g in gold]), np.array([LABELS.index(p) for p in test_rows.column("label").to_pylist()]), LABELS
    )
    reference = evaluate(checkpoint, path, "test", str(tmp_path / "eval")).metrics
    assert ours["accuracy"] == reference["accuracy"] and ours["weighted_f1"] == reference["weighted_f1"]
    assert ours["confusion_matrix"] == reference["confusion_matrix"]
    names = sorted(u.rsplit("/", 1)[-1] for u in storage.list_files(out))
    assert names[:2] == ["_predict.json", "_sdt_ray_output.json"] and names[2:] == [f"part-{i:05d}.parquet" for i in range(len(names) - 2)]


def test_bad_rows_are_kept_with_errors(ray_local, checkpoint, features, tmp_path):
    _, table = features
    table = table.drop_columns(["errors"])
    values = table.column("text_features").to_pylist()
    values[0] = [float("nan")] * 16
    values[1] = [0.5] * 15
    values[2] = None
    positions = table.column("utterance_index").to_pylist()
    ids = table.column("dialogue_id").to_pylist()
    j = next(j for j in range(3, len(ids) - 1) if ids[j] == ids[j + 1] and j + 1 != 10)
    positions[j + 1] = positions[j]  # a duplicate position inside one dialogue
    speakers = table.column("speaker").to_pylist()
    speakers[10] = None
    bad = table.set_column(table.column_names.index("text_features"), "text_features", pa.array(values, pa.list_(pa.float32())))
    bad = with_values(with_values(bad, "utterance_index", positions), "speaker", speakers)
    path = str(tmp_path / "bad.parquet")
    storage.write_table(bad, path)
    out = str(tmp_path / "predictions")
    summary = predict_job(checkpoint, path, out, PredictOptions(), **QUIET)
    predicted = storage.read_table(out)
    assert predicted.num_rows == table.num_rows == summary.rows_out
    assert sum(summary.errors.values()) == 5 and predicted.column("error").null_count == table.num_rows - 5
    assert predicted.column("label").null_count == 5


def test_rerun_refuses_and_overwrite_replaces(ray_local, checkpoint, features, tmp_path):
    path, table = features
    out = str(tmp_path / "predictions")
    predict_job(checkpoint, path, out, PredictOptions(), **QUIET)
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        predict_job(checkpoint, path, out, PredictOptions(), **QUIET)
    predict_job(checkpoint, path, out, PredictOptions(overwrite=True), **QUIET)
    assert storage.read_table(out).num_rows == table.num_rows
    assert json.loads(storage.read_text(storage.join(out, "_predict.json")))["complete"] is True


def test_partitioned_output_and_resume_after_a_lost_file(ray_local, checkpoint, features, tmp_path):
    from pathlib import Path

    from sdt_ray.errors import ConfigError

    path, table = features
    out = str(tmp_path / "predictions")
    with pytest.raises(ConfigError, match="--partition-by \\['date'\\]"):
        predict_job(checkpoint, path, out, PredictOptions(partition_by=("date",)), **QUIET)
    options = PredictOptions(rows_per_file=20, partition_by=("split", "label"), keep_columns=("split",))
    predict_job(checkpoint, path, out, options, **QUIET)
    files = sorted(p.relative_to(out).as_posix() for p in Path(out).rglob("part-*.parquet") if "_done" not in p.parts)
    assert all(f.startswith("split=") and "/label=" in f for f in files)
    predicted = storage.read_table(out)
    assert predicted.num_rows == table.num_rows
    # An unfinished run (plan not complete, one task's marker gone) redoes that task only, without duplicates.
    plan_uri = storage.join(out, "_predict.json")
    plan = json.loads(storage.read_text(plan_uri))
    plan.pop("complete")
    storage.write_text(plan_uri, json.dumps(plan))
    (Path(out) / "_done" / "part-00001.json").unlink()
    summary = predict_job(checkpoint, path, out, options, **QUIET)
    assert summary.skipped_files == len(plan["part_rows"]) - 1 and summary.rows_out == table.num_rows


def test_columns_are_checked_before_any_work(ray_local, checkpoint, features, tmp_path):
    from sdt_ray.errors import ConfigError

    path, _ = features
    out = str(tmp_path / "predictions")
    with pytest.raises(ConfigError, match="--keep-columns \\['nope'\\] are not in"):
        predict_job(checkpoint, path, out, PredictOptions(keep_columns=("nope",)), **QUIET)
    with pytest.raises(ConfigError, match="the output already has columns of that name"):
        predict_job(checkpoint, path, out, PredictOptions(keep_columns=("label",)), **QUIET)
    assert not storage.exists(out)


def test_long_dialogue_in_windows_gets_one_prediction_each(ray_local, checkpoint, tmp_path):
    """A 300-utterance call with --max-context 64: every utterance one row, one label."""
    table = features_table({"test": 1}, utterances=(300, 301), seed=3)
    assert table.num_rows == 300
    path = str(tmp_path / "call.parquet")
    storage.write_table(table, path)
    out = str(tmp_path / "predictions")
    summary = predict_job(checkpoint, path, out, PredictOptions(max_context=64), **QUIET)
    predicted = read_sorted(out)
    assert summary.rows_out == 300 and predicted.column("label").null_count == 0
    assert predicted.column("utterance_index").to_pylist() == list(range(300))
