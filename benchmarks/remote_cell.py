#!/usr/bin/env python3
"""The remote overhead of a cell: two-host precopy between netns "hosts" vs the same cell here.

A benchmark, not a test: it prints figures and judges nothing (it says whether
the issue's target, remote overhead under 1.5 s per cell once connections are
open, was met on this run).

Set-up: the two SSH test hosts of testcases/netns_hosts.py (network
namespaces joined by a veth pair, Debian's sshd in each; needs root and
openssh-server), the system QEMU, and two cells of one small matrix written
here, both run through the one cell flow (``harness.migration.flow.run_cell``):
the same target (256 MiB q35 TCG guest, 100 MiB dirtier region, precopy over
tcp, matrix.yaml's defaults), once with ``src-host: a, dst-host: b``
(**remote**) and once on this machine (**local**).  The connections to a and b
are opened once, before the first cell, and reused by every cell
(``harness.hosts.ssh.connect`` shares them per host).

One warm-up pair first (its remote cell copies the guest disk to each host: a
cache miss, reported apart), then ``--reps`` pairs (default 5; the order
alternates so load drifts hit both), medians reported.

Breakdown: every call the flow makes on an SSH host is timed by wrapping
:class:`harness.hosts.ssh.SshHost`'s methods in this process (the outermost
call only; calls at the same time count once): ``image`` is ``cached_copy``
(the disk's sha256 here and a stat on the host: the cache hit), ``hashing``
the exact RAM check's per-chunk sha256s on each host and chunk reads,
``start`` starting QEMU under the session watchdog, ``ssh commands`` other
commands (the cell's folders, copies, clean-up), ``files`` SFTP copies and
reads, ``forwards`` the QMP and serial port forwards.  SSH set-up is the
connection (key exchange, authentication, the leftover sweep), once per host.

Usage::

    python3 benchmarks/remote_cell.py               # 5 reps (about 1 min idle)
    python3 benchmarks/remote_cell.py --reps 3 --json figures.json --keep
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Runnable as a plain script from a checkout; the netns hosts live with the tests.
sys.path[:0] = [str(REPO), str(HERE), str(REPO / "testcases")]

import cell_breakdown as cb  # noqa: E402
import netns_hosts  # noqa: E402
from harness.hosts.ssh import SshHost, connect  # noqa: E402
from harness.matrix import load_matrix, tier_cells  # noqa: E402
from harness.migration.flow import run_cell  # noqa: E402
from harness.qemu.build import discover  # noqa: E402
from harness.qemu.process import Interrupted, install_signal_handlers  # noqa: E402
from harness.results import CellResult  # noqa: E402

TARGET_S = 1.5

#: SshHost method -> breakdown category (what the flow asks of a remote host).
CATEGORIES = {
    "cached_copy": "image", "chunk_hashes": "hashing", "start": "start",
    "run": "ssh commands", "python": "ssh commands", "workdir": "ssh commands",
    "put_file": "files", "read_file": "files", "read_range": "files",
    "listen_remote": "forwards", "unlisten_remote": "forwards",
}

#: Category -> (start, end) of every outermost call since the last reset.
TALLY: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
_depth = threading.local()


def covered(intervals: list[tuple[float, float]]) -> float:
    """Wall time covered by ``intervals`` (calls made at the same time, e.g.
    the two hosts hashing at once, count once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def time_ssh_hosts() -> None:
    """Wrap SshHost's methods (this process only) so each outermost call is
    recorded in TALLY under its category; a call made inside another
    (``cached_copy`` running ``mkdir``) counts for the outer one."""
    for name, category in CATEGORIES.items():
        method = getattr(SshHost, name, None)
        if method is None:
            continue

        def timed(self: SshHost, *args: Any, _m: Any = method, _c: str = category,
                  **kwargs: Any) -> Any:
            outer = not getattr(_depth, "n", 0)
            _depth.n = getattr(_depth, "n", 0) + 1
            t0 = time.monotonic()
            try:
                return _m(self, *args, **kwargs)
            finally:
                _depth.n -= 1
                if outer:
                    TALLY[_c].append((t0, time.monotonic()))
        setattr(SshHost, name, timed)


@dataclass
class Rep:
    where: str
    wall: float
    verdict: str
    ram_ok: bool
    total_time_ms: float | None
    downtime_ms: float | None
    breakdown: dict[str, float] = field(default_factory=dict)
    error: str = ""
    #: Category -> how many calls the cell made.
    calls: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.2f} s/{self.calls.get(k, 0)}"
                          for k, v in sorted(self.breakdown.items()))
        return (f"{self.where:6s} {self.wall:6.2f} s  {self.verdict}"
                f"{'' if self.ram_ok else ' RAM DIFFERS'}  QEMU total {self.total_time_ms} ms, "
                f"downtime {self.downtime_ms} ms  [{parts}]" + (f"  {self.error}" if self.error else ""))


