"""`--cluster FILE`: Ray's own cluster launcher brings the cluster up from a launcher config (or
finds it up), the launcher's SSH tunnel brings the head's dashboard here, and the command runs
there as a Ray Job with token auth on.

The cluster is this machine: Ray's local provider over SSH to a real sshd on loopback. The sshd
listens on a port of its own, reached through ssh's ProxyCommand (the launcher always dials
port 22), and gives the session a HOME in a temp folder, so the launcher's files land there.
Every process the test starts (sshd, the head) is stopped by PID; nothing runs `ray stop`."""

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.processes import free_port, own_head_ports, processes_named, stop_session
from sdt_ray import storage

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


# ssh's ProxyCommand: relay stdin/stdout to the sshd's port, in one process, so that when ssh
# ends it the connection ends too.
PROXY = """import os, select, socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    ready, _, _ = select.select([0, sock], [], [])
    data = os.read(0, 65536) if 0 in ready else sock.recv(65536)
    if not data:
        break
    if 0 in ready:
        sock.sendall(data)
    else:
        os.write(1, data)
"""


@pytest.fixture(scope="module")
def sshd():
    if not (os.path.exists(SSHD) and shutil.which("rsync")):
        pytest.skip("needs openssh-server and rsync (`make test` installs them)")
    folder = Path(tempfile.mkdtemp(prefix="/tmp/lc"))  # Ray's socket paths must stay short
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "home").mkdir()
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    (folder / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder}/host_key",
        f"AuthorizedKeysFile {folder}/id.pub", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", f"PidFile {folder}/sshd.pid",
        f"SetEnv HOME={folder}/home", "",
    ]))
    log = open(folder / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()[-1000:]}")
            time.sleep(0.2)
    yield folder, port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    log.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def launcher(sshd):
    """A launcher config whose head is this machine, with token auth; yields (config path, token)."""
    folder, ssh_port = sshd
    token = secrets.token_hex(16)
    (folder / "token").write_text(token)
    name = f"sdt-test-{folder.name}"
    # `setsid` makes the head a session of its own, so teardown finds all of it by the PID it writes.
    head = (
        f"export PATH={BIN}:$PATH RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={folder}/token && "
        f"setsid bash -c 'echo $$ > {folder}/head.pid && exec ray start --head --block --port={free_port()} "
        f"--dashboard-host=127.0.0.1 --dashboard-port={free_port()} --num-cpus=2 --temp-dir={folder}/ray "
        f"{' '.join(own_head_ports())}' > {folder}/head.log 2>&1 < /dev/null &"
    )
    config = {
        "cluster_name": name,
        "max_workers": 0,
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {
            "ssh_user": getpass.getuser(),
            "ssh_private_key": str(folder / "id"),
            "ssh_proxy_command": f"{sys.executable} {folder / 'proxy.py'} {ssh_port}",
        },
        "setup_commands": [],  # this machine already has sdt-ray; gpu.yaml installs it here
        "head_start_ray_commands": [head],
        "worker_start_ray_commands": [],
    }
    (folder / "proxy.py").write_text(PROXY)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, token
    if (folder / "head.pid").exists():
        stop_session(int((folder / "head.pid").read_text()))
    for suffix in ("state", "lock"):  # the local provider's record of this cluster
        Path(tempfile.gettempdir(), "ray", f"cluster-{name}.{suffix}").unlink(missing_ok=True)


def cli(*args, token_path=None, timeout=300):
    env = {**os.environ, "RAY_AUTH_MODE": "token" if token_path else "disabled"}
    env.pop("RAY_AUTH_TOKEN", None)
    if token_path:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return subprocess.run([sys.executable, "-m", "sdt_ray.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_predict_brings_the_cluster_up_and_runs_there(launcher, job_inputs):
    config, token = launcher
    folder, table = job_inputs
    out = folder / "predictions-cluster"
    done = cli("predict", "--checkpoint", folder / "ckpt", "--input", folder / "features.parquet", "--output", out,
               "--cluster", config, token_path=config.parent / "token")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (config.parent / "head.pid").exists()  # the launcher ran the head's start command
    assert "forwarding its dashboard" in done.stdout
    assert f"wrote {out}: {table.num_rows} rows for {table.num_rows} utterances" in done.stdout  # the job's log
    assert "SUCCEEDED" in done.stdout
    assert storage.read_table(str(out)).num_rows == table.num_rows
    assert token not in done.stdout + done.stderr
    assert processes_named(str(config).encode()) == []  # the tunnel (`ray dashboard FILE`) is closed


def test_a_job_spec_runs_on_the_cluster_found_up(launcher, job_inputs, tmp_path):
    config, token = launcher
    folder, _ = job_inputs
    head_before = int((config.parent / "head.pid").read_text())
    spec = tmp_path / "evaluate.yaml"
    spec.write_text(yaml.safe_dump({"command": "evaluate", "options": {
        "checkpoint": str(folder / "ckpt"), "features": str(folder / "features.parquet"),
        "output": str(tmp_path / "eval")}}))
    done = cli("run", spec, "--cluster", config, token_path=config.parent / "token")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout and (tmp_path / "eval" / "metrics.json").exists()
    # Found up, not restarted: the same head process, and its start command did not run again.
    assert int((config.parent / "head.pid").read_text()) == head_before
    os.kill(head_before, 0)


def test_without_the_token_the_cluster_refuses_in_one_line(launcher, job_inputs):
    config, token = launcher
    folder, _ = job_inputs
    done = cli("evaluate", "--checkpoint", folder / "ckpt", "--features", folder / "features.parquet",
               "--output", folder / "never", "--cluster", config)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "uses Ray's token auth and refused this client (RAY_AUTH_MODE is disabled)" in done.stderr
    assert token not in done.stdout + done.stderr
    assert not (folder / "never").exists()
