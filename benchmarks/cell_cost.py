#!/usr/bin/env python3
"""Cells at the physical limit (issue #16): today's path and the new one, side by side.

A benchmark, not a test: it prints figures and judges nothing.  The machine
here is shared and busy, so every comparison is made in ONE run, alternating
the old and the new path cell by cell (ABAB...), with the load average printed
beside every figure; ratios from one run mean more than absolute seconds.

Targets (each selectable; default 1-3):

1. ``--kvm``: smoke's KVM cells (matrix.yaml, ``--tier``'s cells with
   ``accel: kvm``) with ``firmware: seabios`` (SeaBIOS's full POST, the old
   path) against the firmware the matrix gives them (qboot: the dirtier's PVH
   build from ``-bios qboot.rom -kernel``): wall time and CPU-seconds per cell
   (target: <= 1.5 s and <= 1.5 CPU-s).
2. ``--tcg``: smoke's TCG cell ``x86_64-q35-tcg-unix-precopy`` (256 MiB guest)
   with its RAM files in 4 KiB pages (/dev/shm as it is, the old path)
   against RAM files on a tmpfs with transparent huge pages (``--huge-dir``;
   /dev/shm when set up with ``scripts/setup.sh --huge-shm``; else, as root, a
   private ``huge=advise`` mount for the run), and the same with prealloc off;
   CPU-seconds per phase per process (cell_breakdown.CpuMeter; target:
   <= 0.8 CPU-s in all).
3. ``--compare``: the RAM comparison alone, on two identical RAM-sized files in
   /dev/shm: ``compare_files`` with each chunk test, against the baselines on
   the same files: one libc ``memcmp`` over both whole mappings (memcmp speed)
   and one ``numpy.array_equal`` over them (target: compare_files / memcmp >= 0.8).
4. ``--release BEFORE_REV``: the release tier at BEFORE_REV against
   ``--after-rev`` (default HEAD), each from a clean export (``git archive``),
   results and history kept out of the checkout.  Fair on a busy machine: the
   cells both revisions have (``--every N``: every N-th of them, the same ids on
   both sides) run in ``--slices`` slices, and each slice runs in BOTH trees AT
   ONCE (``-j 1`` each by default), so both sides see the same load; CPU-s are
   each side's own ``mharness run`` and everything it reaped (os.wait4).
   ``--whole``: each side runs its OWN tier (every N-th of its own ids), for
   a tier whose cells changed between the revisions.
   ``--profile [TIER]`` (default release): where a tier's CPU goes.  Each
   migration cell once (``--every N``), in this process, CPU-s per process
   (cell_breakdown.CpuMeter), counted ``repeat`` times as the tier runs it;
   the scenario cells as one measured ``mharness run``.  Prints the costliest
   cells and the total per kind of cell (Linux guest, KVM, negative control,
   TCG), which is what says where a saving can come from.

Usage::

    python3 benchmarks/cell_cost.py                    # targets 1-3, 3 reps each
    python3 benchmarks/cell_cost.py --kvm --reps 5
    python3 benchmarks/cell_cost.py --release 1939d3b^ --every 4   # target 4 only
    python3 benchmarks/cell_cost.py --release 1939d3b^ --every 4 --huge-after
    python3 benchmarks/cell_cost.py --release b2c9ceb --whole   # whole tiers
    python3 benchmarks/cell_cost.py --profile release           # per cell, ranked
    python3 benchmarks/cell_cost.py --json cost.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import numpy as np  # noqa: E402

import cell_breakdown as cb  # noqa: E402
from harness.cell import Cell, MiB  # noqa: E402
from harness.checks import ram  # noqa: E402
from harness.guest.images import build_image  # noqa: E402
from harness.guest.dirtier import IMAGE_NAME, PVH_IMAGE_NAME  # noqa: E402
from harness.matrix import load_matrix, tier_cells  # noqa: E402
from harness.qemu import cmdline, hugeram  # noqa: E402
from harness.qemu.build import discover  # noqa: E402
from harness.qemu.process import Interrupted, install_signal_handlers, kill_all  # noqa: E402
from harness.results import PASSED  # noqa: E402
from harness.run import rundir  # noqa: E402

TCG_CELL = "x86_64-q35-tcg-unix-precopy"


def load() -> float:
    return os.getloadavg()[0]


# --- paths: what "old" and "new" mean for a cell ------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to run a cell: a firmware, a RAM-comparison chunk test, the
    folder its runtime dir (and so its RAM files) goes in, and QEMU's prealloc."""

    label: str
    firmware: str | None = None     # None: the cell's own
    engine: str = ram.DEFAULT_ENGINE
    ram_dir: Path | None = None     # None: the harness's default (/dev/shm)
    prealloc: bool | None = None    # None: the flow's choice; False: always off

    def cell(self, cell: Cell) -> Cell:
        if self.firmware is None or self.firmware == cell.target.firmware:
            return cell
        name = cell.target.name.removesuffix("-qboot")
        return replace(cell, id=f"{cell.id}-as-{self.firmware}",
                       target=replace(cell.target, name=name, firmware=self.firmware))


