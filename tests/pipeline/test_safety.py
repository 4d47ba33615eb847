"""Issue 16's failure cases on real local Ray: an unreadable page, a leftover object where a
part should be, a changed input, and SIGKILLs at the worst moments. Each run ends with one
row per input utterance, none twice, and the same rows as a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.helpers.synthetic import corrupt_column, features_table
from sdt_ray import output, storage
from sdt_ray.errors import InputError
from sdt_ray.importers import DEMO_CORPUS, import_corpus
from sdt_ray.pipelines import ExtractOptions, extract, predict_job
from sdt_ray.scoring import PredictOptions

QUIET = {"log": lambda m: None}
KEYS = [("dialogue_id", "ascending"), ("utterance_index", "ascending")]


@pytest.fixture(scope="module")
def checkpoint(text_checkpoint):
    return text_checkpoint


def test_an_unreadable_page_becomes_read_error_rows_and_the_rest_is_scored(ray_local, checkpoint, tmp_path):
    table = features_table({"test": 8}).sort_by(KEYS)
    path = str(tmp_path / "features.parquet")
    pq.write_table(table, path, row_group_size=10)
    corrupt_column(path, 1, "text_features.list.element")
    out = str(tmp_path / "predictions")
    summary = predict_job(checkpoint, path, out, PredictOptions(), **QUIET)
    predicted = storage.read_table(out).sort_by(KEYS)
    assert summary.rows_out == predicted.num_rows == table.num_rows
    errors = predicted.column("error").to_pylist()
    assert errors[10:20] == ["read_error"] * 10 and summary.errors == {"read_error": 10}
    assert predicted.column("label").null_count == 10 and errors[:10] == [None] * 10


def test_a_leftover_object_at_a_parts_key_is_not_taken_for_the_part(ray_local, checkpoint, s3_endpoint, tmp_path):
    """An S3 write that failed could leave a valid 0-row object at the final key: without the
    part's done marker, a resumed run writes the part again."""
    table = features_table({"test": 6}, seed=4)
    source = "s3://sdt-test/safety/features.parquet"
    storage.write_table(table, source)
    out = "s3://sdt-test/safety/predictions"
    options = PredictOptions(rows_per_file=10)
    predict_job(checkpoint, source, out, options, **QUIET)
    complete = storage.read_table(out).sort_by(KEYS)
    plan = output.read_plan(out, "_predict.json")
    plan.complete = False
    output.write_plan(out, plan, "_predict.json")
    empty = storage.read_table(storage.join(out, "part-00001.parquet")).slice(0, 0)
    storage.write_table(empty, storage.join(out, "part-00001.parquet"))  # what the failed write left
    storage.delete(storage.join(out, output.DONE, "part-00001.json"))
    summary = predict_job(checkpoint, source, out, options, **QUIET)
    assert summary.skipped_files == plan.parts - 1 and summary.rows_out == table.num_rows
    again = storage.read_table(out).sort_by(KEYS)
    assert again.equals(complete)


def test_a_resumed_run_refuses_an_input_that_changed_and_names_it(ray_local, checkpoint, tmp_path):
    source = tmp_path / "features"
    storage.write_table(features_table({"test": 4}), str(source / "part-00000.parquet"))
    out = str(tmp_path / "predictions")
    predict_job(checkpoint, str(source), out, PredictOptions(), **QUIET)
    plan = output.read_plan(out, "_predict.json")
    assert all(len(output.part_done(out, plan, p)["input_sha256"]) == 64 for p in range(plan.parts))
    assert len(plan.extra["input_sha256"]) == 64
    plan.complete = False
    output.write_plan(out, plan, "_predict.json")
    storage.write_table(features_table({"test": 4}, seed=9), str(source / "part-00000.parquet"))  # new content
    with pytest.raises(InputError, match=f"input file {source / 'part-00000.parquet'} changed"):
        predict_job(checkpoint, str(source), out, PredictOptions(), **QUIET)


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=6)
    path = str(tmp_path_factory.mktemp("utt") / "utterances.parquet")
    storage.write_table(table, path)
    return path


