#!/usr/bin/env python3
"""The remote overhead of a cell: two-host precopy between netns "hosts" vs the same cell here.

A benchmark, not a test: it prints figures and judges nothing (it says whether
the issue's target, remote overhead under 1.5 s per cell once connections are
open, was met on this run).

Set-up: the two SSH test hosts of testcases/netns_hosts.py (network
namespaces joined by a veth pair, Debian's sshd in each; needs root and
openssh-server), the system QEMU, the cell of testcases/test_remote.py (256 MiB
q35 TCG guest, 100 MiB dirtier region, precopy over tcp with the matrix's
default capabilities and parameters).  It runs through
:func:`harness.hosts.remote_cell.run_remote_cell` twice per repetition:

- **remote**: source QEMU on host a, destination on host b, tcp between the
  namespaces' addresses; the connections to a and b are opened once, before
  the first repetition (``harness.hosts.ssh.connect``, reused by every cell);
- **local**: the very same function with :class:`~harness.hosts.local.LocalHost`
  on both sides and tcp over 127.0.0.1, so the difference is only where the
  QEMUs run and how the harness reaches them.

One warm-up pair first (its remote cell copies the guest disk to each host: a
cache miss, reported apart), then ``--reps`` pairs (default 5; the order
alternates so load drifts hit both), medians reported.  RAM files live in
/dev/shm on both sides (as local cells' do) and are removed between cells.

Breakdown: every call the cell makes on its hosts is timed through a proxy
around each host (nothing in the hosts layer changes; calls at the same time
count once): ``image`` is
``cached_copy`` (the disk's sha256 here and a stat on the host: the cache
hit), ``hashing`` the exact RAM check's per-chunk sha256s on each host and any
chunk reads, ``start`` starting QEMU under the session watchdog, ``ssh
commands`` the run directories made on the host, ``forwards`` the QMP and
serial port forwards.  SSH set-up is the connection (key exchange,
authentication, the leftover sweep), once per host.

Usage::

    python3 benchmarks/remote_cell.py               # 5 reps (about 1 min idle)
    python3 benchmarks/remote_cell.py --reps 3 --json figures.json --keep
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import statistics
import sys
import tempfile
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
from harness.cell import TargetSpec  # noqa: E402
from harness.hosts.local import LocalHost  # noqa: E402
from harness.hosts.remote_cell import RemoteCellResult, run_remote_cell  # noqa: E402
from harness.hosts.ssh import SshHost, connect  # noqa: E402
from harness.matrix import load_matrix  # noqa: E402
from harness.matrix.expand import build_for_arch  # noqa: E402
from harness.qemu.build import QemuBuild, discover  # noqa: E402
from harness.qemu.process import Interrupted, install_signal_handlers  # noqa: E402

TARGET_S = 1.5

#: Host method -> breakdown category (the calls run_remote_cell and Machine make).
CATEGORIES = {
    "cached_copy": "image", "chunk_hashes": "hashing", "read_range": "hashing",
    "start": "start", "workdir": "ssh commands", "run": "ssh commands", "python": "ssh commands",
    "listen_remote": "forwards", "unlisten_remote": "forwards",
}


def covered(intervals: list[tuple[float, float]]) -> float:
    """Wall time covered by ``intervals`` (calls made at the same time, e.g.
    the two hosts hashing at once, count once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


class TimedHost:
    """A host whose calls are timed into ``tally`` (category -> call
    intervals); everything else passes through (``is_local``, ``name``...)."""

    def __init__(self, host: Any, tally: dict[str, list[tuple[float, float]]]) -> None:
        self._host = host
        self._tally = tally

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._host, name)
        category = CATEGORIES.get(name)
        if category is None or not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                self._tally[category].append((t0, time.monotonic()))
        return timed


@dataclass
class Rep:
    where: str
    wall: float
    status: str
    ram_ok: bool
    total_time_ms: float | None
    downtime_ms: float | None
    breakdown: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.breakdown.items()))
        return (f"{self.where:6s} {self.wall:6.2f} s  {self.status}"
                f"{'' if self.ram_ok else ' RAM DIFFERS'}  QEMU total {self.total_time_ms} ms, "
                f"downtime {self.downtime_ms} ms  [{parts}]" + (f"  {self.error}" if self.error else ""))


