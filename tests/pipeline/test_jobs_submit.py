"""`--address http://HEAD:8265`: the CLI sends itself to a running Ray head as a Ray Job,
streams the job's logs and exits with its status. The head is a real `ray start --head` on
loopback, started for this module and stopped by its process group at the end (never
`ray stop`, which would stop every Ray on the machine)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.processes import free_port, own_head_ports
from sdt_ray import storage

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(s3_endpoint):
    """A Ray head with the Jobs API on 127.0.0.1; token auth explicitly off for this loopback test."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rj")  # Ray's socket paths must stay short
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", *own_head_ports()],
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
        proc.wait(timeout=5)  # a head that has not stopped by then is killed: the test does not wait on it
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)


def cli(*args, timeout=300):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "sdt_ray.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_predict_runs_as_a_job_and_streams_its_logs(head, job_inputs):
    folder, table = job_inputs
    out = folder / "predictions"
    done = cli("predict", "--checkpoint", folder / "ckpt", "--input", folder / "features.parquet", "--output", out,
               "--address", head)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {out}: {table.num_rows} rows for {table.num_rows} utterances" in done.stdout  # the job's own log
    assert "SUCCEEDED" in done.stdout
    assert storage.read_table(str(out)).num_rows == table.num_rows


def test_train_then_a_failing_job_returns_its_status(head, job_inputs):
    folder, _ = job_inputs
    run = folder / "run"
    done = cli("train", "--features", folder / "features.parquet", "--output", run, "--workers", "1", "--epochs", "2",
               "--address", head, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run / "best" / "model.safetensors").exists() and "best epoch" in done.stdout
    failed = cli("predict", "--checkpoint", folder / "missing", "--input", folder / "features.parquet",
                 "--output", folder / "never", "--address", head)
    assert failed.returncode == 1 and "FAILED" in failed.stdout
    assert "not a checkpoint" in failed.stdout  # the job's error line came back with the logs


def test_no_wait_prints_the_job_id(head, job_inputs):
    from ray.job_submission import JobSubmissionClient

    folder, _ = job_inputs
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