def killed_at(point: str, utterances: str, tiny_bert: str, out: str, tmp_path: Path) -> None:
    """Run `sdt-ray extract` in a process group of its own, wait until it stops at `point`
    (failpoints.py), then SIGKILL the whole group."""
    pause = tmp_path / f"paused-{point}"
    env = {**os.environ, "SDT_RAY_PAUSE_AT": point, "SDT_RAY_PAUSE_FILE": str(pause)}
    cli = [sys.executable, "-m", "sdt_ray.cli", "extract", "--input", utterances, "--output", out,
           "--text-model", tiny_bert, "--batch-size", "8", "--rows-per-file", "40"]
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while not pause.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert pause.exists(), f"the job never reached {point}: {stderr.decode()[-2000:]}"


@pytest.fixture(scope="module")
def uninterrupted(ray_local, utterances, tiny_bert, tmp_path_factory):
    whole = str(tmp_path_factory.mktemp("whole") / "features")
    extract(utterances, whole, ExtractOptions(text_model=tiny_bert, batch_size=8, rows_per_file=40), **QUIET)
    return whole


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compaction", "plan-complete"])  # plan-start: tests/unit/test_output.py
def test_a_job_killed_at_the_worst_moment_resumes_to_the_same_rows(ray_local, utterances, tiny_bert, uninterrupted, point, tmp_path):
    whole = uninterrupted
    out = str(tmp_path / "features")
    killed_at(point, utterances, tiny_bert, out, tmp_path)
    assert not output.read_plan(out, "_extract.json") or not output.read_plan(out, "_extract.json").complete
    summary = extract(utterances, out, ExtractOptions(text_model=tiny_bert, batch_size=8, rows_per_file=40), **QUIET)
    resumed, reference = storage.read_table(out).sort_by(KEYS), storage.read_table(whole).sort_by(KEYS)
    keys = list(zip(resumed.column("dialogue_id").to_pylist(), resumed.column("utterance_index").to_pylist()))
    assert len(keys) == len(set(keys)) == reference.num_rows == summary.rows_out
    assert resumed.select(["dialogue_id", "utterance_index", "label", "errors"]).equals(
        reference.select(["dialogue_id", "utterance_index", "label", "errors"]))
    assert pc.all(pc.equal(pc.list_value_length(resumed.column("text_features")), 24)).as_py()
    diff = pc.max(pc.abs(pc.subtract(pc.list_flatten(resumed.column("text_features")),
                                     pc.list_flatten(reference.column("text_features"))))).as_py()
    assert diff < 1e-5
    finished, whole_plan = output.read_plan(out, "_extract.json"), output.read_plan(whole, "_extract.json")
    assert finished.complete
    # The workers' hash of the rows read is the same whether or not the run was interrupted.
    assert finished.extra["input_sha256"] == whole_plan.extra["input_sha256"]


@pytest.mark.slow
def test_the_input_hash_changes_with_one_letter_of_the_input(ray_local, utterances, tiny_bert, uninterrupted, tmp_path):
    """Same size, same row count: only the workers' hash of the rows read tells the two inputs apart."""
    table = storage.read_table(utterances)
    texts = table.column("text").to_pylist()
    texts[3] = texts[3][:-1] + ("x" if texts[3][-1] != "x" else "y")
    edited = str(tmp_path / "utterances.parquet")
    storage.write_table(table.set_column(table.column_names.index("text"), "text", pa.array(texts)), edited)
    out = str(tmp_path / "features")
    extract(edited, out, ExtractOptions(text_model=tiny_bert, batch_size=8, rows_per_file=40), **QUIET)
    plan, reference = output.read_plan(out, "_extract.json"), output.read_plan(uninterrupted, "_extract.json")
    assert plan.inputs[0]["rows"] == reference.inputs[0]["rows"]
    assert len(plan.extra["input_sha256"]) == 64 and plan.extra["input_sha256"] != reference.extra["input_sha256"]
    markers = [output.part_done(out, plan, p) for p in range(plan.parts)]
    changed = [m["input_sha256"] != output.part_done(uninterrupted, reference, p)["input_sha256"] for p, m in enumerate(markers)]
    assert changed.count(True) == 1  # only the part holding the edited row