@dataclass
class Sample:
    variant: str
    cell: str
    verdict: str
    reason: str
    wall_s: float
    cpu: cb.CellCpu
    load: float
    phases: dict[str, float] = field(default_factory=dict)
    compare_mib_s: float | None = None


def run_variant(cell: Cell, v: Variant, logroot: Path) -> Sample:
    """One cell on one path, measured (CPU per phase per process)."""
    c = v.cell(cell)
    ram.DEFAULT_ENGINE, saved = v.engine, ram.DEFAULT_ENGINE
    backend = cmdline.ram_backend
    if v.prealloc is False:
        cmdline.ram_backend = lambda size, path, prealloc: backend(size, path, False)
    env_saved = os.environ.pop(rundir.RUNTIME_DIR_ENV, None)
    if v.ram_dir is not None:
        os.environ[rundir.RUNTIME_DIR_ENV] = str(v.ram_dir)
    try:
        before = load()
        result, cpu = cb.measured_run(c, logroot / v.label / c.id / str(time.monotonic_ns()))
    finally:
        ram.DEFAULT_ENGINE = saved
        cmdline.ram_backend = backend
        os.environ.pop(rundir.RUNTIME_DIR_ENV, None)
        if env_saved is not None:
            os.environ[rundir.RUNTIME_DIR_ENV] = env_saved
    check = result.check("ram")
    return Sample(v.label, c.id, str(result.verdict), result.reason, result.duration, cpu,
                  before, dict(result.phases),
                  check.figures.get("compare_mib_per_s") if check else None)


def alternate(cells: Sequence[Cell], variants: Sequence[Variant], reps: int,
              logroot: Path, say: Callable[[str], None]) -> list[Sample]:
    """Every cell on every path, ``reps`` times, the paths alternating (their
    order flips each rep, so neither always runs first)."""
    samples: list[Sample] = []
    for i in range(reps):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for cell in cells:
            for v in order:
                say(f"rep {i + 1}/{reps}: {cell.id} [{v.label}]")
                s = run_variant(cell, v, logroot)
                samples.append(s)
                note = "" if s.verdict == PASSED else f"  <-- {s.verdict}: {s.reason[:120]}"
                say("")
                print(f"  rep {i + 1} {s.cell:<44} {v.label:<16} {s.wall_s:5.2f} s wall "
                      f"{s.cpu.total:5.2f} CPU-s (harness {s.cpu.harness:.2f}, QEMUs "
                      f"{s.cpu.qemus:.2f})  load {s.load:.2f}{note}", flush=True)
    return samples


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(samples: list[Sample], variants: Sequence[Variant], target_wall: float | None,
              target_cpu: float) -> dict[str, Any]:
    """Medians per variant over passed samples, and the before/after lines."""
    out: dict[str, Any] = {}
    for v in variants:
        ok = [s for s in samples if s.variant == v.label and s.verdict == PASSED]
        out[v.label] = {
            "passed": f"{len(ok)}/{sum(1 for s in samples if s.variant == v.label)}",
            "wall_s": _median([s.wall_s for s in ok]),
            "cpu_s": _median([s.cpu.total for s in ok]),
            "cpu_harness_s": _median([s.cpu.harness for s in ok]),
            "cpu_qemus_s": _median([s.cpu.qemus for s in ok]),
            "wall_max_s": max((s.wall_s for s in ok), default=None),
            "cpu_max_s": max((s.cpu.total for s in ok), default=None),
            "load": [round(s.load, 2) for s in samples if s.variant == v.label],
        }
    print(f"\n  {'path':<16} {'passed':>6} {'wall s (med/max)':>17} {'CPU-s (med/max)':>16} "
          f"{'harness':>8} {'QEMUs':>6}  load averages")
    for v in variants:
        m = out[v.label]
        if m["wall_s"] is None:
            print(f"  {v.label:<16} {m['passed']:>6}  (none passed)")
            continue
        print(f"  {v.label:<16} {m['passed']:>6} {m['wall_s']:8.2f}/{m['wall_max_s']:<8.2f} "
              f"{m['cpu_s']:7.2f}/{m['cpu_max_s']:<8.2f} {m['cpu_harness_s']:8.2f} "
              f"{m['cpu_qemus_s']:6.2f}  {', '.join(f'{x:.1f}' for x in m['load'])}")
    first, last = out[variants[0].label], out[variants[-1].label]
    if first["cpu_s"] and last["cpu_s"]:
        goal = (f"target <= {target_wall} s and <= {target_cpu} CPU-s" if target_wall
                else f"target <= {target_cpu} CPU-s")
        print(f"  before -> after: wall {first['wall_s']:.2f} -> {last['wall_s']:.2f} s "
              f"({first['wall_s'] / last['wall_s']:.1f}x), CPU {first['cpu_s']:.2f} -> "
              f"{last['cpu_s']:.2f} CPU-s ({first['cpu_s'] / last['cpu_s']:.1f}x); {goal}")
    return out


