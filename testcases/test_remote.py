"""Hosts over real SSH: two network namespaces, each with Debian's sshd
(testcases/netns_hosts.py), reached through harness.hosts.ssh; cells placed
on them run through the matrix and the one cell flow."""
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
    argv item and runs nothing: commands and scripts go to the host's helper
    as JSON argv lists (run without a shell), and the watchdog's exec channel
    is quoted with shlex.join."""
    a = connect(two_hosts.spec("a"))
    marker = str(tmp_path / "pwned-")
    values = [v.format(m=marker) for v in HOSTILE]
    out = a.python("import json, sys; print(json.dumps(sys.argv[1:]))", *values)
    assert json.loads(out) == values
    printed = a.run(["printf", "%s\\0", *values]).check("a").stdout
    assert printed.split(b"\0")[:-1] == [v.encode() for v in values]
    with pytest.raises(HostError):
        a.run([values[0], "-version"]).check("a")
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


def test_helpers_are_reused_and_end_with_the_session(two_hosts: TwoHosts) -> None:
    """Commands reuse one helper per call in flight (no exec channel, no
    Python start-up each); closing the connection ends the helpers, and the
    next command reconnects with a fresh one."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.waiting import poll_until_sync
    b = SshHost(two_hosts.spec("b"))  # a private connection, to drop it
    here = Path(b.workdir("helpers"))
    try:
        def helper_pid() -> int:
            # sh's parent is the helper that ran it
            return int(b.run(["sh", "-c", "echo $PPID"]).check("b").stdout)

        first = helper_pid()
        assert helper_pid() == first, "the idle helper is reused"
        # Each call marks itself started and waits (up to 20 s) for the other's
        # mark: both are in flight at once, in whatever order and load.
        flags = [here / "one", here / "two"]

        def meet(i: int) -> int:
            mine, other = flags[i], flags[1 - i]
            script = (f"touch {mine}; i=0; while [ ! -e {other} ] && [ $i -lt 200 ]; "
                      "do sleep 0.1; i=$((i+1)); done; echo $PPID")
            return int(b.run(["sh", "-c", script]).check("b").stdout)
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(meet, range(2)))
        flag = flags[1]
        assert flag.exists() and len(set(both)) == 2, "calls at once get a helper each"
        b.close()
        for pid in {first, *both}:
            poll_until_sync(lambda pid=pid: Path(f"/proc/{pid}").exists(),
                            lambda alive: not alive, timeout=10,
                            what=f"helper {pid} gone after the SSH session closed")
        assert helper_pid() not in {first, *both}
    finally:
        b.remove_tree(str(here))  # the cell folders must be left empty (_assert_clean)
        b.close()


