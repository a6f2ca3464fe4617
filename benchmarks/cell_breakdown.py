#!/usr/bin/env python3
"""Where the time of a migration cell goes, and how fast the RAM comparison is.

A benchmark, not a test: it prints figures and judges nothing about time.

For guests of 128 MiB and 1 GiB under TCG and KVM (KVM is skipped, with the
reason printed, when this host cannot use it) it builds real cells as
``harness.cell.Cell`` objects -- the system QEMU build, q35, unix transport,
``max-bandwidth`` 10G, the dirtier guest -- runs each ``--reps`` times through
``harness.migration.flow.run_cell`` and prints, as min/median over the repetitions, the
time of every phase of the cell, the cell's wall time, QEMU's own
``total-time`` and ``downtime``, and the throughput of the exact RAM
comparison inside the cell.

CPU-seconds per phase per process.  Every cell is measured with
:class:`CpuMeter`: at each phase boundary of the flow it reads the harness's
own CPU time (``time.process_time``) and each QEMU's (utime + stime of
``/proc/<pid>/stat``; the PIDs are the flow's Machine objects).  What a QEMU
spends after its last sample (quitting, exiting) is the difference between
``getrusage(RUSAGE_CHILDREN)`` over the cell, which counts every QEMU the
cell started once reaped, and the samples; what the harness spends outside
the phases (build discovery from its cache, the static VMState check,
removing the RAM files) is its total less the phases.  ``--cpu`` prints the
table per configuration.

Side by side, in the same run, it times ``harness.checks.ram.compare_files``
alone on two identical 1 GiB files in /dev/shm against two naive pure-Python
baselines, and prints MiB/s and the ratios.

Dirtier region size.  The guest rewrites its whole region on every pass, far
faster than a precopy iteration takes, so after every dirty-bitmap sync the
whole region is dirty again.  QEMU switches over once the remaining dirty
memory fits in ``bandwidth x downtime-limit`` (300 ms by default), so a region
converges without luck only while ``region <= bandwidth x 0.3 s``.  The
measured bandwidth here is ~1 GB/s once the destination's memory is populated
(less under load, and the TCG vCPU takes a whole core of the two), which puts
the bound near 300 MiB.  Hence the default ``min(guest / 2, 256 MiB)``: 64 MiB
in a 128 MiB guest, 256 MiB in a 1 GiB guest.  ``--region 1024=512`` overrides
that to see the edge (a 512 MiB region converges only when a dirty-sync
happens to catch the guest mid-pass; see benchmarks/README.md).

Usage::

    python3 benchmarks/cell_breakdown.py              # full: 2 sizes x TCG/KVM x 3 reps
    python3 benchmarks/cell_breakdown.py --quick      # 128 MiB TCG, 1 rep (smoke run)
    python3 benchmarks/cell_breakdown.py --reps 5 --json figures.json --keep
"""
from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# Runnable as a plain script from a checkout (python3 benchmarks/cell_breakdown.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from harness.cell import BuildSpec, Cell, MiB, TargetSpec, WorkloadSpec  # noqa: E402
from harness.checks.ram import compare_files  # noqa: E402
from harness.migration import context as flow_context  # noqa: E402
from harness.migration.flow import run_cell  # noqa: E402
from harness.qemu.build import QemuBuild, discover  # noqa: E402
from harness.qemu.process import Interrupted, install_signal_handlers, kill_all  # noqa: E402
from harness.qemu.procfs import stat_fields  # noqa: E402
from harness.results import PASSED, SKIPPED, CellResult  # noqa: E402

GiB = 1024 * MiB
QEMU = "/usr/bin/qemu-system-x86_64"
MAX_BANDWIDTH = 10 * GiB
KVM_CPU = "qemu64,-kvmclock"      # -cpu host/max abort here; kvmclock page differs
REGION_BASE = 2 * MiB
REGION_CAP = 256 * MiB
COMPARE_SIZE = 1 * GiB

