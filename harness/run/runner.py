"""Runs cells and records every outcome: one at a time, or several at once.

A failing cell never stops the run; an interruption (Ctrl-C, SIGTERM) stops
scheduling, lets running cells tear down their QEMUs, and still writes the
results gathered so far.

``jobs=1`` runs each cell in this process; ``jobs > 1`` runs up to ``jobs``
cells at once in worker processes forked after build discovery
(``harness.run.pool``: why processes, and how they and their QEMUs never
outlive the runner).  Either way a cell runs through
``harness.run.cellrun.run_logged``, which writes the harness's own records
for that cell to its log folder.  Results are recorded as cells finish
(results.json is rewritten each time) and reported in tier order.

Cells are started in order while they fit the budget: a cell needs one core
per vCPU (a TCG vCPU keeps a core busy; the destination is paused until the
switchover) and its guest RAM twice (source and destination, both backed by
files on tmpfs).  The default budget is this machine: its cores, and 80% of
the smaller of available memory and free space where the RAM files go
(``MHARNESS_RUNTIME_DIR``, else /dev/shm).  A cell larger than the whole
budget still runs, alone.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness.cell import Cell
from harness.progress import CellProgress, ProgressUpdate, Throttle
from harness.qemu.build import discover
from harness.qemu.process import kill_all
from harness.report.files import write_junit, write_results_json
from harness.results import (ERROR, FAILED, FLAKY, KNOWN_FAILURE, PASSED, SKIPPED, CellResult,
                             RunState)
from harness.run.cellrun import run_logged
from harness.run.pool import WORKER_GRACE, WorkerPool
from harness.run.rundir import base_dir
from harness.scenarios.cells import scenario_needs

log = logging.getLogger(__name__)

Listener = Callable[[str, "RunState"], None]

@dataclass(frozen=True)
class Budget:
    """What cells running at the same time may use together."""

    cpus: float
    memory: int

    @classmethod
    def of_this_machine(cls) -> "Budget":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        memory = _mem_available()
        try:
            # Where the cells' RAM files go (MHARNESS_RUNTIME_DIR, else /dev/shm).
            shm = shutil.disk_usage(base_dir() or "/dev/shm").free
            memory = min(memory, shm) if memory else shm
        except OSError:
            pass
        return cls(float(cpus), int((memory or 1 << 30) * 0.8))

    def admits(self, cpus: float, memory: int, used: Iterable[tuple[float, int]]) -> bool:
        """Whether a share of (``cpus``, ``memory``) fits beside the shares in
        ``used``.  The one rule for ``mharness run -j`` (:func:`fits`) and the
        Avocado tasks' ledger (harness.avocado.budget)."""
        shares = list(used)
        if not shares:
            return True  # a cell larger than the budget runs alone
        return (sum(c for c, _ in shares) + cpus <= self.cpus + 1e-9
                and sum(m for _, m in shares) + memory <= self.memory)


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cell_needs(cell: Cell) -> tuple[float, int]:
    """(cores, bytes) a running cell takes: its vCPUs, and its guest RAM twice
    (a failure-path scenario: its rig's QEMUs, ``scenario_needs``)."""
    if cell.scenario:
        return scenario_needs(cell)
    return float(cell.target.smp), 2 * cell.target.memory