def cpu_tables(samples: list[Sample], variants: Sequence[Variant]) -> None:
    for v in variants:
        cpus = [s.cpu for s in samples if s.variant == v.label and s.verdict == PASSED]
        if cpus:
            print("\n" + cb.cpu_table(cpus, f"{v.label}: CPU-s"))


# --- target 3: the RAM comparison against memcmp on the same buffers ----------


def _pair(size: int, where: Path) -> tuple[Path, Path]:
    a, b = where / "a.ram", where / "b.ram"
    cb._write_pair(a, b, size)
    return a, b


def _on_mapped(a: Path, b: Path, fn: Callable[[np.ndarray, np.ndarray], bool]) -> bool:
    """``fn`` over both files mapped whole (fresh maps, as compare_files makes
    them, so every method pays the same page faults)."""
    with open(a, "rb") as fa, open(b, "rb") as fb, \
            mmap.mmap(fa.fileno(), 0, prot=mmap.PROT_READ) as ma, \
            mmap.mmap(fb.fileno(), 0, prot=mmap.PROT_READ) as mb:
        x, y = np.frombuffer(ma, np.uint8), np.frombuffer(mb, np.uint8)
        try:
            return fn(x, y)
        finally:
            del x, y        # release the buffer exports before the maps close


def memcmp_whole(a: Path, b: Path) -> bool:
    """The baseline: libc memcmp once over both whole mappings."""
    memcmp = ram._memcmp
    assert memcmp is not None
    return _on_mapped(a, b, lambda x, y: memcmp(x.ctypes.data, y.ctypes.data, x.nbytes) == 0)


def numpy_whole(a: Path, b: Path) -> bool:
    return _on_mapped(a, b, lambda x, y: bool(np.array_equal(x, y)))


