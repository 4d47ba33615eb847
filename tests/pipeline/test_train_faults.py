"""Fault injection: a Ray Train worker killed by PID after the first checkpoints. With
max_failures=1 the worker group restarts from the latest checkpoint and the run completes;
each epoch's record says in which attempt it ran, so the epochs redone are visible."""

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.synthetic import features_table
from tests.helpers.processes import processes_named
from sdt_ray import storage
from sdt_ray.config import RecipeConfig
from sdt_ray.train import train

pytestmark = pytest.mark.slow


def test_killed_worker_resumes_from_the_latest_checkpoint(ray_local, tmp_path):
    features = str(tmp_path / "features.parquet")
    storage.write_table(features_table({"train": 160, "dev": 4, "test": 2}), features)  # epochs of a second or two
    recipe = RecipeConfig()
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, workers=2, epochs=4, patience=10, max_failures=1, batch_size=2))
    run_dir = str(tmp_path / "run")
    result = {}
    job = threading.Thread(target=lambda: result.update(run=train(features, run_dir, recipe, log=lambda m: None)))
    job.start()
    metrics = Path(run_dir) / "metrics.jsonl"
    killed_after = None
    deadline = time.time() + 300
    while job.is_alive() and time.time() < deadline:
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        pids = processes_named(b"RayTrainWorker")
        # Rank 0 writes metrics.jsonl just before it reports the checkpoint: a second line means
        # the first checkpoint is registered with Ray Train.
        if done >= 2 and pids:
            killed_after = done
            os.kill(pids[-1], signal.SIGKILL)
            break
        time.sleep(0.05)
    job.join(timeout=900)
    assert killed_after is not None and killed_after < 4, "no worker was killed mid-run"
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(4))  # every epoch once in the final record
    restarted = [r["epoch"] for r in history if r["attempt"] == 1]
    assert restarted and 1 <= restarted[0] <= killed_after  # resumed from a checkpoint, not from scratch
    assert all(r["attempt"] == 0 for r in history if r["epoch"] < restarted[0])
    assert result["run"].epochs_run == 4 and (Path(run_dir) / "best" / "model.safetensors").exists()
    print(f"killed after {killed_after} checkpointed epochs; resumed at epoch {restarted[0] + 1}")
