"""The Ray session every job runs in: a local Ray, or an existing cluster by address, and the
checks a job makes of it before any work (shared storage, CPUs per Train worker).

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
    _quiet_ray_data(verbose)
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
        remote = address.startswith("ray://") and storage_env()
        ray.init(
            address=address,
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.WARNING,
            runtime_env={"env_vars": storage_env()} if remote else None,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_ray_data(verbose: bool) -> None:
    """Ray Data's INFO lines off unless asked for: its execution plans, and the progress it logs
    every 10 s when stdout is no terminal (261 lines in `make demo > log`). Progress bars on a
    terminal are not logging and stay; our jobs print their own summary lines either way."""
    import ray.data  # its import configures the ray.data logger; the level is set after that

    logging.getLogger(ray.data.__name__).setLevel(logging.INFO if verbose else logging.WARNING)


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


def storage_env() -> dict[str, str]:
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
