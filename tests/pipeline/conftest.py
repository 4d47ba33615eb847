"""Real services for pipeline tests: one local Ray session per test run, and an
S3 endpoint served by moto on 127.0.0.1."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BUCKET = "sdt-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_named(fragment: bytes) -> list[int]:
    """PIDs whose command line holds `fragment` (Ray names actor processes ray::ClassName)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and fragment in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass  # the process ended while we looked
    return pids


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto_server on loopback; AWS_* variables point s3fs, pyarrow and Ray workers at it."""
    port = _free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    deadline = time.time() + 30
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.3)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One Ray session shared by the whole run (start-up costs seconds)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="sdtray-")
    ray.init(
        num_cpus=2,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        _temp_dir=temp_dir,
    )
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