def bench_compare(sizes: Sequence[int], reps: int, say: Callable[[str], None]) -> dict[str, Any]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    methods: list[tuple[str, Callable[[Path, Path], Any]]] = [
        ("memcmp (baseline)", memcmp_whole),
        ("numpy.array_equal whole", numpy_whole),
    ] + [(f"compare_files [{e}]", lambda a, b, e=e: compare_checked(a, b, e))
         for e in sorted(ram.ENGINES, reverse=True)]
    out: dict[str, Any] = {}
    for size in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="mharness-cost-", dir=base))
        try:
            say(f"writing two {size // MiB} MiB files")
            a, b = _pair(size, tmp)
            speeds: dict[str, list[float]] = {m: [] for m, _ in methods}
            loads = []
            for i in range(reps):
                loads.append(load())
                order = methods if i % 2 == 0 else list(reversed(methods))
                for name, fn in order:
                    say(f"RAM compare {size // MiB} MiB: {name} {i + 1}/{reps}")
                    t = time.perf_counter()
                    fn(a, b)
                    speeds[name].append(size / MiB / (time.perf_counter() - t))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say("")
        med = {m: statistics.median(v) for m, v in speeds.items()}
        base_speed = med["memcmp (baseline)"]
        print(f"\n  two identical {size // MiB} MiB files in {tmp.parent}, {reps} rep(s), "
              f"load {', '.join(f'{x:.1f}' for x in loads)}")
        for name, _ in methods:
            print(f"  {name:<28} {med[name]:8.0f} MiB/s (median; min {min(speeds[name]):.0f})"
                  f"  ratio to memcmp {med[name] / base_speed:.2f}")
        out[f"{size // MiB}M"] = {"mib_per_s": {m: [round(x) for x in v] for m, v in speeds.items()},
                                  "ratio_to_memcmp": {m: round(med[m] / base_speed, 2)
                                                      for m in med},
                                  "load": loads}
    return out


def compare_checked(a: Path, b: Path, engine: str) -> None:
    diff = ram.compare_files(a, b, engine=engine)
    if diff.differing_pages:
        raise RuntimeError(f"{engine}: {diff.differing_pages} pages differ in identical files")


# --- target 4: the release tier before and after --------------------------------

#: Run inside each exported tree in place of ``python3 -m harness``: the tree's
#: own CLI, with its ``-k`` selection replaced by an exact list of cell ids (a
#: ``-k`` expression matches substrings, so ``a or b`` would also run ``a-debian-10.0``).
#: ``select`` is looked up in harness.matrix (imported inside the CLI's plan) and
#: in harness.cli (imported at its top in older trees).
_EXACT_IDS_MAIN = """
import os, sys
ids = set(open(os.environ["MHARNESS_BENCH_IDS"]).read().split())
import harness.matrix, harness.cli
def only(cells, expr):
    return [c for c in cells if c.id in ids]
for mod in (harness.matrix, harness.cli):
    if hasattr(mod, "select"):
        mod.select = only
sys.exit(harness.cli.main(sys.argv[1:]))
"""

#: Warm the tree's image cache (not measured): images are cached by content,
#: so a tree whose recipes differ builds its own once.
_WARM_MAIN = """
from harness.guest.images import RECIPES, build_image
for name in RECIPES:
    if name.startswith("dirtier-x86"):
        build_image(name)
"""


def export_tree(rev: str, dest: Path) -> None:
    """A clean copy of ``rev`` (git archive: no worktree, no index touched)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def tier_ids(tree: Path, tier: str) -> list[str]:
    """The tier's cell ids as ``tree`` expands them, in its order."""
    out = subprocess.run([sys.executable, "-m", "harness", "list", "--tier", tier, "--json"],
                         cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
                         capture_output=True, text=True).stdout
    return [c["id"] for c in json.loads(out)["cells"]]


@dataclass
class TreeRun:
    """One ``mharness run`` of a slice of cells in one tree: its own wall time and
    the CPU of the process and everything it reaped (os.wait4's rusage: the
    runner, its workers and every QEMU, and nothing of the other tree's run)."""

    label: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    exit: int | None = None
    verdicts: dict[str, int] = field(default_factory=dict)
    not_passed: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)   # cell id -> wall s


