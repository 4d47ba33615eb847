"""`--address http://HEAD:8265`: the CLI sends itself to a running Ray head as a Ray Job,
streams the job's logs and exits with its status. The head is a real `ray start --head` on
loopback, started for this module and stopped by its process group at the end (never
`ray stop`, which would stop every Ray on the machine)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import _free_port
from synthetic import LABELS, features_table
from sdt_ray import storage
from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
from sdt_ray.config import ModelConfig
from sdt_ray.model import SDT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(s3_endpoint):
    """A Ray head with the Jobs API on 127.0.0.1; token auth explicitly off for this loopback test."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rj")  # Ray's socket paths must stay short
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(Path(temp_dir) / "head.log", "w")
    # Ports of its own: the test session's Ray already holds the defaults (the dashboard agent's
    # 52365 above all; without its agent a head refuses jobs with "No available agent").
    own_ports = [f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port")]
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", *own_ports],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"ray head did not start: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)  # the head and every process it started, by PID
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(input_dims=(16,), hidden=16, heads=2, n_classes=3, class_names=tuple(LABELS))
    folder = tmp_path_factory.mktemp("jobs")
    save_checkpoint(folder / "ckpt", state_dict_for_saving(SDT(config)), config)
    table = features_table({"train": 6, "dev": 2, "test": 3})
    storage.write_table(table, str(folder / "features.parquet"))
    return folder, table


def cli(*args, timeout=300):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "sdt_ray.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_predict_runs_as_a_job_and_streams_its_logs(head, inputs):
    folder, table = inputs
    out = folder / "predictions"
    done = cli("predict", "--checkpoint", folder / "ckpt", "--input", folder / "features.parquet", "--output", out,
               "--address", head)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {out}: {table.num_rows} rows for {table.num_rows} utterances" in done.stdout  # the job's own log
    assert "SUCCEEDED" in done.stdout
    assert storage.read_table(str(out)).num_rows == table.num_rows


def test_train_then_a_failing_job_returns_its_status(head, inputs):
    folder, _ = inputs
    run = folder / "run"
    done = cli("train", "--features", folder / "features.parquet", "--output", run, "--workers", "1", "--epochs", "2",
               "--address", head, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run / "best" / "model.safetensors").exists() and "best epoch" in done.stdout
    failed = cli("predict", "--checkpoint", folder / "missing", "--input", folder / "features.parquet",
                 "--output", folder / "never", "--address", head)
    assert failed.returncode == 1 and "FAILED" in failed.stdout
    assert "not a checkpoint" in failed.stdout  # the job's error line came back with the logs


def test_no_wait_prints_the_job_id(head, inputs):
    from ray.job_submission import JobSubmissionClient

    folder, _ = inputs
    done = cli("evaluate", "--checkpoint", folder / "ckpt", "--features", folder / "features.parquet",
               "--output", folder / "eval", "--address", head, "--no-wait")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    client = JobSubmissionClient(head)
    deadline = time.time() + 120
    while not client.get_job_status(job_id).is_terminal():
        assert time.time() < deadline
        time.sleep(1)
    assert client.get_job_status(job_id).value == "SUCCEEDED"
    assert json.loads((folder / "eval" / "metrics.json").read_text())["accuracy"] >= 0
