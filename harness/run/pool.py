"""The runner's worker processes for ``-j N``: each runs one cell at a time, for
the whole run.

A cell is an asyncio program with its own QEMUs.  A process per running cell
keeps the guarantees of ``harness.qemu.process`` simple:

- Workers are forked (``multiprocessing``'s ``fork`` context) after the runner
  has discovered the builds, so they start with its imports and build facts
  (about 0.6 s a worker saved over a fresh interpreter, and one discovery per
  build for the whole run).
- A worker dies with the runner: the first thing it does is
  ``die_with_parent`` (``PR_SET_PDEATHSIG``, and its own process group, so a
  terminal's Ctrl-C reaches only the runner, which decides what happens).
- A worker's QEMUs die with the worker: the worker starts them from its main
  thread (``multiprocessing`` runs the target there, ``asyncio.run`` keeps the
  loop there) and ``PR_SET_PDEATHSIG`` fires when the *thread* that forked a
  child exits (prctl(2)), which for the main thread is the worker's end.
- Stopping an interrupted run (:meth:`WorkerPool.stop`): each busy worker is
  sent SIGTERM by PID and tears its cell down (it takes SIGTERM as Ctrl-C:
  the cell unwinds, its QEMUs get QMP ``quit``, then SIGKILL by PID); idle
  workers are told to leave; after ``WORKER_GRACE`` the late ones get SIGKILL
  by PID (their QEMUs then die by their own death signal).
- Only the PIDs forked here are ever signalled, and only while not reaped
  (``multiprocessing`` signals a child only while its exit status is unknown,
  and an unreaped child keeps its PID).

The runner and each worker talk over one ``Pipe``: the runner sends
``(cell, logdir)``, or ``None`` to say leave; the worker answers with the
cell's result (JSON text, as results.json will hold it).  While the cell runs
the worker also sends ``(PROGRESS, update)``: each phase the cell enters and
samples of its migration (harness.progress), the samples throttled to a few a
second (:class:`harness.progress.Throttle`), so the pipe never carries much
and the runner's live display shows every running cell.  The runner blocks
on the pipes and the processes' sentinels together
(``multiprocessing.connection.wait``): a result, a progress update or a
worker's death wakes it at once, and a worker that dies mid-cell makes that
cell ``error`` with how it died while the run goes on.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Callable

from harness.cell import Cell
from harness.logs import cell_logging
from harness.qemu.process import (
    Interrupted,
    describe_exit_status,
    die_with_parent,
    forget_inherited,
    kill_all,
)
from harness.progress import ProgressUpdate, Throttle
from harness.results import ERROR, CellResult
from harness.run.cellrun import run_logged

log = logging.getLogger(__name__)

#: How long a worker gets to tear its cell down after SIGTERM before SIGKILL.
WORKER_GRACE = 15.0

#: Forked, never spawned: see the module docstring.
_FORK = multiprocessing.get_context("fork")

#: Tags a worker's progress message: ``(PROGRESS, update)``.
PROGRESS = "progress"

#: Told a running cell's progress: its id and the update.
OnProgress = Callable[[str, ProgressUpdate], None]


@dataclass
class Worker:
    """A worker process, the runner's end of its pipe, and the cell it runs
    now (None: idle)."""

    process: BaseProcess
    conn: Connection
    cell: Cell | None = None
    logdir: Path = Path()
    started: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class WorkerPool:
    """Worker processes forked on demand; each runs the cells it is given, one
    at a time.  Fork it after build discovery."""

    def __init__(self) -> None:
        self._workers: list[Worker] = []

    @property
    def busy(self) -> list[Worker]:
        return [w for w in self._workers if w.cell is not None]

    @property
    def running(self) -> list[Cell]:
        """The cells the workers run now, in the order they were started."""
        return [w.cell for w in sorted(self.busy, key=lambda w: w.started)
                if w.cell is not None]

    def start(self, cell: Cell, logdir: Path) -> None:
        """Give ``cell`` to an idle worker, forking one if none is idle."""
        for w in [w for w in self._workers if w.cell is None and not w.process.is_alive()]:
            log.warning("idle worker pid %d had ended (%s)", w.pid,
                        describe_exit_status(w.process.exitcode))
            self._drop(w)
        worker = next((w for w in self._workers if w.cell is None), None) or self._fork()
        worker.cell, worker.logdir, worker.started = cell, logdir, time.monotonic()
        log.debug("cell %s -> worker pid %d", cell.id, worker.pid)
        try:
            worker.conn.send((cell, logdir))
        except OSError:
            pass   # it died: wait() sees its sentinel and reports the cell

    def wait(self, on_progress: OnProgress | None = None) -> list[CellResult]:
        """Block until a busy worker answers, reports progress or dies; the
        results of those that finished (a dead worker's cell: ``error``).
        Progress goes to ``on_progress``; it may be all that came (then the
        list is empty)."""
        busy = self.busy
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
        results = (self._collect(w, on_progress) for w in busy
                   if w.conn in ready or w.process.sentinel in ready)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """The run is done and every worker idle: tell them to leave and wait."""
        for w in self._workers:
            _tell_to_leave(w)
        self._reap()

    def stop(self) -> list[CellResult]:
        """The run was interrupted: SIGTERM busy workers by PID (each tears its
        cell down), tell idle ones to leave, SIGKILL whoever is still there
        after ``WORKER_GRACE``.  Returns results that arrived meanwhile."""
        for w in self._workers:
            if w.cell is not None:
                log.info("worker pid %d (cell %s): SIGTERM", w.pid, w.cell.id)
                w.process.terminate()
            else:
                _tell_to_leave(w)
        self._reap()
        late = [r for r in (_read(w)[0] for w in self.busy) if r is not None]
        for w in self._workers:
            w.conn.close()
        self._workers.clear()
        return late

    # -- inside --------------------------------------------------------------------------

    def _fork(self) -> Worker:
        ours, theirs = _FORK.Pipe()
        runner_ends = [w.conn for w in self._workers] + [ours]
        process = _FORK.Process(target=_serve, args=(theirs, runner_ends, os.getpid()),
                                name=f"mharness-worker-{len(self._workers)}", daemon=True)
        process.start()
        # Only the worker keeps its end: when it dies, its pipe says so (EOF).
        theirs.close()
        worker = Worker(process, ours)
        self._workers.append(worker)
        log.debug("forked worker pid %d", worker.pid)
        return worker

    def _collect(self, w: Worker, on_progress: OnProgress | None) -> CellResult | None:
        """The answer of a worker whose pipe or sentinel is ready (None:
        only progress came, the cell runs on)."""
        result, closed = _read(w, on_progress)
        if result is not None:
            w.cell = None
            if not w.process.is_alive():
                self._drop(w)
            return result
        if not closed and w.process.is_alive():
            return None
        # No answer: the worker has died or is dying (it closed its end).
        w.process.join(WORKER_GRACE)
        if w.process.exitcode is None:
            w.process.kill()
            w.process.join(10)
        self._drop(w)
        return _died_mid_cell(w)

    def _drop(self, w: Worker) -> None:
        self._workers.remove(w)
        w.conn.close()

    def _reap(self) -> None:
        """Wait (on the sentinels) up to ``WORKER_GRACE`` for every worker to
        end; SIGKILL by PID the ones that did not."""
        deadline = time.monotonic() + WORKER_GRACE
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            if w.process.exitcode is None:
                log.warning("worker pid %d still running %.0f s after being told to "
                            "stop: SIGKILL", w.pid, WORKER_GRACE)
                w.process.kill()
                w.process.join(10)


def _tell_to_leave(w: Worker) -> None:
    try:
        w.conn.send(None)
    except OSError:
        pass   # already gone


def _read(w: Worker, on_progress: OnProgress | None = None) -> tuple[CellResult | None, bool]:
    """Everything waiting in ``w``'s pipe: progress updates to
    ``on_progress``, up to the cell's result.  Returns the result (None: not
    there yet) and whether the pipe is closed.  A result the runner cannot read
    is that cell's error."""
    assert w.cell is not None
    while True:
        try:
            if not w.conn.poll():
                return None, False
            message = w.conn.recv()
        except (EOFError, OSError):
            return None, True
        if isinstance(message, tuple) and len(message) == 2 and message[0] == PROGRESS:
            if on_progress is not None:
                on_progress(w.cell.id, message[1])
            continue
        return _parse_result(w, message), False