def start_tree_run(tree: Path, ids: Sequence[str], tier: str, jobs: int, results: Path,
                   log: Path, ram_dir: Path | None = None) -> subprocess.Popen[bytes]:
    ids_file = results.with_suffix(".ids")
    ids_file.parent.mkdir(parents=True, exist_ok=True)
    ids_file.write_text("\n".join(ids) + "\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "MHARNESS_BENCH_IDS": str(ids_file)}
    env.pop(rundir.RUNTIME_DIR_ENV, None)
    if ram_dir is not None:
        env[rundir.RUNTIME_DIR_ENV] = str(ram_dir)
    argv = [sys.executable, "-c", _EXACT_IDS_MAIN, "run", "--tier", tier, "-j", str(jobs),
            "-k", "bench-ids", "--no-history", "--results", str(results)]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_measured(proc: subprocess.Popen[bytes], t0: float, run: TreeRun) -> None:
    """Reap ``proc`` with wait4 (its own rusage, children included) and add its
    wall time and CPU to ``run``."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    run.wall_s += time.monotonic() - t0
    run.cpu_s += ru.ru_utime + ru.ru_stime
    run.exit = proc.returncode if not run.exit else run.exit


def bench_release(before: str, after: str, jobs: int, tier: str, every: int, slices: int,
                  say: Callable[[str], None], after_ram_dir: Path | None = None,
                  whole: bool = False) -> dict[str, Any]:
    """The tier at two revisions, side by side: the cells both revisions have
    (every ``every``-th of them, the same ids on both sides), split into
    ``slices``; each slice runs in both trees AT ONCE (``-j jobs`` each, the
    side started first alternating), so both see the same load from the rest
    of the machine and from each other, and the next slice starts when both
    are done.  CPU-s are each side's own (wait4), summed over the slices.
    ``after_ram_dir``: the after side's runtime folder (MHARNESS_RUNTIME_DIR),
    e.g. a tmpfs with huge pages; the before side keeps the default.
    ``whole``: each side runs every ``every``-th of its OWN tier's ids (a tier
    whose cells changed: the totals compare, the slices still run at once)."""
    import threading

    root = Path(tempfile.mkdtemp(prefix="mharness-release-"))
    trees = {"before": root / "before", "after": root / "after"}
    revs = {"before": before, "after": after}
    runs = {k: TreeRun(f"{k} ({revs[k]})") for k in trees}
    try:
        for k, tree in trees.items():
            export_tree(revs[k], tree)
        ids = {k: tier_ids(tree, tier) for k, tree in trees.items()}
        after_ids = set(ids["after"])
        common = [i for i in ids["before"] if i in after_ids]
        sample = common[::every]
        own = {k: (v[::every] if whole else sample) for k, v in ids.items()}
        what = (f"every {every}. of each side's own tier ({len(own['before'])} -> "
                f"{len(own['after'])} cells)" if whole else
                f"every {every}. of those, {len(sample)} cells, the same ids on both sides")
        print(f"  {tier} tier: {len(ids['before'])} cells at {before}, {len(ids['after'])} at "
              f"{after}, {len(common)} in both; measured: {what}, in {slices} slice(s), "
              f"both sides at once, -j {jobs} each", flush=True)
        for k, tree in trees.items():
            say(f"building {k}'s guest images (not measured)")
            subprocess.run([sys.executable, "-c", _WARM_MAIN], cwd=tree, check=True,
                           env={**os.environ, "PYTHONPATH": str(tree)})
        parts = {k: [v[i::slices] for i in range(slices)] for k, v in own.items()}
        for n in range(slices):
            if not (parts["before"][n] or parts["after"][n]):
                continue
            order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
            l0, t0 = load(), time.monotonic()
            procs = {k: start_tree_run(trees[k], parts[k][n], tier, jobs,
                                       root / "results" / k / f"slice{n}",
                                       root / f"{k}-slice{n}.log",
                                       after_ram_dir if k == "after" else None)
                     for k in order}
            marks = {k: (runs[k].wall_s, runs[k].cpu_s) for k in trees}
            threads = [threading.Thread(target=wait_measured, args=(procs[k], t0, runs[k]))
                       for k in order]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    say(f"slice {n + 1}/{slices}: {len(parts['before'][n])} / "
                        f"{len(parts['after'][n])} cells, "
                        f"{time.monotonic() - t0:.0f} s")
                    t.join(1.0)
            say("")
            line = []
            for k in trees:
                counts = _verdicts(root / "results" / k / f"slice{n}", runs[k].not_passed,
                                   runs[k].durations)
                for v, c in counts.items():
                    runs[k].verdicts[v] = runs[k].verdicts.get(v, 0) + c
                w, c = runs[k].wall_s - marks[k][0], runs[k].cpu_s - marks[k][1]
                line.append(f"{k} {w:5.0f} s {c:6.1f} CPU-s exit {procs[k].returncode} {counts}")
            print(f"  slice {n + 1}/{slices} ({len(parts['before'][n])} / "
                  f"{len(parts['after'][n])} cells), load {l0:.1f} -> {load():.1f}: "
                  + "; ".join(line), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    b, a = runs["before"], runs["after"]
    print(f"\n  {'side':<22} {'wall s':>7} {'CPU-s':>7}  verdicts")
    for r in (b, a):
        print(f"  {r.label:<22} {r.wall_s:7.0f} {r.cpu_s:7.1f}  {r.verdicts}")
        for line in r.not_passed:
            print(f"    {line}")
    scope = (f"whole, every {every}.: {len(own['before'])} -> {len(own['after'])} cells"
             if whole else f"{len(sample)} of {len(common)} common cells")
    print(f"  {tier} tier ({scope}) before -> after: "
          f"CPU {b.cpu_s:.0f} -> {a.cpu_s:.0f} CPU-s ({b.cpu_s / max(a.cpu_s, 1e-9):.2f}x; "
          f"target: 2x), wall {b.wall_s:.0f} -> {a.wall_s:.0f} s (run at once, so wall "
          f"measures sharing as much as the work)")
    return {"before": b.__dict__, "after": a.__dict__, "every": every, "slices": slices,
            "cells": own, "common": len(common), "whole": whole,
            "tier_sizes": {k: len(v) for k, v in ids.items()}}


def _verdicts(results: Path, not_passed: list[str] | None = None,
              durations: dict[str, float] | None = None) -> dict[str, int]:
    """Cells per verdict in a results folder; the ids not passed go to
    ``not_passed``, each cell's wall time to ``durations`` (for ``--json``: which
    cells moved between the two sides)."""
    counts: dict[str, int] = {}
    try:
        data = json.loads((results / "results.json").read_text())
    except (OSError, ValueError):
        return counts
    for c in data.get("cells", []):
        counts[c.get("verdict", "?")] = counts.get(c.get("verdict", "?"), 0) + 1
        if durations is not None and isinstance(c.get("duration"), (int, float)):
            durations[str(c.get("id"))] = float(c["duration"])
        if not_passed is not None and c.get("verdict") != PASSED:
            not_passed.append(f"{c.get('id')}: {c.get('verdict')}")
    return counts


# --- target 4: where a tier's CPU goes ----------------------------------------


def kind_of(cell: Cell) -> str:
    """The group a cell's CPU is counted in: what would have to change to save it."""
    if cell.kind != "migration":
        return "scenario"
    if cell.target.workload.kind == "linux":
        return "Linux guest"
    if cell.expect_fail:
        return "negative control"
    return "KVM" if cell.target.accel == "kvm" else "TCG"


