"""Runs cells and records every outcome: one at a time, or several at once.

A failing cell never stops the run; an interruption (Ctrl-C, SIGTERM) stops
scheduling, lets running cells tear down their QEMUs, and still writes the
results gathered so far.

``jobs=1`` runs each cell in this process (``harness.migration.flow.run_cell``).  With
``jobs > 1`` up to ``jobs`` worker processes (``python -m harness.run.runner
serve``) each run one cell at a time, for the whole run (imports and build
discovery are paid once per worker).  A cell is an asyncio program with its own
QEMUs, and a process per running cell keeps the guarantees of
``harness.qemu.process`` simple: the worker's main thread starts the QEMUs and
lives until they are gone, so ``PR_SET_PDEATHSIG`` (which fires when the
*thread* that forked a child exits) holds, and the worker itself dies with the
runner (its own death signal).  Workers run in their own process groups, so a
terminal's Ctrl-C reaches only the runner, which then sends each busy worker
SIGTERM by PID (the worker tears its cell down: QMP ``quit``, SIGKILL by PID)
and waits for it.

Cells are started in order while they fit the budget: a cell needs one core
per vCPU (a TCG vCPU keeps a core busy; the destination is paused until the
switchover) and its guest RAM twice (source and destination, both backed by
files on tmpfs).  The default budget is this machine: its cores, and 80% of
the smaller of available memory and free space in /dev/shm.  A cell larger
than the whole budget still runs, alone.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness.cell import Cell
from harness.migration.flow import run_cell
from harness.qemu.process import die_with_parent, kill_all
from harness.report.files import read_results_json, write_junit, write_results_json
from harness.results import ERROR, FAILED, FLAKY, PASSED, SKIPPED, CellResult, RunState

Listener = Callable[[str, "RunState"], None]

#: How long a worker gets to tear its cell down after SIGTERM before SIGKILL.
WORKER_GRACE = 15.0


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
            shm = shutil.disk_usage("/dev/shm").free
            memory = min(memory, shm) if memory else shm
        except OSError:
            pass
        return cls(float(cpus), int((memory or 1 << 30) * 0.8))


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cell_needs(cell: Cell) -> tuple[float, int]:
    """(cores, bytes) a running cell takes: its vCPUs, and its guest RAM twice."""
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
        state.current = ""
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
    result = done(result)
    state.results.append(result)
    write_results_json(state)
    notify("cell-end", state)


def _run_serial(cells: list[Cell], state: RunState, keep_logs: bool, notify: Listener,
                done: Callable[[CellResult], CellResult]) -> None:
    for cell in cells:
        state.current, state.phase = cell.id, "start"
        state.running = [cell.id]
        notify("cell-start", state)

        def on_phase(phase: str) -> None:
            state.phase = phase
            notify("phase", state)

        result = run_cell(cell, cell_logdir(state.results_dir, cell.id), on_phase)
        state.running = []
        _record(state, result, keep_logs, notify, done)


@dataclass
class _Worker:
    """A worker process and the cell it runs now (None: idle)."""

    proc: "_ForkedProc"
    stderr_path: Path
    cell: Cell | None = None
    result_path: Path = Path()
    needs: tuple[float, int] = (0.0, 0)
    started: float = 0.0


def _run_parallel(cells: list[Cell], state: RunState, keep_logs: bool, notify: Listener,
                  done: Callable[[CellResult], CellResult], jobs: int, budget: Budget) -> None:
    """Up to ``jobs`` worker processes, each running one cell at a time (a worker
    lives for the whole run, so Python's imports and build discovery are paid
    once per worker, not once per cell)."""
    queue = list(cells)
    # Discover every build here, once: forked workers inherit the answers.
    from harness.qemu.build import discover
    for spec in {c.src_build for c in cells} | {c.dst_build for c in cells}:
        discover(spec)
    work = state.results_dir / ".workers"
    work.mkdir(parents=True, exist_ok=True)
    workers: list[_Worker] = []
    try:
        while queue or any(w.cell for w in workers):
            busy = [w for w in workers if w.cell is not None]
            while queue and len(busy) < jobs and _fits(queue[0], busy, budget):
                idle = next((w for w in workers if w.cell is None), None)
                if idle is None:
                    idle = _spawn_worker(work, len(workers))
                    workers.append(idle)
                _assign(idle, queue.pop(0), state.results_dir, work)
                busy.append(idle)
                state.running = [w.cell.id for w in busy if w.cell]
                state.current, state.phase = ", ".join(state.running), "running"
                notify("cell-start", state)
            for w in busy:
                result = _finished(w)
                if result is not None:
                    w.cell = None
                    state.running = [x.cell.id for x in workers if x.cell]
                    state.current = ", ".join(state.running)
                    _record(state, result, keep_logs, notify, done)
                    if w.proc.poll() is not None:   # it died: never reuse it
                        workers.remove(w)
            time.sleep(0.02)
    except BaseException:
        _stop_workers(workers)
        raise
    else:
        for w in workers:   # idle: end of input is their signal to leave
            _close(w)
        for w in workers:
            try:
                w.proc.wait(WORKER_GRACE)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fits(cell: Cell, busy: list[_Worker], budget: Budget) -> bool:
    if not busy:
        return True  # a cell larger than the budget runs alone
    cpus, mem = cell_needs(cell)
    used_cpus = sum(w.needs[0] for w in busy)
    used_mem = sum(w.needs[1] for w in busy)
    return used_cpus + cpus <= budget.cpus + 1e-9 and used_mem + mem <= budget.memory


class _ForkedProc:
    """The part of ``subprocess.Popen`` the runner uses, for a worker forked
    from the runner itself: it starts with the runner's imports and
    discovered builds (about 0.6 s a worker saved over a fresh interpreter).
    Signals go to the PID forked here, never to a name."""

    def __init__(self, pid: int, stdin: Any) -> None:
        self.pid, self.stdin = pid, stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _spawn_worker(work: Path, n: int) -> _Worker:
    """Fork a worker: its own process group, death signal tied to the runner,
    stdin a pipe from the runner, stdout discarded, stderr to a file."""
    stderr_path = work / f"worker-{n}.stderr"
    parent = os.getpid()
    err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            die_with_parent(parent)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(r, 0)
            os.dup2(devnull, 1)
            os.dup2(err, 2)
            # Nothing of the runner's stays open here (another worker's stdin
            # pipe kept open would hide its end of input).
            os.closerange(3, _max_fd())
            sys.stdin = open(0, "r", closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = _serve()
        except BaseException:  # noqa: BLE001 -- reported on the worker's stderr
            import traceback
            traceback.print_exc()
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(r)
    os.close(err)
    return _Worker(_ForkedProc(pid, os.fdopen(w, "wb")), stderr_path)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 4096


def _assign(w: _Worker, cell: Cell, results_dir: Path, work: Path) -> None:
    stem = work / _safe(cell.id)
    cell_path = stem.with_suffix(".cell")
    cell_path.write_bytes(pickle.dumps(cell))
    w.cell, w.result_path = cell, stem.with_suffix(".result.json")
    w.needs, w.started = cell_needs(cell), time.monotonic()
    request = {"cell": str(cell_path), "result": str(w.result_path),
               "logdir": str(cell_logdir(results_dir, cell.id))}
    assert w.proc.stdin is not None
    try:
        w.proc.stdin.write((json.dumps(request) + "\n").encode())
        w.proc.stdin.flush()
    except OSError:
        pass   # it died; _finished reports that


def _finished(w: _Worker) -> CellResult | None:
    """The worker's result once its cell is done, or an error result if it died."""
    assert w.cell is not None
    if w.result_path.exists():
        try:
            return CellResult.from_json(json.loads(w.result_path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            return _worker_error(w, f"unreadable result ({exc})")
    if w.proc.poll() is not None:
        if w.result_path.exists():
            return _finished(w)
        return _worker_error(w, "no result")
    return None


def _worker_error(w: _Worker, what: str) -> CellResult:
    assert w.cell is not None
    tail = ""
    try:
        tail = "\n".join(w.stderr_path.read_text(errors="replace").splitlines()[-10:])
    except OSError:
        pass
    return CellResult(id=w.cell.id, verdict=ERROR, inputs=w.cell.inputs(),
                      reason=f"cell worker (exit status {w.proc.returncode}) left {what}: "
                             f"{tail}", duration=round(time.monotonic() - w.started, 3))


def _close(w: _Worker) -> None:
    try:
        if w.proc.stdin is not None:
            w.proc.stdin.close()
    except OSError:
        pass


def _stop_workers(workers: list[_Worker]) -> None:
    """SIGTERM each busy worker by PID (it tears its cell down), close the idle
    ones' input, then wait; SIGKILL late ones (their QEMUs then die by their
    own death signal)."""
    for w in workers:
        if w.proc.poll() is None and w.cell is not None:
            try:
                w.proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
        _close(w)
    deadline = time.monotonic() + WORKER_GRACE
    for w in workers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def exit_status(state: RunState) -> int:
    """0 when every cell passed, was flaky or skipped with a reason, 1 otherwise."""
    if state.interrupted:
        return 130
    return 0 if all(r.verdict in (PASSED, SKIPPED, FLAKY) for r in state.results) else 1


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
        for r in read_results_json(path):
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


# --- the worker ----------------------------------------------------------------------------


def _serve() -> int:
    """``python -m harness.run.runner serve``: run the cells the runner sends.

    One JSON request a line on stdin (``cell``: a pickled Cell written by the
    runner, ``result``: where to write the CellResult JSON, ``logdir``); the
    result file appears (atomically) when the cell is done.  End of input ends
    the worker.  SIGTERM tears the running cell down and exits.
    """
    from harness.qemu.process import Interrupted, install_signal_handlers

    install_signal_handlers()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            cell = pickle.loads(Path(req["cell"]).read_bytes())
            result = run_cell(cell, Path(req["logdir"]))
            out = Path(req["result"])
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(result.to_json(), default=str))
            os.replace(tmp, out)
    except (KeyboardInterrupt, Interrupted):
        return 130
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        sys.exit(_serve())
    sys.exit("usage: python -m harness.run.runner serve")


__all__ = ["Budget", "FLAKY", "RunState", "cell_needs", "default_results_dir", "exit_status",
           "failed_in", "mark_flaky", "merge_results", "parse_shard", "run_cells", "shard"]
