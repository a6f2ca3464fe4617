#!/usr/bin/env python3
"""How the matrix engine scales: covering-array generation, and the parallel runner.

A benchmark, not a test: it prints figures (and checks the arrays are complete).

1. Generation.  The model is *every* capability of QEMU 10.0 that the rule
   oracle knows (a boolean factor each; ``events`` is always on) and every
   parameter of 10.0 with its boundary values (for integers: the minimum and
   maximum the oracle allows, besides QEMU's default; booleans both ways;
   enums every value; TLS strings and the bitmap mapping need objects and are
   left out).  For orders 2 and 3 it prints the factors, the cells, the time
   to generate (oracle analysis + covertable + judging every row) and the
   coverage achieved, over ``--gen-reps`` repetitions (min/median/max).
   Target: 3-way under 2 s.

2. The runner.  The wall time of a tier (default: smoke) at ``-j 1`` and at
   ``-j 2``, alternating in one run (``--reps`` pairs), as real ``mharness
   run`` processes.  Other work on the machine makes this noisy: every pair is
   printed, with the median ratio and the spread.  Target: at least 1.6x on 2
   cores.

Usage::

    python3 benchmarks/matrix_scale.py                 # both parts
    python3 benchmarks/matrix_scale.py --no-run        # generation only (no QEMU)
    python3 benchmarks/matrix_scale.py --reps 3 --tier smoke --json figures.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.matrix.covering import (  # noqa: E402
    ALWAYS_ON,
    Context,
    ContextPart,
    Factor,
    Judge,
    SettingsModel,
    coverage,
    generate,
)
from harness.rules import BuildFacts, default_book  # noqa: E402

UINT_MAX = {"uint8": 255, "uint32": 2**32 - 1, "uint64": 2**64 - 1, "size": 2**64 - 1}


def full_model(version: tuple[int, int]) -> list[Factor]:
    """Every capability and parameter value of ``version`` (see the module doc)."""
    book = default_book()
    factors = [Factor(c, "capability", (False, True)) for c in book.cap_names(version)
               if c not in ALWAYS_ON]
    for p in book.param_specs(version):
        if p.qapi in ("StrOrNull", "BitmapMapping"):
            continue
        if p.qapi == "bool":
            values: tuple[Any, ...] = (None, not p.default)
        elif p.qapi.startswith("enum:"):
            values = (None,) + tuple(v for v in book.enum_values(version, p.qapi[5:],
                                                                 BuildFacts())
                                     if v != p.default)
        else:
            lo = p.lo if p.lo is not None else 0
            hi = p.hi if p.hi is not None else UINT_MAX[p.qapi]
            values = tuple(v for v in dict.fromkeys([None, lo, hi])
                           if v is None or v != p.default)
        factors.append(Factor(p.name, "parameter", values))
    return factors


def bench_generation(version: tuple[int, int], order: int, reps: int) -> dict[str, Any]:
    factors = full_model(version)
    ctx = Context(version, version, "tcg")
    times, rows, last = [], 0, None
    for _ in range(reps):
        judge = Judge(ctx)  # a fresh oracle cache each time: nothing carried over
        t0 = time.perf_counter()
        last = generate(factors, order, judge, SettingsModel(factors), seed=0)
        times.append(time.perf_counter() - t0)
        rows = len(last.rows)
    assert last is not None
    t0 = time.perf_counter()
    cov = coverage(last.rows, factors, [ContextPart(ctx, factors, last.analysis)], order)
    cov_s = time.perf_counter() - t0
    return {
        "version": f"{version[0]}.{version[1]}", "order": order, "factors": len(factors),
        "values": sum(len(f.values) for f in factors), "cells": rows,
        "seconds_min": min(times), "seconds_median": statistics.median(times),
        "seconds_max": max(times), "oracle_calls": last.analysis.oracle_calls,
        "criterion": last.criterion, "required": cov.required, "covered": cov.covered,
        "coverage_seconds": cov_s,
        "excluded_values": len(last.analysis.unusable),
        "conflicting_pairs": len(last.analysis.conflicts),
    }


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return float("nan")


def run_tier(tier: str, jobs: int, matrix: str, select: str | None
             ) -> tuple[float, dict[str, int], float, float]:
    """Wall time, verdict counts, CPU seconds (the run and every process under it)
    and the 1-minute load average before it started."""
    with tempfile.TemporaryDirectory(prefix="mharness-bench-") as tmp:
        load = _loadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        argv = [sys.executable, "-m", "harness", "run", "--matrix", matrix,
                "--tier", tier, "-j", str(jobs), "--results", tmp]
        if select:
            argv += ["-k", select]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        try:
            counts = json.loads((Path(tmp) / "results.json").read_text())["counts"]
        except (OSError, ValueError, KeyError):
            counts = {"no results": 1}
        if out.returncode not in (0, 1):
            print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        return wall, counts, cpu, load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen-reps", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2, help="pairs of -j 1 / -j 2 runs")
    ap.add_argument("--tier", default="smoke")
    ap.add_argument("-k", dest="select", default=None, help="only these cells of the tier")
    ap.add_argument("--matrix", default=str(ROOT / "matrix.yaml"))
    ap.add_argument("--no-run", action="store_true", help="skip the runner part (no QEMU)")
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {"generation": [], "runner": None}

    print("covering arrays over every capability and parameter value (TCG, oracle "
          "constraints)")
    print(f"{'QEMU':<6}{'order':>6}{'factors':>9}{'values':>8}{'cells':>7}"
          f"{'gen s (min/med/max)':>24}{'coverage':>18}{'cov s':>7}")
    for version in ((10, 0), (7, 2)):
        for order in (2, 3):
            g = bench_generation(version, order, args.gen_reps)
            figures["generation"].append(g)
            times = f"{g['seconds_min']:.2f}/{g['seconds_median']:.2f}/{g['seconds_max']:.2f}"
            print(f"{g['version']:<6}{order:>6}{g['factors']:>9}{g['values']:>8}"
                  f"{g['cells']:>7}{times:>24}{g['covered']:>9}/{g['required']:<8}"
                  f"{g['coverage_seconds']:>7.2f}")

    if not args.no_run:
        print(f"\ntier '{args.tier}'" + (f" -k '{args.select}'" if args.select else "")
              + f" wall time, -j 1 and -j 2 alternating ({args.reps} pairs); CPU: "
              "seconds used by the run and its QEMUs (cores busy on average); load: "
              "the machine's 1-min load average before the run")
        pairs = []
        for i in range(args.reps):
            j1, c1, cpu1, l1 = run_tier(args.tier, 1, args.matrix, args.select)
            j2, c2, cpu2, l2 = run_tier(args.tier, 2, args.matrix, args.select)
            pairs.append({"j1": j1, "j2": j2, "ratio": j1 / j2, "counts_j1": c1,
                          "counts_j2": c2, "cpu_j1": cpu1, "cpu_j2": cpu2,
                          "load_j1": l1, "load_j2": l2})
            print(f"  pair {i + 1}: -j 1 {j1:5.1f} s (CPU {cpu1:5.1f} s = {cpu1 / j1:.2f} "
                  f"cores, load {l1:.1f})  -j 2 {j2:5.1f} s (CPU {cpu2:5.1f} s = "
                  f"{cpu2 / j2:.2f} cores, load {l2:.1f})  ratio {j1 / j2:.2f}x  "
                  f"{c1} / {c2}")
        ratios = [p["ratio"] for p in pairs]
        figures["runner"] = {"tier": args.tier, "pairs": pairs,
                             "ratio_median": statistics.median(ratios),
                             "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"  ratio median {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