def run_one(where: str, cell: Any, logdir: Path) -> Rep:
    TALLY.clear()
    t0 = time.monotonic()
    res: CellResult = run_cell(cell, logdir)
    wall = time.monotonic() - t0
    ram = next((c for c in res.checks if c.name == "ram"), None)
    return Rep(where, wall, res.verdict, ram is not None and ram.passed,
               res.figures.get("total_time_ms"), res.figures.get("downtime_ms"),
               {c: covered(i) for c, i in TALLY.items()}, res.reason,
               {c: len(i) for c, i in TALLY.items()})


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def round_trips(host: SshHost, n: int = 5) -> dict[str, float]:
    """Medians of what one command costs on this host, side by side: through
    the host's long-lived helper (what the hosts layer does now), and on a
    new exec channel each, running ``true`` and ``python3 -c pass`` (what
    every command and script cost before the helper; the watchdog standby
    still pays the latter, off the cell's path)."""
    out = {}
    for what, call in (("helper true", lambda: host.run(["true"])),
                       ("exec true", lambda: host.run_exec(["true"])),
                       ("exec python3 -c pass",
                        lambda: host.run_exec(["python3", "-c", "pass"]))):
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            call().check(host.name)
            times.append(time.monotonic() - t0)
        out[what] = statistics.median(times)
    return out


def summarise(reps: list[Rep], connect_s: dict[str, float]) -> dict[str, Any]:
    remote = [r for r in reps if r.where == "remote" and r.verdict == "passed"]
    local = [r for r in reps if r.where == "local" and r.verdict == "passed"]
    cats = sorted({c for r in reps for c in r.breakdown})
    breakdown = {c: {"remote": med([r.breakdown.get(c, 0.0) for r in remote]),
                     "local": med([r.breakdown.get(c, 0.0) for r in local])} for c in cats}
    overhead = med([r.wall for r in remote]) - med([r.wall for r in local])
    return {"remote_wall_median_s": med([r.wall for r in remote]),
            "local_wall_median_s": med([r.wall for r in local]),
            "remote_overhead_s": overhead, "target_s": TARGET_S,
            "target_met": overhead < TARGET_S, "ssh_connect_s": connect_s,
            "breakdown_median_s": breakdown,
            "completed": {"remote": len(remote), "local": len(local)}}


def report_text(summary: dict[str, Any]) -> str:
    lines = [f"remote cell wall (median): {summary['remote_wall_median_s']:.2f} s; "
             f"local: {summary['local_wall_median_s']:.2f} s",
             f"remote overhead per cell: {summary['remote_overhead_s']:+.2f} s "
             f"(target < {TARGET_S} s once connections are open: "
             f"{'met' if summary['target_met'] else 'NOT met'})",
             "SSH set-up (once per host: connect, keys, auth, leftover sweep): "
             + ", ".join(f"{h} {s:.2f} s" for h, s in summary["ssh_connect_s"].items()),
             "", "remote cell's calls on its hosts (median per cell; a local cell makes none: its",
             "QEMUs are child processes and its RAM check compares the files here):"]
    for cat, v in summary["breakdown_median_s"].items():
        lines.append(f"  {cat:26s} {v['remote']:8.3f} s")
    return "\n".join(lines)


