"""The README's recipe, for real: a consumer reads the bus through `ssh -N -L` to a local sshd."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bus_factories import ppo_update, training_started
from testkit.net import free_port
from testkit.wait import wait_until

from bus.aggregator import Aggregator

SSHD = "/usr/sbin/sshd"
DEADLINE_S = 30.0


def _why_not() -> str | None:
    if not Path(SSHD).is_file():
        return f"{SSHD} not found (apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "ssh or ssh-keygen not found (apt-get install openssh-client)"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        return "sshd run as root needs /run/sshd (mkdir -p /run/sshd)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A throwaway sshd on a random loopback port: its own host key, one authorized client key."""
    for name in ("host_key", "client_key"):
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)]
        subprocess.run(keygen, check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\n"
        f"PidFile {tmp_path / 'sshd.pid'}\nAuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nAllowTcpForwarding yes\nPermitRootLogin prohibit-password\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        if not wait_until(lambda: _accepts(port) or proc.poll() is not None, DEADLINE_S) or proc.poll():
            pytest.fail(f"sshd did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        yield port, tmp_path / "client_key"
    finally:
        _stop(proc)


def _tunnel(ssh_port: int, key: Path, local: int, remote: int) -> subprocess.Popen:
    """`ssh -N -L local:127.0.0.1:remote`, the command the README gives."""
    options = "IdentitiesOnly=yes BatchMode=yes ExitOnForwardFailure=yes StrictHostKeyChecking=no"
    options += " UserKnownHostsFile=/dev/null LogLevel=ERROR"
    command = ["ssh", "-N", "-F", "/dev/null", "-p", str(ssh_port), "-i", str(key)]
    for option in options.split():
        command += ["-o", option]
    command += ["-L", f"{local}:127.0.0.1:{remote}", f"{getpass.getuser()}@127.0.0.1"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    if not wait_until(lambda: _accepts(local) or proc.poll() is not None, DEADLINE_S) or proc.poll():
        err = proc.stderr.read().decode() if proc.stderr else ""
        _stop(proc)
        pytest.fail(f"ssh tunnel did not open: {err}")
    return proc


def test_consumer_reads_through_an_ssh_tunnel_and_survives_it_being_reopened(
    sshd, make_publisher, make_subscriber
) -> None:
    ssh_port, key = sshd
    pub = make_publisher("run-ssh")
    bus_port = int(pub.bound_endpoint.rsplit(":", 1)[1])
    local = free_port()
    tunnel = _tunnel(ssh_port, key, local, bus_port)
    try:
        sub = make_subscriber(f"tcp://127.0.0.1:{local}")
        agg = Aggregator()

        def step() -> None:
            for item in sub.receive(0.02):
                agg.apply(item)

        pub.publish(training_started())
        pub.publish(ppo_update(update=1))
        assert wait_until(lambda: agg.state.tamiyo.update == 1, DEADLINE_S, step)
        assert agg.state.run.started is not None and agg.state.run.run_id == "run-ssh"

        # The tunnel drops; training goes on; the same tunnel command is run again.
        _stop(tunnel)
        for i in range(2, 40):
            pub.publish(ppo_update(update=i))
        tunnel = _tunnel(ssh_port, key, local, bus_port)
        assert wait_until(lambda: agg.state.tamiyo.update == 39, DEADLINE_S, step)
        assert list(agg.state.tamiyo.history["policy_loss"]).count(0.1) == 39, "the replay filled the outage"
        assert agg.state.delivery.gaps == 0
    finally:
        _stop(tunnel)
