"""Where work runs: a local Ray session, or an existing cluster by address.

Local mode binds the dashboard to 127.0.0.1 and makes the auth mode explicit,
since a plain `ray.init()` writes a token that later breaks `ray start` and the
Jobs client (RAY_NOTES: token auth).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    object_store_bytes: int | None = None,
) -> Iterator[None]:
    """Connect to `address`, join a Ray already initialised in this process, or start local Ray."""
    if ray.is_initialized():
        yield
        return
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.WARNING,
            object_store_memory=object_store_bytes,
            configure_logging=True,
        )
    else:
        # A Ray Client (ray://) driver carries the S3 endpoint to the cluster's workers; a job
        # (auto, inside `submit_job`) already has it in the runtime env it was submitted with.
        remote = address.startswith("ray://") and _storage_env()
        ray.init(
            address=address,
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.WARNING,
            runtime_env={"env_vars": _storage_env()} if remote else None,
        )
    try:
        yield
    finally:
        ray.shutdown()


def require_shared_storage(address: str | None, uris: dict[str, str]) -> None:
    """Before any work: on a cluster of several nodes, every path the job reads or writes
    (`uris`: flag -> URI) must be visible from all of them (s3:// or a network mount)."""
    from .errors import ConfigError
    from .storage import is_shared

    if address is None and not ray.is_initialized():
        return  # a local Ray is one node
    with ray_session(address):
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    private = {flag: uri for flag, uri in uris.items() if uri and not is_shared(uri)}
    if nodes > 1 and private:
        listed = ", ".join(f"{flag} {uri}" for flag, uri in private.items())
        raise ConfigError(
            f"the cluster has {nodes} nodes, but {listed} is a path on this machine's own disk; "
            "use s3://... or a shared mount (NFS) that every node sees"
        )


def _storage_env() -> dict[str, str]:
    """Where S3 lives, as set on the driver, for a remote cluster's workers (credentials
    are the nodes' own: their environment, ~/.aws or an instance role)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
    return {name: os.environ[name] for name in names if name in os.environ}


def cpus_per_worker(workers: int, use_gpu: bool) -> float:
    """CPUs to reserve for each Train worker, leaving room for Ray Data's own tasks.

    On 2 CPUs, 2 workers at 1 CPU each plus any Ray Data task deadlocks
    (RAY_NOTES: deadlock); fractional CPUs avoid it.
    """
    if use_gpu:
        return 1.0
    total = float(ray.cluster_resources().get("CPU", 1.0))
    share = (total - 0.5) / workers
    return max(0.25, min(1.0, round(share * 4) / 4))


# ---------------------------------------------------------------------------
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
    env = _storage_env()
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

    from .errors import ConfigError

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

    from .errors import ConfigError

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

    from .errors import ConfigError

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