def default_results_dir(base: Path = Path("results")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def cell_logdir(results_dir: Path, cell_id: str) -> Path:
    return results_dir / "cells" / cell_id


# --- sharding and reruns ---------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); ValueError otherwise."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= K <= N")
    return k, n


def shard(cells: Sequence[Cell], k: int, n: int) -> list[Cell]:
    """Shard ``k`` of ``n`` (1-based): every n-th cell of the tier, starting at k.

    Deterministic (the tier's order is), disjoint, and the union of the n
    shards is the tier; shard sizes differ by at most one.
    """
    return [c for i, c in enumerate(cells) if i % n == k - 1]


@dataclass(frozen=True)
class Previous:
    """A cell that failed in an earlier run (for ``--rerun-failed``)."""

    id: str
    verdict: str
    reason: str


def failed_in(results_dir: Path) -> tuple[list[Previous], dict[str, Any]]:
    """The failed and errored cells of an earlier run, and that run's metadata."""
    path = results_dir / "results.json"
    data = json.loads(path.read_text())
    failed = [Previous(c["id"], c["verdict"], c.get("reason", "")) for c in data["cells"]
              if c["verdict"] in (FAILED, ERROR)]
    return failed, data.get("run", {})


def mark_flaky(result: CellResult, before: Previous, source: Path) -> CellResult:
    """A rerun cell that passed after failing is flaky, not passed."""
    if result.verdict == PASSED:
        result.verdict = FLAKY
        result.reason = (f"{before.verdict} in {source} ({before.reason or 'no reason given'}); "
                         "passed on rerun")
    return result


# --- running -----------------------------------------------------------------------------


def run_cells(cells: Iterable[Cell], results_dir: Path, *, keep_logs: bool = False,
              listener: Listener | None = None, jobs: int = 1, budget: Budget | None = None,
              meta: dict[str, Any] | None = None,
              finish: Callable[[CellResult], CellResult] | None = None) -> RunState:
    """Run ``cells``; results.json (rewritten after each cell) and junit.xml.

    ``finish`` may adjust each result before it is recorded (``--rerun-failed``
    marks flaky cells).  Raises KeyboardInterrupt/Interrupted after writing the
    partial results when interrupted.
    """
    cells = list(cells)
    results_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(results_dir=results_dir, total=len(cells), meta=dict(meta or {}))
    notify = listener or (lambda _e, _s: None)
    done = finish or (lambda r: r)
    try:
        if jobs <= 1:
            _run_serial(cells, state, keep_logs, notify, done)
        else:
            _run_parallel(cells, state, keep_logs, notify, done, jobs,
                          budget or Budget.of_this_machine())
    except BaseException:
        state.interrupted = True
        kill_all()
        raise
    finally:
        state.running, state.progress = [], {}
        order = {c.id: i for i, c in enumerate(cells)}
        state.results.sort(key=lambda r: order.get(r.id, len(order)))
        write_results_json(state)
        write_junit(state)
        notify("run-end", state)
    return state


def _record(state: RunState, result: CellResult, keep_logs: bool, notify: Listener,
            done: Callable[[CellResult], CellResult]) -> None:
    if result.verdict == PASSED and not keep_logs and result.logdir:
        shutil.rmtree(result.logdir, ignore_errors=True)
        result.logdir = None
        for run in result.runs:
            run["logdir"] = None
    elif not keep_logs:
        # A repeated cell keeps the evidence of its failing runs only.
        for run in result.runs:
            if run.get("verdict") == PASSED and run.get("logdir"):
                shutil.rmtree(run["logdir"], ignore_errors=True)
                run["logdir"] = None
    result = done(result)
    state.results.append(result)
    write_results_json(state)
    notify("cell-end", state)


def _run_serial(cells: list[Cell], state: RunState, keep_logs: bool, notify: Listener,
                done: Callable[[CellResult], CellResult]) -> None:
    for cell in cells:
        state.running = [cell.id]
        state.progress = {cell.id: CellProgress()}
        notify("cell-start", state)

        def on_progress(update: ProgressUpdate, cell_id: str = cell.id) -> None:
            _progressed(state, notify, cell_id, update)

        result = run_logged(cell, cell_logdir(state.results_dir, cell.id), Throttle(on_progress))
        state.running, state.progress = [], {}
        _record(state, result, keep_logs, notify, done)


def _progressed(state: RunState, notify: Listener, cell_id: str, update: ProgressUpdate) -> None:
    """A running cell's progress into ``state.progress``: event ``phase`` for
    a phase it entered, ``progress`` for a sample of its migration."""
    progress = state.progress.get(cell_id)
    if progress is None:
        return   # late news of a cell already recorded
    progress.update(update)
    notify("phase" if isinstance(update, str) else "progress", state)


def _run_parallel(cells: list[Cell], state: RunState, keep_logs: bool, notify: Listener,
                  done: Callable[[CellResult], CellResult], jobs: int, budget: Budget) -> None:
    """Up to ``jobs`` cells at once, each in a worker process that lives for
    the whole run (Python's imports and build discovery are paid once)."""
    queue = list(cells)
    # Discover every build here, once: forked workers inherit the answers.
    for spec in {c.src_build for c in cells} | {c.dst_build for c in cells}:
        discover(spec)
    pool = WorkerPool()

    def show_running() -> None:
        state.running = [c.id for c in pool.running]
        state.progress = {i: state.progress.get(i) or CellProgress() for i in state.running}

    def on_progress(cell_id: str, update: ProgressUpdate) -> None:
        _progressed(state, notify, cell_id, update)

    try:
        while queue or pool.running:
            while queue and len(pool.running) < jobs and fits(queue[0], pool.running, budget):
                cell = queue.pop(0)
                pool.start(cell, cell_logdir(state.results_dir, cell.id))
                show_running()
                notify("cell-start", state)
            for result in pool.wait(on_progress):
                show_running()
                _record(state, result, keep_logs, notify, done)
    except BaseException:
        log.info("run stopped: stopping the workers of %s", ", ".join(state.running))
        for result in pool.stop():   # cells that finished while the run stopped
            _record(state, result, keep_logs, notify, done)
        raise
    pool.close()


def fits(cell: Cell, running: Sequence[Cell], budget: Budget) -> bool:
    """Whether ``cell`` may start beside the ``running`` ones within ``budget``."""
    return budget.admits(*cell_needs(cell), (cell_needs(c) for c in running))


#: ``mharness run`` when no selected cell ran (pytest's "no tests ran").
EXIT_NOTHING_RAN = 5


def exit_status(state: RunState, strict: bool = False) -> int:
    """130 interrupted; 1 when a cell failed or errored (or, with ``strict``,
    is a known failure); 5 when no selected cell ran (all skipped, or none
    selected: a nightly job with a mistyped build must not stay green); 0
    otherwise: every cell passed, was flaky, a known failure, or skipped
    with a reason beside cells that ran."""
    if state.interrupted:
        return 130
    ok = (PASSED, SKIPPED, FLAKY) if strict else (PASSED, SKIPPED, FLAKY, KNOWN_FAILURE)
    if not all(r.verdict in ok for r in state.results):
        return 1
    return EXIT_NOTHING_RAN if nothing_ran(state) else 0


def nothing_ran(state: RunState) -> str | None:
    """Why no selected cell ran, in one line, or None when some cell ran.

    "all 8 cells skipped: source build '/usr/bin/qemu-system-e2k' is e2k,
    cell needs x86_64", from the cells' own skip reasons (the most common
    first, with counts when they differ)."""
    if any(r.verdict != SKIPPED for r in state.results):
        return None
    if not state.results:
        asked = ", ".join(f"{k} {state.meta[k]}" for k in ("tier", "select", "shard")
                          if state.meta.get(k))
        return "no cell selected" + (f" ({asked})" if asked else "")
    reasons: dict[str, int] = {}
    for r in state.results:
        why = r.reason or "no reason given"
        reasons[why] = reasons.get(why, 0) + 1
    n = len(state.results)
    head = f"all {n} cells skipped" if n > 1 else "the only cell was skipped"
    if len(reasons) == 1:
        return f"{head}: {next(iter(reasons))}"
    ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
    return f"{head}: " + "; ".join(f"{why} ({k} cells)" if k > 1 else why for why, k in ranked)


# --- merging results folders ------------------------------------------------------------


def merge_results(dirs: Sequence[Path], out: Path) -> RunState:
    """One report from several results folders (e.g. the shards of a tier).

    A cell id in two folders must have the same verdict (the same cell run
    twice) or the merge is refused: ValueError naming it.
    """
    state = RunState(results_dir=out, total=0, meta={"merged": [str(d) for d in dirs]})
    seen: dict[str, tuple[CellResult, Path]] = {}
    common: dict[str, Any] | None = None
    for d in dirs:
        path = d / "results.json"
        data = json.loads(path.read_text())
        run = {k: data.get("run", {}).get(k) for k in ("matrix", "tier", "seed")}
        # What the inputs agree on carries over (so --rerun-failed OUT works).
        common = run if common is None else {k: v for k, v in common.items()
                                             if run.get(k) == v}
        state.total += int(data.get("total_cells", len(data["cells"])))
        state.interrupted |= bool(data.get("interrupted"))
        for r in (CellResult.from_json(c) for c in data["cells"]):
            if r.id in seen:
                first, where = seen[r.id]
                if first.verdict != r.verdict:
                    raise ValueError(f"cell {r.id} is {first.verdict} in {where} but "
                                     f"{r.verdict} in {d}")
                state.total -= 1
                continue
            seen[r.id] = (r, d)
            state.results.append(r)
    state.meta.update({k: v for k, v in (common or {}).items() if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(state)
    write_junit(state)
    return state


__all__ = ["Budget", "EXIT_NOTHING_RAN", "FLAKY", "RunState", "WORKER_GRACE", "cell_needs", "default_results_dir",
           "exit_status", "failed_in", "nothing_ran", "fits", "mark_flaky", "merge_results", "parse_shard",
           "run_cells", "shard"]