def run_one(where: str, build: QemuBuild, target: TargetSpec, src: Any, dst: Any, addr: str,
            logdir: Path, caps: dict[str, bool], params: dict[str, Any]) -> Rep:
    tally: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    t0 = time.monotonic()
    res: RemoteCellResult = asyncio.run(run_remote_cell(
        build, target, TimedHost(src, tally), TimedHost(dst, tally), addr, logdir,
        caps=caps, params=params))
    wall = time.monotonic() - t0
    ram_ok = res.ram is not None and not res.ram.differing_chunks
    return Rep(where, wall, res.status, ram_ok, res.figures.get("total-time"),
               res.figures.get("downtime"), {c: covered(i) for c, i in tally.items()}, res.error)


def remove_ram(host: Any) -> None:
    """The cell's RAM files go between cells (the next cell starts on fresh ones)."""
    for role in ("src", "dst"):
        path = f"{host.workdir(role)}/{role}.ram"
        host.run(["rm", "-f", path]).check(host.name)


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def round_trips(host: SshHost, n: int = 5) -> dict[str, float]:
    """Medians of what every SSH command costs on this host: an exec channel
    running ``true``, and one running ``python3 -c pass`` (the hosts layer's
    scripts, the watchdog and the hashing, each start a python3)."""
    out = {}
    for what, argv in (("exec true", ["true"]), ("python3 -c pass", ["python3", "-c", "pass"])):
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            host.run(argv).check(host.name)
            times.append(time.monotonic() - t0)
        out[what] = statistics.median(times)
    return out


def summarise(reps: list[Rep], connect_s: dict[str, float]) -> dict[str, Any]:
    remote = [r for r in reps if r.where == "remote" and r.status == "completed"]
    local = [r for r in reps if r.where == "local" and r.status == "completed"]
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
             "", f"{'per cell (median)':28s} {'remote':>8s} {'local':>8s} {'extra':>8s}"]
    for cat, v in summary["breakdown_median_s"].items():
        lines.append(f"{cat:28s} {v['remote']:8.3f} {v['local']:8.3f} "
                     f"{v['remote'] - v['local']:+8.3f}")
    lines.append("(local QEMUs start as plain child processes: not in 'start')")
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

    matrix = load_matrix(REPO / "matrix.yaml")
    build = discover(build_for_arch(matrix.builds["system"], "x86_64"))
    if build.missing:
        print(f"system QEMU missing: {build.missing}", file=sys.stderr)
        return 2
    d = matrix.defaults
    caps, params = dict(d.capabilities), dict(d.parameters)
    target = TargetSpec("remote-x86")
    logroot = Path(tempfile.mkdtemp(prefix="mharness-remote-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="mharness-remote-bench-", dir="/dev/shm"))
    load0 = os.getloadavg()
    report: dict[str, Any] = {"machine": cb.machine_info(build), "reps": args.reps,
                              "load_start": load0, "cells": []}
    reps: list[Rep] = []
    try:
        with netns_hosts.netns_two_hosts() as hosts:
            connect_s: dict[str, float] = {}
            remote: dict[str, SshHost] = {}
            for name in ("a", "b"):
                t0 = time.monotonic()
                remote[name] = connect(hosts.spec(name, workdir=str(shm / name)))
                connect_s[name] = time.monotonic() - t0
            report["round_trips_s"] = {n: round_trips(h) for n, h in remote.items()}
            local = LocalHost("local", root=shm / "local")
            addr_b = hosts.hosts["b"].addr
            sides = {"remote": (remote["a"], remote["b"], addr_b),
                     "local": (local, local, "127.0.0.1")}
            plan = [("warm-up", w) for w in ("remote", "local")]
            for i in range(args.reps):
                plan += [(f"rep {i + 1}", w) for w in (("remote", "local") if i % 2 == 0
                                                       else ("local", "remote"))]
            for n, (label, where) in enumerate(plan):
                say(f"{label} {where} ({n + 1}/{len(plan)}), load {os.getloadavg()[0]:.1f}")
                src, dst, addr = sides[where]
                rep = run_one(where, build, target, src, dst, addr,
                              logroot / f"{n:02d}-{where}", caps, params)
                for h in {src, dst}:
                    remove_ram(h)
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
          f"({os.cpu_count()} cores); QEMU {build.version_text}")
    return cb.finish(report, args.json, args.keep, logroot)


if __name__ == "__main__":
    sys.exit(main())
