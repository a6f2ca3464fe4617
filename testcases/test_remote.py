"""Hosts over real SSH: two network namespaces, each with Debian's sshd
(testcases/netns_hosts.py), reached through harness.hosts.ssh."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.hosts import HostError, HostKeyError
from harness.hosts.ssh import SshHost, connect
import netns_hosts
from netns_hosts import TwoHosts

two_hosts = netns_hosts.two_hosts  # the fixture, shared by module scope

HOSTILE = ["$(touch {m}a)", "`touch {m}b`", "; touch {m}c", "' ; touch {m}d '", "\"$(touch {m}e)\"",
           "x\ntouch {m}f", "&& touch {m}g", "| touch {m}h"]


def test_run_and_reuse(two_hosts: TwoHosts) -> None:
    a = connect(two_hosts.spec("a"))
    assert connect(two_hosts.spec("a")) is a, "one connection per host, reused"
    out = a.run(["ip", "-brief", "addr", "show"]).check("a").stdout.decode()
    assert two_hosts.hosts["a"].addr in out, "the command ran inside host a's namespace"
    assert a.kvm_usable() is None or "kvm" in a.kvm_usable()
    assert a.free_memory() > 0
    clock = a.clock()
    assert abs(clock.offset) < 1.0 + clock.uncertainty
    assert 0 <= clock.uncertainty < 1.0


def test_hostile_values_stay_one_argument(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """A build path or cell value with shell syntax reaches the program as one
    argv item and runs nothing (shlex.join on the remote side)."""
    a = connect(two_hosts.spec("a"))
    marker = str(tmp_path / "pwned-")
    values = [v.format(m=marker) for v in HOSTILE]
    out = a.python("import json, sys; print(json.dumps(sys.argv[1:]))", *values)
    assert json.loads(out) == values
    # as a QEMU binary path and as an argument of the started process
    for bad in values[:4]:
        with pytest.raises(HostError):
            proc = a.start([bad, "-version"], tmp_path / "stderr")
            proc.wait(10)
            raise HostError("a", proc.describe_exit())
    proc = a.start(["echo", *values], tmp_path / "stderr2")
    assert proc.wait(10) == 0
    time.sleep(0.2)
    assert not list(tmp_path.glob("pwned-*")), "a hostile value ran a command"


def test_process_dies_with_its_session(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """Closing the SSH connection ends the remote process (the watchdog)."""
    spec = two_hosts.spec("b")
    b = SshHost(spec)  # a private connection, to drop it
    proc = b.start(["sleep", "300"], tmp_path / "stderr")
    pid = proc.pid
    assert Path(f"/proc/{pid}").exists()
    b.close()
    assert proc.wait(10) is not None
    from harness.waiting import poll_until_sync
    poll_until_sync(lambda: Path(f"/proc/{pid}").exists(), lambda alive: not alive,
                    timeout=10, what="remote sleep gone after the SSH session closed")


def test_sweep_kills_leftovers_by_owner_file(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """A process whose watchdog died (SIGKILL) is killed by the next sweep."""
    import os
    import signal
    b = connect(two_hosts.spec("b"))
    proc = b.start(["sleep", "300"], tmp_path / "stderr")
    owners = Path(b.owners_dir())
    rec = json.loads((owners / f"{proc.pid}.owner").read_text())
    # a harness SIGKILLed with the host's watchdog: simulate by killing the
    # watchdog itself, as root on the same machine (the PID it recorded)
    os.kill(rec["watchdog"], signal.SIGKILL)
    from harness.waiting import poll_until_sync
    # the parent-death signal took the child with it, or the sweep must
    assert b.sweep() in ([], [proc.pid])
    poll_until_sync(lambda: Path(f"/proc/{proc.pid}/status").exists()
                    and "State:\tZ" not in Path(f"/proc/{proc.pid}/status").read_text(),
                    lambda alive: not alive, timeout=10, what="leftover gone")
    assert not (owners / f"{proc.pid}.owner").exists()


def test_unknown_host_key_refused(two_hosts: TwoHosts, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match=r"host 'a'.*unknown.*refused"):
        SshHost(two_hosts.spec("a", known_hosts=str(empty))).transport()
    # trust-on-first-use accepts it and records it
    h = SshHost(two_hosts.spec("a", known_hosts=str(empty), trust_on_first_use=True))
    h.transport()
    h.close()
    assert two_hosts.hosts["a"].host_key_pub.split()[1] in empty.read_text()


def test_changed_host_key_refused(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """b's key recorded for a's address: a changed key, refused even with TOFU."""
    wrong = tmp_path / "known_hosts"
    b_key = " ".join(two_hosts.hosts["b"].host_key_pub.split()[:2])
    wrong.write_text(f"{two_hosts.hosts['a'].addr} {b_key}\n")
    for tofu in (False, True):
        with pytest.raises(HostKeyError, match=r"host 'a'.*CHANGED"):
            SshHost(two_hosts.spec("a", known_hosts=str(wrong),
                                   trust_on_first_use=tofu)).transport()


def test_unreachable_host_clear_error_in_time(two_hosts: TwoHosts) -> None:
    spec = two_hosts.spec("a", addr="10.216.16.77", connect_timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(HostError, match=r"host 'a': cannot reach root@10.216.16.77:22"):
        SshHost(spec).transport()
    assert time.monotonic() - t0 < 5.0


# Out of the test command until it is reliable: in a fresh-clone CI run on an
# idle machine the cross-namespace migration was still 'active' after 60 s
# (it passed alone at load 15 before).  Issue #14 is open for it.  Cause found
# since: the cell ran without the matrix's defaults, so QEMU's default
# max-bandwidth applied (128 MiB/s: the source's mbps was 1073.9), against an
# idle machine's dirtier at ~120 MB/s over its 100 MiB region: expected-downtime
# stayed near 800 ms; only a loaded, slower guest converged.  With the
# defaults it completes in about a second.
@pytest.mark.not_in_test_command
def test_two_host_precopy_tcp_cell(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """Source QEMU in host a, destination in host b, precopy over tcp between
    the namespaces' addresses; exact RAM check by per-chunk hashes on each host."""
    import asyncio

    from harness.cell import TargetSpec
    from harness.hosts.remote_cell import run_remote_cell
    from harness.matrix import load_matrix
    from harness.matrix.expand import build_for_arch
    from harness.qemu.build import discover
    matrix = load_matrix(Path(__file__).resolve().parent.parent / "matrix.yaml")
    build = discover(build_for_arch(matrix.builds["system"], "x86_64"))
    a, b = connect(two_hosts.spec("a")), connect(two_hosts.spec("b"))
    d = matrix.defaults  # as every local cell gets them (see above)
    result = asyncio.run(run_remote_cell(build, TargetSpec("remote-x86"), a, b,
                                         two_hosts.hosts["b"].addr, tmp_path / "logs",
                                         caps=dict(d.capabilities), params=dict(d.parameters)))
    assert result.status == "completed", (result.error, (tmp_path / "logs").iterdir())
    assert result.ram is not None and result.ram.chunks == 128
    assert not result.ram.differing_chunks, result.ram
    assert result.dst_resumed
    # both QEMUs are gone from both hosts
    for h in (a, b):
        leftovers = list(Path(h.owners_dir()).glob("*.owner"))
        assert not leftovers, leftovers