@dataclass
class Profiled:
    cell: str
    group: str
    runs: int            # how often the tier runs it (repeat)
    verdict: str
    wall_s: float
    cpu_s: float         # one run
    harness_s: float

    @property
    def tier_cpu_s(self) -> float:
        return self.cpu_s * self.runs


def bench_profile(tier: str, every: int, logroot: Path, say: Callable[[str], None],
                  top: int = 25) -> dict[str, Any]:
    """Every ``every``-th migration cell of ``tier`` once, measured; the
    scenario cells as one ``mharness run`` (wait4).  A cell the tier repeats
    is counted ``repeat`` times from its one run."""
    cells = tier_cells(load_matrix(REPO / "matrix.yaml"), tier, resolve=discover)
    migration = [c for c in cells if c.kind == "migration"][::every]
    scenarios = [c.id for c in cells if c.kind != "migration"][::every]
    print(f"  {tier} tier: {len(cells)} cells; measured: every {every}. migration cell "
          f"({len(migration)}) once each, and {len(scenarios)} scenario cells as one run")
    rows: list[Profiled] = []
    for i, cell in enumerate(migration):
        say(f"{i + 1}/{len(migration)}: {cell.id}")
        result, cpu = cb.measured_run(cell, logroot / "profile" / cell.id)
        rows.append(Profiled(cell.id, kind_of(cell), cell.repeat or 1, str(result.verdict),
                             result.duration, cpu.total, cpu.harness))
    if scenarios:
        say(f"{len(scenarios)} scenario cells")
        run = TreeRun("scenarios")
        t0 = time.monotonic()
        proc = start_tree_run(REPO, scenarios, tier, 1, logroot / "profile-scenarios",
                              logroot / "profile-scenarios.log")
        wait_measured(proc, t0, run)
        counts = _verdicts(logroot / "profile-scenarios")
        rows.append(Profiled(f"{len(scenarios)} scenario cells (one run)", "scenario", 1,
                             ", ".join(f"{c} {v}" for v, c in counts.items()), run.wall_s,
                             run.cpu_s, 0.0))
    say("")
    total = sum(r.tier_cpu_s for r in rows) or 1e-9
    print(f"\n  costliest cells (CPU-s of one run x runs in the tier), of "
          f"{total:.0f} CPU-s in all, load {load():.1f} now:")
    print(f"  {'CPU-s':>7} {'runs':>4} {'one run':>7} {'wall s':>6} {'harness':>7}  "
          f"{'verdict':<8} cell")
    for r in sorted(rows, key=lambda r: -r.tier_cpu_s)[:top]:
        print(f"  {r.tier_cpu_s:7.1f} {r.runs:>4} {r.cpu_s:7.2f} {r.wall_s:6.1f} "
              f"{r.harness_s:7.2f}  {r.verdict:<8} {r.cell}")
    groups: dict[str, list[Profiled]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    print(f"\n  {'kind of cell':<18} {'runs':>5} {'CPU-s':>7} {'share':>6} {'median run':>10}")
    for name, rs in sorted(groups.items(), key=lambda kv: -sum(r.tier_cpu_s for r in kv[1])):
        cpu = sum(r.tier_cpu_s for r in rs)
        print(f"  {name:<18} {sum(r.runs for r in rs):>5} {cpu:7.1f} {cpu / total:6.0%} "
              f"{statistics.median(r.cpu_s for r in rs):10.2f}")
    return {"tier": tier, "every": every, "total_cpu_s": total,
            "cells": [r.__dict__ for r in rows]}


# --- main -----------------------------------------------------------------------


@contextlib.contextmanager
def huge_tmpfs(given: str | None, say: Callable[[str], None]) -> Iterator[Path | None]:
    """A folder whose RAM files get transparent huge pages: ``--huge-dir``, or
    /dev/shm when the host is set up so (scripts/setup.sh --huge-shm), or, as
    root, a private tmpfs mounted ``huge=advise`` for this run and unmounted
    after it (nothing else on the host changes); None when none can be had."""
    for d in ([Path(given)] if given else []) + [Path("/dev/shm")]:
        if d.is_dir() and hugeram.huge_page_size(d):
            yield d
            return
    if given or os.geteuid() != 0:
        yield None
        return
    mnt = Path(tempfile.mkdtemp(prefix="mharness-huge-"))
    say(f"mounting a huge=advise tmpfs on {mnt}")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=advise,mode=1777", "mharness-huge",
                    str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def smoke_cells(tier: str) -> list[Cell]:
    matrix = load_matrix(REPO / "matrix.yaml")
    return tier_cells(matrix, tier, resolve=discover)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kvm", action="store_true", help="target 1: KVM cells, SeaBIOS vs qboot")
    p.add_argument("--tcg", action="store_true", help="target 2: the TCG cell, old vs new")
    p.add_argument("--compare", action="store_true", help="target 3: RAM comparison vs memcmp")
    p.add_argument("--release", metavar="BEFORE_REV",
                   help="target 4: the release tier at BEFORE_REV and at --after-rev")
    p.add_argument("--after-rev", default="HEAD", help="the 'after' revision (default HEAD)")
    p.add_argument("--whole", action="store_true",
                   help="release tier: each side runs its own tier, not the cells both have")
    p.add_argument("--profile", nargs="?", const="release", metavar="TIER",
                   help="where TIER's CPU goes (default release): every migration cell "
                        "once (--every N), ranked, and the total per kind of cell")
    p.add_argument("--release-tier", default="release", help=argparse.SUPPRESS)
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="release tier: -j of each side (default 1; both sides run at once)")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="release tier: only every N-th cell of those both revisions have "
                        "(default 1: all)")
    p.add_argument("--slices", type=int, default=6,
                   help="release tier: run in this many slices, both sides at once in each "
                        "(default 6)")
    p.add_argument("--huge-dir", metavar="DIR",
                   help="target 2: a tmpfs with huge pages for the 'after' path (default: "
                        "/dev/shm if it has them, else, as root, a private huge=advise mount)")
    p.add_argument("--huge-after", action="store_true",
                   help="release tier: the after side's RAM files on a tmpfs with huge pages "
                        "(--huge-dir, or as for target 2); the before side on /dev/shm")
    p.add_argument("--tier", default="smoke", help="tier whose cells are measured (default smoke)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per path (default 3)")
    p.add_argument("--sizes", default="256,1024", help="RAM compare sizes in MiB (default 256,1024)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    p.add_argument("--keep", action="store_true", help="keep the cells' logs (printed path)")
    args = p.parse_args(argv)
    if not (args.kvm or args.tcg or args.compare or args.release or args.profile):
        args.kvm = args.tcg = args.compare = True

    say = cb.progress_line()
    install_signal_handlers()
    report: dict[str, Any] = {"load_start": os.getloadavg(), "reps": args.reps}
    logroot = Path(tempfile.mkdtemp(prefix="mharness-cost-"))
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"RAM compare engines: {', '.join(ram.ENGINES)} (default {ram.DEFAULT_ENGINE})")
    try:
        if args.kvm or args.tcg:
            for image in (IMAGE_NAME, PVH_IMAGE_NAME):
                build_image(image)          # built once, outside every measurement
            cells = smoke_cells(args.tier)
        if args.kvm:
            kvm = [c for c in cells if c.kind == "migration" and c.target.accel == "kvm"]
            print(f"\n1. KVM cells of {args.tier}: {', '.join(c.id for c in kvm)}")
            variants = [Variant("seabios (before)", firmware="seabios"),
                        Variant("matrix (after)")]
            samples = alternate(kvm, variants, args.reps, logroot, say)
            report["kvm"] = summarize(samples, variants, 1.5, 1.5)
            cpu_tables(samples, variants)
        if args.tcg:
            tcg = [c for c in cells if c.id == TCG_CELL]
            print(f"\n2. TCG cell {TCG_CELL} ({tcg[0].target.memory // MiB} MiB guest)")
            with huge_tmpfs(args.huge_dir, say) as huge:
                print(f"  before: {hugeram.describe(rundir.base_dir() or Path('/tmp'))}")
                variants = [Variant("4 KiB (before)", ram_dir=rundir.base_dir())]
                if huge is None:
                    print("  no tmpfs with huge pages (not root, no --huge-dir): only 'before'")
                else:
                    print(f"  after: {hugeram.describe(huge)}")
                    variants += [Variant("huge, no prealloc", ram_dir=huge, prealloc=False),
                                 Variant("huge (after)", ram_dir=huge)]
                samples = alternate(tcg, variants, args.reps, logroot, say)
            report["tcg"] = summarize(samples, variants, None, 0.8)
            cpu_tables(samples, variants)
        if args.compare:
            print("\n3. RAM comparison against memcmp on the same mappings")
            sizes = [int(x) * MiB for x in args.sizes.split(",")]
            report["compare"] = bench_compare(sizes, max(args.reps, 3), say)
        if args.release:
            print(f"\n4. {args.release_tier} tier, {args.release} against {args.after_rev}")
            with contextlib.ExitStack() as stack:
                huge = (stack.enter_context(huge_tmpfs(args.huge_dir, say))
                        if args.huge_after else None)
                if args.huge_after:
                    print(f"  after side: {hugeram.describe(huge) if huge else 'no huge tmpfs'}")
                report["release"] = bench_release(args.release, args.after_rev, args.jobs,
                                                  args.release_tier, args.every, args.slices,
                                                  say, huge, args.whole)
        if args.profile:
            print(f"\n4. where the {args.profile} tier's CPU goes")
            for image in (IMAGE_NAME, PVH_IMAGE_NAME):
                build_image(image)          # built once, outside every measurement
            report["profile"] = bench_profile(args.profile, args.every, logroot, say)
    except (KeyboardInterrupt, Interrupted) as exc:
        say("")
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'})", file=sys.stderr)
        report["interrupted"] = True
    finally:
        kill_all()
    report["load_end"] = os.getloadavg()
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return cb.finish(report, args.json, args.keep, logroot)


if __name__ == "__main__":
    sys.exit(main())