def test_qemu_starts_from_a_standby_watchdog(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """A process starts through the watchdog already waiting on the host (its
    spec as the first stdin line), and a new standby takes its place; a
    standby whose channel closes starts nothing and leaves no owner file."""
    b = SshHost(two_hosts.spec("b"))
    try:
        b.prime()
        waiting = b._standby
        assert waiting is not None and not waiting.closed
        proc = b.start(["sh", "-c", "echo started $0 >&2; sleep 30", "x y"], tmp_path / "err")
        assert b._standby is not None and b._standby is not waiting, "a new standby behind it"
        owners = Path(b.owners_dir())
        assert json.loads((owners / f"{proc.pid}.owner").read_text())["pid"] == proc.pid
        # its stderr streams back (argv intact: "$0" is the one word "x y");
        # waited for, as the kill below could otherwise beat the echo
        from harness.waiting import poll_until_sync
        poll_until_sync(lambda: (tmp_path / "err").read_text(), lambda t: "started x y" in t,
                        timeout=15, what="the started process's stderr")
        assert proc.kill(grace=5.0) is not None
        before = set(owners.iterdir())
        b._standby.close()
        b._standby = None
        time.sleep(0.5)
        assert set(owners.iterdir()) <= before
    finally:
        b.close()


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

    def watchdog_state() -> str:
        try:
            return Path(f"/proc/{rec['watchdog']}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except FileNotFoundError:
            return "gone"
    # kill() returns before the signal is delivered; the sweep reads a dead
    # watchdog, reaped or still a zombie, as dead (and a live one as alive)
    poll_until_sync(watchdog_state, lambda st: st in ("gone", "Z"), timeout=10,
                    what="the watchdog dead")
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


# --- cells across hosts, through the matrix and the one cell flow -----------

MATRIX = """\
version: 1
defaults:
  timeout: 60
  downtime-tolerance-ms: 250
  capabilities: {{events: true}}
  parameters: {{max-bandwidth: 10G}}   # as matrix.yaml: QEMU's 128 MiB/s never converges
hosts:
{hosts}
builds:
  system: {{binary: "/usr/bin/qemu-system-{{arch}}", required: true}}
targets:
  remote-x86:
    arch: x86_64
    machine: q35
    accel: tcg
    memory: 256M
    build: system
    workload: {{kind: dirtier, base: 2M, region: 100M, warmup-passes: 3}}
    src-host: a
    dst-host: b
  # TLS costs the source CPU per byte: as matrix.yaml's TLS cells, a 4 MiB
  # region the encrypted stream outruns on a loaded 2-core machine
  remote-x86-small:
    arch: x86_64
    machine: q35
    accel: tcg
    memory: 64M
    build: system
    workload: {{kind: dirtier, base: 2M, region: 4M, warmup-passes: 3}}
    src-host: a
    dst-host: b
  # placed by `mharness run --hosts` only
  here-x86-small:
    arch: x86_64
    machine: q35
    accel: tcg
    memory: 64M
    build: system
    workload: {{kind: dirtier, base: 2M, region: 4M, warmup-passes: 3}}
transports: [tcp]
capsets:
  precopy: {{}}
  multifd: {{multifd: true}}
  postcopy: {{postcopy-ram: true}}
paramsets:
  multifd-4: {{multifd-channels: 4}}
  tls: {{tls-creds: tls0}}
  bw-128M: {{max-bandwidth: 128M}}
  slow: {{max-bandwidth: 4M}}
tiers:
  remote:
    cells:
      - {{target: remote-x86, transport: tcp, capset: precopy}}
      - {{target: remote-x86, transport: tcp, capset: multifd, paramset: multifd-4}}
      - {{target: remote-x86, transport: tcp, capset: postcopy, paramset: bw-128M,
         mode: postcopy-after-1}}
      - {{target: remote-x86-small, transport: tcp, capset: precopy, paramset: tls,
         src-host: b, dst-host: a}}
      # slow enough (256 MiB at 4 MiB/s) to be mid-migration when the SSH
      # connection to the destination's host is cut
      - {{target: remote-x86, transport: tcp, capset: precopy, paramset: slow}}
  cli:
    cells:
      - {{target: here-x86-small, transport: tcp, capset: precopy}}
"""


def _inventory(hosts: TwoHosts) -> str:
    lines = []
    for name in ("a", "b"):
        s = hosts.spec(name)
        lines.append(f"  {name}: {{ssh: {s.user}@{s.addr}, key: {s.key}, known-hosts: "
                     f"{s.known_hosts}, netns: {s.netns}, workdir: {s.workdir}, "
                     f"connect-timeout: 10}}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def remote_matrix(two_hosts: TwoHosts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("remote-matrix") / "matrix.yaml"
    path.write_text(MATRIX.format(hosts=_inventory(two_hosts)))
    return path


@pytest.fixture(scope="module")
def remote_cells(remote_matrix: Path) -> dict:
    from harness.matrix import load_matrix, tier_cells
    from harness.qemu.build import discover
    return {c.id: c for c in tier_cells(load_matrix(remote_matrix), "remote", resolve=discover)}


def _qemus_in(hosts: TwoHosts) -> dict[str, list[int]]:
    """QEMU processes running inside each test host's network namespace."""
    import subprocess
    out: dict[str, list[int]] = {}
    for name, th in hosts.hosts.items():
        pids = subprocess.run(["ip", "netns", "pids", th.netns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("qemu"):
                out.setdefault(name, []).append(int(pid))
    return out


def _run(cell: object, tmp_path: Path, **kw: object) -> object:
    from harness.migration.flow import run_cell
    return run_cell(cell, tmp_path / "logs", **kw)  # type: ignore[arg-type]


def _known_issues(cell: object, result: object) -> object:
    """The project matrix's known issues (a build's own defects, e.g. QEMU
    7.2 reporting its clock as a postcopy downtime) judged on this cell as
    ``mharness run`` would: a known failure is a visible xfail, never a pass."""
    from harness.known_issues import applicable, apply_known_issues
    from harness.matrix import load_matrix
    declared = load_matrix(Path(__file__).resolve().parent.parent / "matrix.yaml").known_issues
    builds = {cell.src_build.name, cell.dst_build.name}  # type: ignore[attr-defined]
    return apply_known_issues(result, applicable(declared, cell.id,  # type: ignore
                                                 cell.target.name, builds))  # type: ignore


def _assert_clean(hosts: TwoHosts) -> None:
    """Both QEMUs gone from both hosts, their owner files and cell folders too."""
    from harness.waiting import poll_until_sync
    poll_until_sync(lambda: _qemus_in(hosts), lambda q: not q, timeout=15,
                    what="no QEMU left in the test hosts")
    for name in ("a", "b"):
        h = connect(hosts.spec(name))
        owners = list(Path(h.owners_dir()).glob("*.owner"))
        assert not owners, owners
        runs = Path(hosts.spec(name).workdir) / "runs"
        assert not [p for p in runs.glob("*/*") if p.is_dir()], list(runs.glob("*/*"))
    # the RAM folders on the hosts' tmpfs (one machine here: both hosts')
    from harness.hosts.ssh import RAM_ROOT, RUN_ID
    left = list((Path(RAM_ROOT) / RUN_ID).glob("*"))
    assert not left, left


@pytest.mark.parametrize("cell_id, figure", [
    ("remote-x86-tcp-precopy-on-a-to-b", None),
    ("remote-x86-tcp-multifd-multifd-4-on-a-to-b", "multifd"),
    ("remote-x86-tcp-postcopy-bw-128M-postcopy-after-1-on-a-to-b", "postcopy"),
    ("remote-x86-small-tcp-precopy-tls-on-b-to-a", "tls"),
])
def test_cell_across_hosts(two_hosts: TwoHosts, remote_cells: dict, tmp_path: Path,
                           cell_id: str, figure: str | None) -> None:
    """A cell placed on two hosts runs every phase of the local flow: the
    destination listens on its host's address, RAM is compared by per-chunk
    hashes on each host, the guest invariant, liveness and downtime judged."""
    cell = remote_cells[cell_id]
    result = _known_issues(cell, _run(cell, tmp_path))
    checks = {c.name: c for c in result.checks}  # type: ignore[attr-defined]
    if result.verdict == "known-failure":  # type: ignore[attr-defined]
        _assert_clean(two_hosts)
        pytest.xfail(result.reason)  # type: ignore[attr-defined]
    assert result.verdict == "passed", (result.reason,  # type: ignore[attr-defined]
                                        [(c.name, c.summary) for c in checks.values()])
    for name in ("converged", "ram", "guest", "liveness", "downtime"):
        assert checks[name].passed, (name, checks[name].summary)
    ram = checks["ram"].figures
    assert ram["chunks"] * (2 << 20) == ram["bytes_compared"] == cell.target.memory, ram
    figures = result.figures  # type: ignore[attr-defined]
    src, dst = cell.src_host, cell.dst_host
    assert figures["uri"].startswith(f"tcp:{two_hosts.hosts[dst.name].addr}:"), figures["uri"]
    assert figures["hosts"]["source"] == src.name and figures["hosts"]["destination"] == dst.name
    assert "destination_clock_uncertainty_ms" in figures["hosts"]
    if figure == "postcopy":
        assert "postcopy-active" in [s["status"] for s in figures["samples"]] or \
            figures.get("postcopy_after_syncs") is not None
        assert "explained_reason" in ram
    _assert_clean(two_hosts)


def _serving_sessions(hosts: TwoHosts, name: str) -> list[int]:
    """The sshd processes serving connections in host ``name`` (children of
    its listening sshd), by PID."""
    th = hosts.hosts[name]
    assert th.sshd is not None
    pid = th.sshd.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def test_ssh_to_destination_cut_mid_migration(two_hosts: TwoHosts, remote_cells: dict,
                                              tmp_path: Path) -> None:
    """The sshd serving the harness's connection to the destination's host is
    SIGKILLed while the migration is under way: the destination's watchdog
    loses its session and kills that QEMU, the cell ends failed with a
    reason, the source runs on (and is torn down with the cell), and nothing
    is left on either host."""
    import os
    import signal

    from harness.migration.context import CellHooks
    cell = remote_cells["remote-x86-tcp-precopy-slow-on-a-to-b"]
    cut: list[int] = []

    def migrating(ctx: object, sample: dict) -> None:
        if cut or sample.get("status") != "active" or not sample.get("transferred"):
            return
        for pid in _serving_sessions(two_hosts, "b"):
            os.kill(pid, signal.SIGKILL)
            cut.append(pid)

    result = _run(cell, tmp_path, hooks=CellHooks(migrating=migrating))
    assert cut, "the connection was never cut: the migration was not seen under way"
    assert result.verdict in ("failed", "error"), result.verdict  # type: ignore[attr-defined]
    reason = result.reason  # type: ignore[attr-defined]
    assert reason and ("failed" in reason or "lost" in reason or "died" in reason), reason
    figures = result.figures  # type: ignore[attr-defined]
    assert figures.get("source_status_after") == "running", (reason, figures.keys())
    _assert_clean(two_hosts)


def test_run_hosts_places_cells(two_hosts: TwoHosts, remote_matrix: Path,
                                tmp_path: Path) -> None:
    """``mharness run --hosts b,a``: a cell that names no host runs from b to
    a (the first ordered pair), under its placed id, and passes."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    results = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "harness", "run", "--matrix", str(remote_matrix),
                        "--tier", "cli", "--hosts", "b,a", "--no-history", "--results",
                        str(results)], cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    found = {c["id"]: c for c in json.loads((results / "results.json").read_text())["cells"]}
    assert list(found) == ["here-x86-small-tcp-precopy-on-b-to-a"], list(found)
    cell = found["here-x86-small-tcp-precopy-on-b-to-a"]
    assert cell["verdict"] == "passed", cell.get("reason")
    assert (cell["inputs"]["src_host"], cell["inputs"]["dst_host"]) == ("b", "a")
    _assert_clean(two_hosts)
