"""Avocado runner for ``mharness-cell`` runnables: one cell, through the harness's flow.

Avocado's process spawner starts ``avocado-runner-mharness-cell task-run
...`` per test (a console script; the class is also registered under
``avocado.plugins.runnable.runner``, which is how Avocado's task picks it).
The task process then:

1. plans the cell's tier again and takes the cell by id
   (:func:`harness.avocado.cells.cell_of`);
2. waits for the cell's share of the machine (:mod:`harness.avocado.budget`),
   so ``--max-parallel-tasks`` never runs more at once than ``mharness run
   -j`` would;
3. runs it with :func:`harness.run.cellrun.run_logged` -- the one way
   ``mharness run`` runs a cell (the migration flow,
   ``harness.migration.flow.run_cell``, or a failure-path scenario; known
   issues; ``repeat``); nothing of a cell's logic is here -- with the Avocado
   test's results folder as the cell's log folder, so QEMU's stderr, serial
   output, QMP transcripts and the harness's own ``harness.log`` land in
   Avocado's job folder, then the cell's results.json fragment;
4. reports the verdict (:mod:`harness.avocado.report`).

Why the cell runs here and not in a child process, as Avocado's
``avocado-instrumented`` runner does: a QEMU gets ``PR_SET_PDEATHSIG``, which
fires when the *thread* that started it ends (harness.qemu.process).  Run in
the task process's main thread, every QEMU dies with the task however the task
ends: Avocado's SIGTERM on a timeout or Ctrl-C becomes
:class:`harness.qemu.process.Interrupted` and the flow tears its QEMUs down;
Avocado's SIGKILL a second later kills them through the death signal.  The
price is that no "running" heartbeat is sent while the cell runs, which
Avocado does not need (it waits for the process to end).
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avocado.core.nrunner.app import BaseRunnerApp
from avocado.core.nrunner.runnable import Runnable
from avocado.core.nrunner.runner import BaseRunner
from avocado.core.utils import messages

from harness.avocado.budget import BudgetPool
from harness.avocado.cells import KIND, MatrixRef, cell_of
from harness.avocado.report import fail_class, status_of, summary_text, whiteboard, write_fragment
from harness.cell import Cell
from harness.errors import HarnessError
from harness.logs import cell_logging
from harness.qemu.process import Interrupted, install_signal_handlers, kill_all
from harness.results import CellResult
from harness.run.cellrun import run_logged

log = logging.getLogger(__name__)

Status = dict[str, Any]


class CellRunner(BaseRunner):
    """Runs one matrix cell (a ``mharness-cell`` runnable) to an Avocado status."""

    name = KIND
    description = "Runs one cell of a qemu-migration-harness matrix as mharness run does"
    CONFIGURATION_USED: list[str] = []

    def run(self, runnable: Runnable) -> Iterator[Status]:
        # SIGTERM (Avocado's timeout and interruption) -> Interrupted, so the
        # flow's teardown runs; a no-op outside the main thread.
        install_signal_handlers()
        yield messages.StartedMessage.get()
        try:
            yield from self._run(runnable)
        except (KeyboardInterrupt, Interrupted) as exc:
            kill_all()   # the flow ended its QEMUs; this is the belt to its braces
            yield messages.StderrMessage.get(f"{runnable.uri} interrupted: {exc!r}\n")
            yield messages.FinishedMessage.get("interrupted", fail_reason=f"interrupted ({exc!r})")
        except Exception as exc:  # noqa: BLE001 -- without a finished message the job waits forever
            text = traceback.format_exc()
            yield messages.StderrMessage.get(text)
            yield messages.FinishedMessage.get("error", fail_reason=f"harness error: {exc!r}",
                                               fail_class=type(exc).__name__, traceback=text)

    def _run(self, runnable: Runnable) -> Iterator[Status]:
        try:
            cell, ref = cell_of(runnable)
        except HarnessError as exc:
            yield messages.FinishedMessage.get("error", fail_reason=str(exc),
                                               fail_class=type(exc).__name__)
            return
        logdir = Path(runnable.output_dir) if runnable.output_dir else \
            Path(tempfile.mkdtemp(prefix=f"mharness-{cell.id}-"))
        result, budget = run_in_budget(cell, logdir)
        write_fragment(result, logdir)
        text = summary_text(result, logdir)
        yield messages.StdoutMessage.get(text)
        yield messages.WhiteboardMessage.get(whiteboard(result, budget))
        yield messages.FinishedMessage.get(
            status_of(result), fail_reason=result.reason or None,
            class_name=_class_name(cell, ref), fail_class=fail_class(result),
            traceback=text if status_of(result) in ("fail", "error") else None)


def run_in_budget(cell: Cell, logdir: Path, pool: BudgetPool | None = None
                  ) -> tuple[CellResult, dict[str, Any]]:
    """The cell as ``mharness run`` runs it (``run_logged``: the migration
    flow or a failure-path scenario, known issues, ``repeat``, its records in
    ``logdir/harness.log``), within its share of the machine.  Interruptions
    propagate once the cell has torn down."""
    pool = pool or BudgetPool()
    with cell_logging(cell.id, logdir):
        log.info("cell %s: waiting for its share of the machine (ledger %s)", cell.id, pool.path)
    with pool.hold(cell) as held:
        with cell_logging(cell.id, logdir):
            log.info("cell %s: share taken after %.2f s, beside %s", cell.id, held.waited,
                     ", ".join(held.beside) or "no other cell")
        result = run_logged(cell, logdir)
        released = time.time()
    return result, {**held.to_json(), "released_at": released}


def _class_name(cell: Cell, ref: MatrixRef) -> str:
    """xunit's classname: the tier the job ran (``mharness.smoke``), so a CI
    dashboard groups a job's cells; cells from variants: ``mharness.avocado-variants``."""
    return f"mharness.{cell.tier if ref.from_variants else ref.tier}"


class RunnerApp(BaseRunnerApp):
    """``avocado-runner-mharness-cell``: what Avocado's process spawner executes."""

    PROG_NAME = f"avocado-runner-{KIND}"
    PROG_DESCRIPTION = "nrunner application for qemu-migration-harness matrix cells"
    RUNNABLE_KINDS_CAPABLE = [KIND]


def main() -> None:
    try:
        RunnerApp(print).run()
    except Exception:  # noqa: BLE001 -- say why on stderr before dying
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
