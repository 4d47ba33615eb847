"""Processes and ports for tests that start Ray heads and kill things by PID."""

import os
import socket
from pathlib import Path


def free_port() -> int:
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


def own_head_ports() -> list[str]:
    """`ray start --head` flags for ports of its own: the test session's Ray already holds the
    defaults (the dashboard agent's 52365 above all; without its agent a head refuses jobs with
    "No available agent")."""
    flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "ray-client-server-port")
    return [f"--{flag}={free_port()}" for flag in flags]


def stop_session(leader: int, grace_s: float = 5.0) -> None:
    """Stop every process of the session that `leader` (a `setsid` child) leads, by PID: SIGTERM,
    then SIGKILL after `grace_s`. Ray's workers have process groups of their own in that session."""
    import signal
    import time

    def members() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getsid(int(entry.name)) == leader:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":  # a zombie is dead already, waiting for its parent
                        pids.append(int(entry.name))
            except OSError:
                pass  # gone while we looked
        return pids

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in members():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while members() and time.time() < deadline:
            time.sleep(0.5)
        if not members():
            return