#: (column title, phases summed into it)
PHASE_COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("launch", ("launch",)),
    ("config", ("configure",)),
    ("warm-up", ("warmup",)),
    ("migrate", ("migrate",)),
    ("verify", ("verify",)),
    ("live+tdown", ("liveness", "teardown")),
]


# --- CPU-seconds per phase per process ----------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
#: The processes a cell's CPU is split between, in table order.
PROCESSES = ("harness", "src", "dst")
#: Pseudo-phases: the harness outside the flow's phases, and the QEMUs after
#: their last sample (the teardown's quit and exit).
OUTSIDE = "outside phases"
EXIT = "QEMU exit"


def proc_cpu(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds; None once gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    # proc(5) fields 14 and 15 (utime, stime); stat_fields starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_cpu() -> float:
    """CPU of every reaped child of this process (RUSAGE_CHILDREN), seconds."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CellCpu:
    """Where one cell's CPU-seconds went: ``phases[phase][process]``."""

    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    harness: float = 0.0
    qemus: float = 0.0

    @property
    def total(self) -> float:
        return self.harness + self.qemus

    def of(self, process: str) -> float:
        return self.harness if process == "harness" else sum(
            p.get(process, 0.0) for p in self.phases.values())

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        return list(self.phases.items())


class CpuMeter:
    """Samples the harness's and both QEMUs' CPU time at every phase boundary
    of the cell flow, by wrapping ``CellContext.phase`` (the flow's one phase
    timer) while a cell runs; nothing in the flow changes.  A QEMU is known by
    its PID, so a destination replaced mid-cell (cancel-retry) is counted
    from its own start."""

    def __init__(self) -> None:
        self._cpu = CellCpu()

    @staticmethod
    def _sample(ctx: Any) -> dict[str, tuple[int, float | None]]:
        out: dict[str, tuple[int, float | None]] = {"harness": (0, time.process_time())}
        for role in ("src", "dst"):
            m = getattr(ctx, role, None)
            if m is not None and m.proc is not None:
                out[role] = (m.proc.pid, proc_cpu(m.proc.pid))
        return out

    def _add(self, name: str, before: dict[str, tuple[int, float | None]],
             after: dict[str, tuple[int, float | None]]) -> None:
        row = self._cpu.phases.setdefault(name, {})
        for proc, (pid, value) in after.items():
            if value is None:
                continue        # exited during the phase: its rest is in EXIT
            pid0, value0 = before.get(proc, (pid, 0.0))
            start = value0 if pid0 == pid and value0 is not None else 0.0
            row[proc] = row.get(proc, 0.0) + value - start

    @contextlib.contextmanager
    def measuring(self) -> Iterator[CellCpu]:
        """Measure the cells run inside the block (one at a time)."""
        original = flow_context.CellContext.phase
        meter = self

        @contextlib.contextmanager
        def phase(ctx: Any, name: str) -> Iterator[None]:
            before = meter._sample(ctx)
            try:
                with original(ctx, name):
                    yield
            finally:
                meter._add(name, before, meter._sample(ctx))

        self._cpu = CellCpu()
        h0, c0 = time.process_time(), children_cpu()
        flow_context.CellContext.phase = phase  # type: ignore[method-assign]
        try:
            yield self._cpu
        finally:
            flow_context.CellContext.phase = original  # type: ignore[method-assign]
            cpu = self._cpu
            cpu.harness = time.process_time() - h0
            cpu.qemus = children_cpu() - c0
            sampled_harness = sum(p.get("harness", 0.0) for p in cpu.phases.values())
            sampled_qemus = sum(v for p in cpu.phases.values()
                                for k, v in p.items() if k != "harness")
            cpu.phases[OUTSIDE] = {"harness": cpu.harness - sampled_harness}
            cpu.phases[EXIT] = {"src+dst": cpu.qemus - sampled_qemus}


def measured_run(cell: Cell, logdir: Path, **kwargs: Any) -> tuple[CellResult, CellCpu]:
    """``run_cell`` with its CPU-seconds split per phase and process."""
    with CpuMeter().measuring() as cpu:
        result = run_cell(cell, logdir, **kwargs)
    return result, cpu


def cpu_table(cpus: Sequence[CellCpu], title: str = "") -> str:
    """Median CPU-seconds per phase (rows) and process (columns) over ``cpus``."""
    if not cpus:
        return ""
    phases: list[str] = []
    for c in cpus:
        phases += [p for p in c.phases if p not in phases]
    cols = list(PROCESSES) + ["src+dst"]
    lines = [f"| {title or 'phase'} | " + " | ".join(cols) + " | all |",
             "|---|" + "---|" * (len(cols) + 1)]

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    for name in phases:
        cells = [med([c.phases.get(name, {}).get(col, 0.0) for c in cpus]) for col in cols]
        row_total = med([sum(c.phases.get(name, {}).values()) for c in cpus])
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" if v else "" for v in cells)
                     + f" | {row_total:.3f} |")
    totals = [med([c.harness for c in cpus]), med([c.of("src") for c in cpus]),
              med([c.of("dst") for c in cpus])]
    lines.append("| **total** | " + " | ".join(f"{v:.3f}" for v in totals)
                 + f" | {med([c.phases.get(EXIT, {}).get('src+dst', 0.0) for c in cpus]):.3f}"
                 + f" | {med([c.total for c in cpus]):.3f} |")
    return "\n".join(lines)