#: The cell of testcases/test_remote.py, across the two hosts and here.
MATRIX = """\
version: 1
defaults:
  timeout: 60
  downtime-tolerance-ms: 250
  capabilities: {{events: true}}
  parameters: {{max-bandwidth: 10G}}   # as matrix.yaml
hosts:
{hosts}
builds:
  system: {{binary: "/usr/bin/qemu-system-{{arch}}", required: true}}
targets:
  across: {{arch: x86_64, machine: q35, accel: tcg, memory: 256M, build: system,
            workload: {{kind: dirtier, base: 2M, region: 100M}}, src-host: a, dst-host: b}}
  here: {{arch: x86_64, machine: q35, accel: tcg, memory: 256M, build: system,
          workload: {{kind: dirtier, base: 2M, region: 100M}}}}
transports: [tcp]
capsets:
  precopy: {{}}
tiers:
  bench:
    product: {{target: [across, here], transport: [tcp], capset: [precopy]}}
"""


def inventory(hosts: Any, shm: Path) -> str:
    """The netns hosts as matrix inventory entries, their work folders in /dev/shm
    (as local cells' RAM files are)."""
    lines = []
    for name in ("a", "b"):
        s = hosts.spec(name)
        lines.append(f"  {name}: {{ssh: {s.user}@{s.addr}, key: {s.key}, known-hosts: "
                     f"{s.known_hosts}, netns: {s.netns}, workdir: {shm / name}, "
                     f"connect-timeout: 10}}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="measured pairs (default 5)")
    p.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON")
    p.add_argument("--keep", action="store_true", help="keep the cells' log folders")
    args = p.parse_args(argv)
    install_signal_handlers()
    say: Callable[[str], None] = cb.progress_line()

    logroot = Path(tempfile.mkdtemp(prefix="mharness-remote-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="mharness-remote-bench-", dir="/dev/shm"))
    load0 = os.getloadavg()
    report: dict[str, Any] = {"machine": cb.machine_info(None), "reps": args.reps,
                              "load_start": load0, "cells": []}
    reps: list[Rep] = []
    version = ""
    try:
        with netns_hosts.netns_two_hosts() as hosts:
            matrix_file = logroot / "matrix.yaml"
            matrix_file.write_text(MATRIX.format(hosts=inventory(hosts, shm)))
            matrix = load_matrix(matrix_file)
            cells = {c.target.name: c for c in tier_cells(matrix, "bench", resolve=discover)}
            version = discover(cells["here"].src_build).version_text
            time_ssh_hosts()
            connect_s: dict[str, float] = {}
            remote: dict[str, SshHost] = {}
            for name in ("a", "b"):
                t0 = time.monotonic()
                remote[name] = connect(matrix.hosts[name])
                connect_s[name] = time.monotonic() - t0
            report["round_trips_s"] = {n: round_trips(h) for n, h in remote.items()}
            sides = {"remote": cells["across"], "local": cells["here"]}
            plan = [("warm-up", w) for w in ("remote", "local")]
            for i in range(args.reps):
                plan += [(f"rep {i + 1}", w) for w in (("remote", "local") if i % 2 == 0
                                                       else ("local", "remote"))]
            for n, (label, where) in enumerate(plan):
                say(f"{label} {where} ({n + 1}/{len(plan)}), load {os.getloadavg()[0]:.1f}")
                rep = run_one(where, sides[where], logroot / f"{n:02d}-{where}")
                say("")
                print(f"{label:8s} {rep.line()}", flush=True)
                report["cells"].append({"label": label, **rep.__dict__})
                if label != "warm-up":
                    reps.append(rep)
            summary = summarise(reps, connect_s)
    except (KeyboardInterrupt, Interrupted):
        report["interrupted"] = True
        print("interrupted", file=sys.stderr)
        summary = summarise(reps, {})
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    report["summary"] = summary
    report["load_end"] = os.getloadavg()
    print()
    print(report_text(summary))
    for name, rt in report.get("round_trips_s", {}).items():
        print(f"host {name} round trips (median of 5): "
              + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in rt.items()))
    print(f"load average {load0[0]:.1f} -> {report['load_end'][0]:.1f} "
          f"({os.cpu_count()} cores); QEMU {version}")
    return cb.finish(report, args.json, args.keep, logroot)


if __name__ == "__main__":
    sys.exit(main())
