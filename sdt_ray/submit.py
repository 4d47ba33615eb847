"""Sending a command elsewhere: Ray Jobs on a running cluster (`--address http://HEAD:8265`), or
a cluster that Ray's launcher brings up (`--cluster FILE`). Only the CLI uses this module; the
jobs themselves run in a Ray session (session.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .errors import ConfigError
from .session import storage_env


def run_elsewhere(argv: list[str], address: str | None, cluster: str | None, no_wait: bool, log=print) -> int | None:
    """With --cluster FILE or --address http(s)://HEAD:8265, send the command line `argv` to that
    cluster as a Ray Job and return the job's exit status; otherwise None: run it here."""
    if cluster is not None and address is not None:
        raise ConfigError("give --cluster FILE or --address, not both")
    if cluster is None and not is_jobs_address(address):
        if no_wait:
            raise ConfigError("--no-wait needs --cluster FILE or --address http://HEAD:8265 (a Ray Jobs endpoint)")
        return None
    if cluster is None:
        return submit_job(address, argv, wait=not no_wait, log=log)
    with launched_cluster(cluster, log=log) as jobs_address:
        return submit_job(jobs_address, argv, wait=not no_wait, log=log)


# Ray Jobs: `--address http://HEAD:8265` submits the command to a running cluster's head.

def is_jobs_address(address: str | None) -> bool:
    """http(s)://HEAD:8265 is the Jobs API; ray://... and auto join the cluster directly."""
    return bool(address) and address.startswith(("http://", "https://"))


def submit_job(address: str, argv: list[str], wait: bool = True, log=print) -> int:
    """Run `sdt-ray ARGV --address auto` as a Ray Job on the cluster at `address`.

    With wait, streams the job's logs here and returns its exit status (0 when it
    succeeded, 1 otherwise); without, prints the job id and returns 0. The job runs with the
    cluster's own installation of sdt-ray (the image's, or setup_commands'); only the S3
    endpoint and region travel with it, never credentials."""
    import asyncio
    import shlex

    from ray.job_submission import JobStatus

    client = _client(address)
    entrypoint = shlex.join(["sdt-ray", *argv, "--address", "auto"])
    env = storage_env()
    job_id = _submit(client, entrypoint, {"env_vars": env} if env else None, log)
    log(f"submitted {job_id} to {address}: {entrypoint}")
    if not wait:
        log(job_id)
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            for line in lines.rstrip("\n").splitlines():
                log(line)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    log(f"job {job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _client(address: str):
    """A Jobs client, with a missing or wrong token said in one line (never echoing a token)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient


    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise ConfigError(
            f"the cluster at {address} uses Ray's token auth and refused this client (RAY_AUTH_MODE is {mode}): "
            "export RAY_AUTH_MODE=token and give the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH "
            "or RAY_AUTH_TOKEN"
        ) from None


def _submit(client, entrypoint: str, runtime_env: dict | None, log, patience_s: float = 120.0) -> str:
    """Submit, waiting while a head that has just started has no job agent yet."""
    import time

    deadline = time.time() + patience_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            log("the head's job agent is not up yet; retrying")
            time.sleep(2)


# ---------------------------------------------------------------------------
# `--cluster FILE`: Ray's cluster launcher brings the cluster up (or finds it up), its dashboard
# is forwarded here over SSH, and the command goes in as a Ray Job through that tunnel.

@contextlib.contextmanager
def launched_cluster(config_file: str, log=print, patience_s: float = 120.0) -> Iterator[str]:
    """Yield the Jobs address (http://127.0.0.1:PORT) of the cluster described by the launcher
    config `config_file`, creating or updating it first. Ray is not restarted on a cluster that is
    already up, so jobs running there go on. The tunnel closes on exit; the cluster stays up
    (`ray down FILE` takes it down)."""
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.request
    from pathlib import Path

    from ray.autoscaler.sdk import create_or_update_cluster, get_head_node_ip


    config = _launcher_config(config_file)
    log(f"cluster {config['cluster_name']}: bringing it up, or finding it up, with Ray's cluster launcher")
    create_or_update_cluster(config_file, no_restart=True)
    remote_port = _dashboard_port(config)
    local_port = _free_local_port()
    log(f"cluster {config['cluster_name']}: head {get_head_node_ip(config_file)}; "
        f"forwarding its dashboard (port {remote_port}) to 127.0.0.1:{local_port}")
    ray_cli = Path(sys.executable).parent / "ray"
    with tempfile.TemporaryFile("w+") as tunnel_log:
        tunnel = subprocess.Popen(
            [str(ray_cli), "dashboard", "--port", str(local_port), "--remote-port", str(remote_port), config_file],
            stdout=tunnel_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            address = f"http://127.0.0.1:{local_port}"
            deadline = time.time() + patience_s
            while True:
                try:
                    urllib.request.urlopen(f"{address}/api/version", timeout=2)
                    break
                except OSError as exc:
                    refused = getattr(exc, "code", None) == 401  # token auth: the head answers
                    if refused:
                        break
                    if tunnel.poll() is not None or time.time() > deadline:
                        tunnel_log.seek(0)
                        raise ConfigError(
                            f"no Ray dashboard answered through the tunnel to {config['cluster_name']}'s head "
                            f"(port {remote_port}) within {patience_s:.0f} s; is Ray running there "
                            f"(`ray up {config_file} --restart-only`)? Tunnel log: {tunnel_log.read()[-600:]}"
                        ) from None
                    time.sleep(1)
            yield address
        finally:
            _stop_group(tunnel)


def _launcher_config(config_file: str) -> dict:
    import yaml


    try:
        with open(config_file) as handle:
            config = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"--cluster {config_file}: {exc.strerror}") from None
    if not isinstance(config, dict) or "provider" not in config or "cluster_name" not in config:
        raise ConfigError(f"--cluster {config_file} is not a Ray cluster launcher config (no cluster_name or provider)")
    return config


def _dashboard_port(config: dict) -> int:
    """The head's dashboard port: --dashboard-port in head_start_ray_commands, else Ray's 8265."""
    import re

    for command in config.get("head_start_ray_commands", []):
        found = re.search(r"--dashboard-port[= ](\d+)", command)
        if found:
            return int(found.group(1))
    return 8265


def _free_local_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_group(process) -> None:
    """Stop a child started with start_new_session (it and the ssh it runs), by its PID."""
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