# --- cells -------------------------------------------------------------------


def default_region(memory: int) -> int:
    """Half the guest, at most 256 MiB (see the module docstring for why)."""
    return min(memory // 2, REGION_CAP)


def make_cell(build: BuildSpec, accel: str, memory: int, region: int) -> Cell:
    target = TargetSpec(
        name=f"x86_64-q35-{accel}-{memory // MiB}M",
        arch="x86_64", machine="q35", accel=accel, memory=memory,
        cpu=KVM_CPU if accel == "kvm" else None,
        workload=WorkloadSpec(kind="dirtier", region_base=REGION_BASE, region_size=region,
                              warmup_passes=3))
    return Cell(
        id=f"bench-{target.name}-r{region // MiB}M-unix-precopy",
        target=target, src_build=build, dst_build=build, transport="unix",
        capabilities=(("events", True),),
        parameters=(("max-bandwidth", MAX_BANDWIDTH),),
        timeout=60.0, tier="benchmark", origin="benchmarks/cell_breakdown.py")


@dataclass
class Rep:
    """One run of a cell, reduced to the figures the table needs."""

    verdict: str
    reason: str
    wall_s: float
    phases: dict[str, float]
    total_time_ms: float | None
    downtime_ms: float | None
    compare_mib_per_s: float | None
    dirty_sync_count: int | None
    ram_transferred_mib: float | None
    guest_gap_ms: float | None
    foreign_qemus: int
    loadavg: float
    #: CPU-seconds per phase per process (CpuMeter).
    cpu: CellCpu | None = None

    @classmethod
    def from_result(cls, r: CellResult, foreign: int, load: float,
                    cpu: CellCpu | None = None) -> "Rep":
        ram = r.check("ram")
        down = r.check("downtime")
        f = r.figures
        return cls(
            verdict=r.verdict, reason=r.reason, wall_s=r.duration, phases=dict(r.phases),
            total_time_ms=f.get("total_time_ms"), downtime_ms=f.get("downtime_ms"),
            compare_mib_per_s=ram.figures.get("compare_mib_per_s") if ram else None,
            dirty_sync_count=f.get("dirty_sync_count"),
            ram_transferred_mib=(round(f["ram_transferred"] / MiB, 1)
                                 if f.get("ram_transferred") else None),
            guest_gap_ms=down.figures.get("guest_gap_ms") if down else None,
            foreign_qemus=foreign, loadavg=load, cpu=cpu)


@dataclass
class Config:
    accel: str
    memory: int
    region: int
    reps: list[Rep] = field(default_factory=list)
    skipped: str | None = None

    @property
    def label(self) -> str:
        return f"{self.accel.upper()} {_size(self.memory)} (region {_size(self.region)})"


def _size(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


def foreign_qemus() -> int:
    """qemu-system processes running right now that this script did not start
    (between cells ours are all gone): other people's tests, i.e. noise."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("qemu-system"):
            count += 1
    return count


def run_config(cfg: Config, build: BuildSpec, reps: int, logroot: Path,
               say: Callable[[str], None]) -> None:
    cell = make_cell(build, cfg.accel, cfg.memory, cfg.region)
    for i in range(reps):
        foreign, load = foreign_qemus(), os.getloadavg()[0]
        logdir = logroot / cell.id / f"rep{i + 1}"
        result, cpu = measured_run(cell, logdir, progress=lambda phase: say(
            f"  {cfg.label} rep {i + 1}/{reps}: {phase}"))
        rep = Rep.from_result(result, foreign, load, cpu)
        cfg.reps.append(rep)
        if result.verdict == SKIPPED:
            cfg.skipped = result.reason
            say("")
            print(f"  {cfg.label}: skipped: {result.reason}")
            return
        say("")
        note = "" if result.verdict == PASSED else f"  <-- {result.verdict}: {result.reason}"
        print(f"  {cfg.label} rep {i + 1}/{reps}: {result.verdict}, "
              f"{rep.wall_s:.2f} s wall, migrate {rep.phases.get('migrate', 0):.2f} s, "
              f"downtime {rep.downtime_ms} ms, {rep.dirty_sync_count} dirty syncs, "
              f"{cpu.total:.2f} CPU-s (harness {cpu.harness:.2f}, QEMUs {cpu.qemus:.2f}), "
              f"other qemus {foreign}, load {load:.2f}{note}", flush=True)


# --- RAM comparison alone ----------------------------------------------------


def _write_pair(a: Path, b: Path, size: int) -> None:
    """Two identical files of incompressible-looking data (not sparse: tmpfs
    holes would read as the zero page and flatter everyone)."""
    rng = np.random.default_rng(20240601)
    block = rng.integers(0, 256, size=16 * MiB, dtype=np.uint8)
    with open(a, "wb") as fa, open(b, "wb") as fb:
        for i in range(0, size, len(block)):
            block[:8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)
            chunk = block[: min(len(block), size - i)].tobytes()
            fa.write(chunk)
            fb.write(chunk)


def naive_chunks(a: Path, b: Path, chunk: int = 1 * MiB) -> int:
    """Baseline 1: read both files 1 MiB at a time and compare the bytes
    objects (``==`` is a memcmp); count differing 4 KiB pages only inside a
    differing chunk.  Returns the number of differing pages."""
    bad = 0
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            ca, cb = fa.read(chunk), fb.read(chunk)
            if not ca and not cb:
                return bad
            if ca != cb:
                bad += sum(ca[o:o + 4096] != cb[o:o + 4096] for o in range(0, len(ca), 4096))


def naive_pages(a: Path, b: Path) -> int:
    """Baseline 2: the loop one writes first -- both files mapped, one Python
    iteration and one slice comparison per 4 KiB page."""
    bad = 0
    with open(a, "rb") as fa, open(b, "rb") as fb, \
            mmap.mmap(fa.fileno(), 0, prot=mmap.PROT_READ) as ma, \
            mmap.mmap(fb.fileno(), 0, prot=mmap.PROT_READ) as mb:
        for o in range(0, len(ma), 4096):
            if ma[o:o + 4096] != mb[o:o + 4096]:
                bad += 1
    return bad


def bench_compare(size: int, reps: int, say: Callable[[str], None]) -> dict[str, Any]:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    tmp = Path(tempfile.mkdtemp(prefix="mharness-bench-cmp-", dir=base))
    a, b = tmp / "a.ram", tmp / "b.ram"
    out: dict[str, Any] = {"size_mib": size // MiB, "dir": str(tmp.parent), "reps": reps}
    try:
        say(f"  writing two {_size(size)} files in {tmp.parent}")
        _write_pair(a, b, size)
        methods: list[tuple[str, str, Callable[[], int]]] = [
            ("compare_files", "harness.checks.ram.compare_files (mmap + numpy, 16 MiB chunks)",
             lambda: compare_files(a, b).differing_pages),
            ("naive_1mib_chunks", "naive: read 1 MiB chunks, bytes ==", lambda: naive_chunks(a, b)),
            ("naive_4k_pages", "naive: Python loop over 4 KiB mmap slices", lambda: naive_pages(a, b)),
        ]
        for key, title, fn in methods:
            speeds = []
            for i in range(reps):
                say(f"  RAM compare: {title} {i + 1}/{reps}")
                t = time.perf_counter()
                bad = fn()
                dt = time.perf_counter() - t
                if bad:
                    raise RuntimeError(f"{key} found {bad} differing pages in identical files")
                speeds.append(size / MiB / dt)
            out[key] = {"title": title, "mib_per_s": [round(s) for s in speeds],
                        "min": round(min(speeds)), "median": round(statistics.median(speeds)),
                        "max": round(max(speeds))}
        say("")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = out["compare_files"]["median"]
    out["ratio_vs_naive_1mib_chunks"] = round(med / out["naive_1mib_chunks"]["median"], 2)
    out["ratio_vs_naive_4k_pages"] = round(med / out["naive_4k_pages"]["median"], 2)
    return out


# --- output ------------------------------------------------------------------


def _mm(values: Sequence[float | None], fmt: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{format(min(vals), fmt)} / {format(statistics.median(vals), fmt)}"


def _summary(values: Sequence[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def config_columns(cfg: Config) -> dict[str, dict[str, float] | None]:
    """Per column, min/median/max over the passed repetitions."""
    ok = [r for r in cfg.reps if r.verdict == PASSED]
    cols: dict[str, dict[str, float] | None] = {}
    for title, names in PHASE_COLUMNS:
        cols[title] = _summary([sum(r.phases.get(n, 0.0) for n in names) for r in ok])
    cols["cell wall"] = _summary([r.wall_s for r in ok])
    cols["other"] = _summary([r.wall_s - sum(r.phases.values()) for r in ok])
    cols["QEMU total ms"] = _summary([r.total_time_ms for r in ok])
    cols["downtime ms"] = _summary([r.downtime_ms for r in ok])
    cols["RAM cmp MiB/s"] = _summary([r.compare_mib_per_s for r in ok])
    cols["dirty syncs"] = _summary([r.dirty_sync_count for r in ok])
    cols["CPU-s"] = _summary([r.cpu.total for r in ok if r.cpu])
    cols["CPU-s harness"] = _summary([r.cpu.harness for r in ok if r.cpu])
    cols["CPU-s QEMUs"] = _summary([r.cpu.qemus for r in ok if r.cpu])
    return cols


def markdown_table(configs: list[Config]) -> str:
    heads = ["guest", "ok"] + [t for t, _ in PHASE_COLUMNS] + [
        "other", "cell wall", "CPU-s", "QEMU total ms", "downtime ms", "RAM cmp MiB/s"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
    for cfg in configs:
        if cfg.skipped:
            lines.append(f"| {cfg.label} | skipped: {cfg.skipped} |" + " |" * (len(heads) - 2))
            continue
        ok = [r for r in cfg.reps if r.verdict == PASSED]
        row = [cfg.label, f"{len(ok)}/{len(cfg.reps)}"]
        for _, names in PHASE_COLUMNS:
            row.append(_mm([sum(r.phases.get(n, 0.0) for n in names) for r in ok], ".2f"))
        row.append(_mm([r.wall_s - sum(r.phases.values()) for r in ok], ".2f"))
        row.append(_mm([r.wall_s for r in ok], ".2f"))
        row.append(_mm([r.cpu.total if r.cpu else None for r in ok], ".2f"))
        row.append(_mm([r.total_time_ms for r in ok], ".0f"))
        row.append(_mm([r.downtime_ms for r in ok], ".0f"))
        row.append(_mm([r.compare_mib_per_s for r in ok], ".0f"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine_info(build: QemuBuild | None) -> dict[str, Any]:
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kvm_kind = next((m for m in ("kvm_pvm", "kvm_intel", "kvm_amd")
                     if Path(f"/sys/module/{m}").exists()), None)
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_total / GiB, 1),
        "kernel": platform.release(), "kvm_module": kvm_kind,
        "qemu": build.version_text if build else None,
        "qemu_package": build.package if build else None,
        "python": platform.python_version(), "numpy": np.__version__,
    }


# --- main --------------------------------------------------------------------


def progress_line() -> Callable[[str], None]:
    """``say(text)``: a live progress line on a terminal (stderr); nothing otherwise."""
    tty = sys.stderr.isatty()

    def say(text: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + text[:120])
            sys.stderr.flush()
    return say


def finish(report: dict[str, Any], json_path: str | None, keep: bool, logroot: Path) -> int:
    """The benchmarks' last step: every figure to ``--json`` FILE, the cells'
    logs kept (``--keep``: the folder is printed) or removed; the exit status
    (130 when the run was interrupted)."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures: {json_path}")
    if keep:
        print(f"cell logs: {logroot}")
    else:
        shutil.rmtree(logroot, ignore_errors=True)
    return 130 if report.get("interrupted") else 0


def parse_region(text: str) -> tuple[int, int]:
    try:
        mem, region = text.split("=")
        return int(mem) * MiB, int(region) * MiB
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GUEST_MIB=REGION_MIB, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions per configuration (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 128 MiB under TCG only, 1 repetition")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    p.add_argument("--keep", action="store_true", help="keep the per-cell logs (printed path)")
    p.add_argument("--accel", action="append", choices=["tcg", "kvm"],
                   help="only this accelerator (repeatable; default both)")
    p.add_argument("--memory", action="append", type=int, metavar="MIB",
                   help="guest size in MiB (repeatable; default 128 and 1024)")
    p.add_argument("--region", action="append", type=parse_region, default=[],
                   metavar="GUEST_MIB=REGION_MIB",
                   help="dirtier region for a guest size, e.g. 1024=512 "
                        "(default: half the guest, at most 256 MiB)")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the stand-alone RAM comparison benchmark")
    p.add_argument("--no-cells", action="store_true", help="only the RAM comparison benchmark")
    p.add_argument("--cpu", action="store_true",
                   help="also print CPU-seconds per phase per process for each configuration")
    args = p.parse_args(argv)

    reps = 1 if args.quick else args.reps
    if reps < 1:
        p.error("--reps must be at least 1")
    accels = ["tcg"] if args.quick else (args.accel or ["tcg", "kvm"])
    memories = [128 * MiB] if args.quick else [m * MiB for m in (args.memory or [128, 1024])]
    regions = dict(args.region)
    for memory in memories:
        region = regions.get(memory, default_region(memory))
        if REGION_BASE + region > memory:
            p.error(f"a {region // MiB} MiB region from {REGION_BASE // MiB} MiB does not fit "
                    f"in a {memory // MiB} MiB guest")

    say = progress_line()
    install_signal_handlers()
    t_start = time.monotonic()
    load_start = os.getloadavg()
    foreign_start = foreign_qemus()
    spec = BuildSpec(name="system", binary=QEMU, required=True)
    build = discover(spec)
    if build.missing:
        print(f"cannot benchmark: {build.missing}", file=sys.stderr)
        return 2
    logroot = Path(tempfile.mkdtemp(prefix="mharness-bench-"))
    info = machine_info(build)
    print(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, "
          f"kernel {info['kernel']}, KVM module {info['kvm_module'] or 'none'}; "
          f"QEMU {info['qemu']} ({info['qemu_package']})")
    print(f"noise at start: load average {load_start[0]:.2f}, "
          f"{foreign_start} other qemu-system process(es) running")

    report: dict[str, Any] = {"machine": info, "reps": reps, "quick": args.quick,
                              "load_start": load_start, "foreign_qemus_start": foreign_start,
                              "configs": []}
    configs: list[Config] = []
    try:
        if not args.no_compare:
            size = COMPARE_SIZE
            print(f"\nRAM comparison alone: two identical {_size(size)} files, {reps} rep(s)")
            cmp = bench_compare(size, reps, say)
            report["ram_compare"] = cmp
            for key in ("compare_files", "naive_1mib_chunks", "naive_4k_pages"):
                m = cmp[key]
                print(f"  {m['title']:<66} {_mm(m['mib_per_s'], '.0f'):>13} MiB/s (min / median)")
            print(f"  compare_files / naive 1 MiB chunks: {cmp['ratio_vs_naive_1mib_chunks']}x; "
                  f"/ naive 4 KiB loop: {cmp['ratio_vs_naive_4k_pages']}x (medians)")

        if not args.no_cells:
            for accel in accels:
                problem = build.accel_problems.get(accel, "not compiled into this binary")
                if problem:
                    print(f"\n{accel.upper()} skipped: {problem}")
                configs += [Config(accel, memory, regions.get(memory, default_region(memory)),
                                   skipped=problem) for memory in memories]
            print(f"\ncells: q35, unix, max-bandwidth 10G, dirtier from 2 MiB, {reps} rep(s) each")
            for cfg in configs:
                if not cfg.skipped:
                    run_config(cfg, spec, reps, logroot, say)
    except (KeyboardInterrupt, Interrupted) as exc:
        say("")
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): printing what was measured", file=sys.stderr)
        report["interrupted"] = True
    finally:
        kill_all()

    if configs:
        print("\nPer phase, seconds, min / median over passed reps; 'other' = cell wall minus "
              "the phases (QEMU discovery cache, removing the RAM files); QEMU total and "
              "downtime from query-migrate:\n")
        print(markdown_table(configs))
        failed = [(cfg, i, r) for cfg in configs for i, r in enumerate(cfg.reps, 1)
                  if r.verdict not in (PASSED, SKIPPED)]
        for cfg, i, r in failed:
            print(f"\n{cfg.label} rep {i}: {r.verdict}: {r.reason}")
        if args.cpu:
            print("\nCPU-seconds per phase per process, median over passed reps "
                  f"('{OUTSIDE}': the harness between phases; '{EXIT}': the QEMUs after "
                  "their last sample):")
            for cfg in configs:
                cpus = [r.cpu for r in cfg.reps if r.cpu and r.verdict == PASSED]
                if cpus:
                    print("\n" + cpu_table(cpus, cfg.label))
    for cfg in configs:
        report["configs"].append({
            "accel": cfg.accel, "memory_mib": cfg.memory // MiB, "region_mib": cfg.region // MiB,
            "skipped": cfg.skipped, "columns": config_columns(cfg),
            "reps": [{**r.__dict__, "cpu": r.cpu.__dict__ if r.cpu else None}
                     for r in cfg.reps],
        })

    load_end = os.getloadavg()
    report["load_end"] = load_end
    report["wall_s"] = round(time.monotonic() - t_start, 2)
    seen = [r.foreign_qemus for c in configs for r in c.reps]
    spread = []
    for cfg in configs:
        ok = [r.wall_s for r in cfg.reps if r.verdict == PASSED]
        if len(ok) > 1:
            spread.append(f"{cfg.label} {max(ok) / min(ok):.2f}x")
    print(f"\nnoise: load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; "
          f"other qemu-system processes running before {sum(1 for s in seen if s)} of "
          f"{len(seen)} cells; cell wall max/min: {', '.join(spread) or '-'}")
    print(f"benchmark wall time {report['wall_s']:.1f} s")
    return finish(report, args.json, args.keep, logroot)


if __name__ == "__main__":
    sys.exit(main())