def _parse_result(w: Worker, text: object) -> CellResult:
    assert w.cell is not None
    try:
        if not isinstance(text, str):
            raise TypeError(f"not JSON text but {type(text).__name__}")
        return CellResult.from_json(json.loads(text))
    except (ValueError, TypeError) as exc:
        return CellResult(id=w.cell.id, verdict=ERROR, inputs=w.cell.inputs(),
                          reason=f"cell worker (pid {w.pid}) sent an unreadable result: {exc}",
                          logdir=str(w.logdir))


def _died_mid_cell(w: Worker) -> CellResult:
    assert w.cell is not None
    how = describe_exit_status(w.process.exitcode)
    with cell_logging(w.cell.id, w.logdir):
        log.warning("cell worker pid %d ended mid-cell (%s)", w.pid, how)
    return CellResult(id=w.cell.id, verdict=ERROR, inputs=w.cell.inputs(),
                      reason=f"cell worker (pid {w.pid}) ended mid-cell ({how}) without a "
                             "result", logdir=str(w.logdir),
                      duration=round(time.monotonic() - w.started, 3))


def _serve(conn: Connection, runner_ends: list[Connection], parent: int) -> None:
    """A worker's main: run the cells the runner sends until it says leave."""
    try:
        die_with_parent(parent)
        # Inherited copies of the runner's pipe ends (this worker's and the
        # others'): closed, so each pipe has one reader and one writer and EOF
        # means the other side is gone.
        for end in runner_ends:
            end.close()
        forget_inherited()
        # Python's own SIGINT handler even if the runner's SIGINT is ignored
        # (a background job of a non-interactive shell): _as_ctrl_c needs it.
        # No terminal's Ctrl-C reaches this process group.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _as_ctrl_c)
        log.debug("worker pid %d ready", os.getpid())
        while (job := conn.recv()) is not None:
            cell, logdir = job
            result = run_logged(cell, logdir, Throttle(_progress_sender(conn)))
            conn.send(json.dumps(result.to_json(), default=str))
    except EOFError:
        pass   # the runner is gone (its death signal is on its way too)
    except (KeyboardInterrupt, Interrupted) as exc:
        log.info("worker pid %d: %r", os.getpid(), exc)
        sys.exit(130)
    finally:
        kill_all()


def _progress_sender(conn: Connection) -> Callable[[ProgressUpdate], None]:
    """A running cell's progress, sent to the runner.  A pipe that fails
    is the runner's end: the cell goes on (its death signal is on its way)."""

    def send(update: ProgressUpdate) -> None:
        try:
            conn.send((PROGRESS, update))
        except OSError as exc:
            log.debug("progress not sent: %r", exc)

    return send


def _as_ctrl_c(_signum: int, _frame: object) -> None:
    """A worker's SIGTERM (the runner stopping it) is handled as Ctrl-C.

    Inside ``asyncio.run`` that is asyncio's own SIGINT handler, which cancels
    the cell's main task: the cell unwinds while its event loop and QMP
    sessions still work, so its QEMUs get QMP ``quit`` and go at once.  (An
    exception raised from a signal handler would instead stop the loop
    mid-step and cancel every task together, QMP's readers included: each
    ``quit`` then waits out its timeout before the SIGKILL.)  Outside it,
    Python's handler raises KeyboardInterrupt.
    """
    signal.raise_signal(signal.SIGINT)
