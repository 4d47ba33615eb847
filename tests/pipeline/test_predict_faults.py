"""Fault injection: a scoring actor killed mid-job. Ray restarts it and retries its task;
part files have fixed names, so the retry overwrites and the output has exactly one row per
input utterance.

Not marked slow: at about 12 s it is the fastest real kill test, so `make test-fast` keeps one."""

import os
import signal
import threading
import time

from tests.helpers.processes import processes_named
from sdt_ray import storage
from benchmarks.bench_scoring import save_model, write_corpus
from sdt_ray.pipelines import predict_job
from sdt_ray.output import DONE
from sdt_ray.scoring import PredictOptions


def test_killed_actor_loses_and_duplicates_nothing(ray_local, tmp_path):
    features = write_corpus(tmp_path / "features", 6000)  # MELD dims: a few seconds of scoring
    checkpoint = save_model(tmp_path / "model")
    out = str(tmp_path / "predictions")
    result = {}
    job = threading.Thread(target=lambda: result.update(summary=predict_job(
        checkpoint, features, out, PredictOptions(rows_per_file=300), log=lambda m: None)))
    job.start()
    killed = None
    deadline = time.time() + 120
    while job.is_alive() and time.time() < deadline:
        done = storage.list_files(storage.join(out, DONE))
        pids = processes_named(b"ScoreStage")
        if len(done) >= 2 and pids:  # mid-job: some files written, more to come
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    job.join(timeout=600)
    assert killed is not None, "the job ended before an actor could be killed"
    summary = result["summary"]
    predictions = storage.read_table(out)
    keys = list(zip(predictions.column("dialogue_id").to_pylist(), predictions.column("utterance_index").to_pylist()))
    assert summary.rows_in == summary.rows_out == predictions.num_rows
    assert len(set(keys)) == len(keys)  # nothing twice
    assert predictions.column("error").null_count == predictions.num_rows
    parts = [u for u in storage.list_files(out) if u.endswith(".parquet")]
    assert len(parts) == len(storage.list_files(storage.join(out, DONE)))  # one file per task, each once
