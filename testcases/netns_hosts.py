"""Two test "hosts": network namespaces joined by a veth pair, each running a
real Debian OpenSSH server with a generated host key and an authorized key
made for this fixture.

Addresses 10.216.16.1 and .2 (/24) exist only inside the two namespaces; the
harness reaches each sshd through a socket opened inside its namespace
(inventory key ``netns``, harness.hosts.netns), so no address or route of
the machine's own namespace is touched.  Everything is torn down by PID
(sshd and whatever still runs in the namespaces) and ``ip netns del``.

No namespaces, no sshd: the tests FAIL with the reason (CI runs as root and
scripts/setup.sh installs openssh-server); they never skip.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from harness.hosts.inventory import HostSpec
from harness.hosts.netns import connect_in_netns
from harness.waiting import poll_until_sync

SSHD = "/usr/sbin/sshd"
SUBNET = "10.216.16"


@dataclass
class TestHost:
    name: str
    netns: str
    addr: str
    spec: HostSpec
    host_key_pub: str
    sshd: subprocess.Popen | None = None


@dataclass
class TwoHosts:
    root: Path
    client_key: Path
    known_hosts: Path
    hosts: dict[str, TestHost] = field(default_factory=dict)

    def spec(self, name: str, **changes: object) -> HostSpec:
        from dataclasses import replace
        return replace(self.hosts[name].spec, **changes)


def _run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"test hosts: {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}",
                    pytrace=False)


def _keygen(path: Path) -> str:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mharness-test", "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def _sshd_config(d: Path, addr: str, host_key: Path, authorized: Path) -> Path:
    cfg = d / "sshd_config"
    cfg.write_text("\n".join([
        f"ListenAddress {addr}", "Port 22", f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}", f"PidFile {d / 'sshd.pid'}",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "AllowTcpForwarding yes", "Subsystem sftp internal-sftp",
        "MaxSessions 64", "MaxStartups 64", "LogLevel ERROR", ""]))
    return cfg


def _kill_namespace_pids(netns: str) -> None:
    p = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    for word in p.stdout.split():
        try:
            os.kill(int(word), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def make_two_hosts() -> Iterator[TwoHosts]:
    """The two hosts, up until the generator is closed (outside pytest:
    ``netns_two_hosts``, e.g. benchmarks/remote_cell.py)."""
    if os.geteuid() != 0:
        pytest.fail("test hosts need root (ip netns add); CI runs as root", pytrace=False)
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} missing: install openssh-server (scripts/setup.sh does)",
                    pytrace=False)
    tag = f"mh16-{os.getpid()}"
    ns = {"a": f"{tag}-a", "b": f"{tag}-b"}
    root = Path(tempfile.mkdtemp(prefix="mharness-hosts-"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    made: list[str] = []
    env = TwoHosts(root, root / "client_key", root / "known_hosts")
    try:
        for name in ns.values():
            _run(["ip", "netns", "add", name])
            made.append(name)
        veth_a, veth_b = f"v{os.getpid() % 100000}a", f"v{os.getpid() % 100000}b"
        _run(["ip", "link", "add", veth_a, "netns", ns["a"], "type", "veth",
              "peer", "name", veth_b, "netns", ns["b"]])
        client_pub = _keygen(env.client_key)
        known = []
        for i, (name, veth) in enumerate((("a", veth_a), ("b", veth_b)), start=1):
            addr = f"{SUBNET}.{i}"
            for argv in (["addr", "add", f"{addr}/24", "dev", veth],
                         ["link", "set", veth, "up"], ["link", "set", "lo", "up"]):
                _run(["ip", "-n", ns[name], *argv])
            d = root / name
            d.mkdir()
            host_pub = _keygen(d / "host_key")
            (d / "authorized_keys").write_text(client_pub + "\n")
            known.append(f"{addr} {' '.join(host_pub.split()[:2])}")
            cfg = _sshd_config(d, addr, d / "host_key", d / "authorized_keys")
            spec = HostSpec(name, user="root", addr=addr, key=str(env.client_key),
                            known_hosts=str(env.known_hosts), netns=ns[name],
                            workdir=str(d / "work"), connect_timeout=5.0)
            th = TestHost(name, ns[name], addr, spec, host_pub)
            th.sshd = subprocess.Popen(["ip", "netns", "exec", ns[name], SSHD, "-D", "-e",
                                        "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                       stderr=open(d / "sshd.log", "wb"))
            env.hosts[name] = th
        env.known_hosts.write_text("\n".join(known) + "\n")
        for th in env.hosts.values():
            def up(th: TestHost = th) -> bool:
                if th.sshd is not None and th.sshd.poll() is not None:
                    pytest.fail(f"sshd in {th.netns} exited: "
                                f"{(root / th.name / 'sshd.log').read_text()}", pytrace=False)
                try:
                    connect_in_netns(th.netns, th.addr, 22, 1.0).close()
                    return True
                except OSError:
                    return False
            poll_until_sync(up, bool, timeout=15.0, what=f"sshd in {th.netns} listening")
        yield env
    finally:
        from harness.hosts.ssh import close_all
        close_all()
        for th in env.hosts.values():
            if th.sshd is not None and th.sshd.poll() is None:
                th.sshd.terminate()
                try:
                    th.sshd.wait(5)
                except subprocess.TimeoutExpired:
                    th.sshd.kill()
                    th.sshd.wait(5)
        for name in made:
            _kill_namespace_pids(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


netns_two_hosts = contextlib.contextmanager(make_two_hosts)


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[TwoHosts]:
    yield from make_two_hosts()
