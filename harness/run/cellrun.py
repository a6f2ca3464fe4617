"""Running one cell with its own harness log: the one way the runner runs a
cell, in the runner itself (``-j 1``) and in a worker process (``-j N``).

While the cell runs, every harness record is stamped with the cell's id and
written to ``<logdir>/harness.log`` (``harness.logs.cell_logging``), beside
QEMU's stderr, serial output and QMP transcript.

A cell's own failures are verdicts (``run_cell`` never raises for them); a
bug in the harness that escapes it would otherwise end the whole run (or,
in a worker, leave the runner with only an exit status), so it becomes this
cell's ``error`` with the traceback in the cell's log, and the run goes on.
Interruptions (Ctrl-C, SIGTERM) are not caught: they end the run.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from harness.cell import Cell
from harness.logs import CELL_LOG, cell_logging
from harness.migration.flow import run_cell
from harness.results import ERROR, CellResult
from harness.scenarios.cells import run_scenario_cell

log = logging.getLogger(__name__)


def run_any(cell: Cell, logdir: Path,
            progress: Callable[[str], None] | None = None) -> CellResult:
    """The one dispatch on a cell's kind: a failure-path scenario cell runs
    its scenario (``harness.scenarios``), any other cell the migration flow.
    Serial runs, workers and the pytest entry points all come through here."""
    if cell.scenario:
        return run_scenario_cell(cell, logdir)
    return run_cell(cell, logdir, progress)


def run_logged(cell: Cell, logdir: Path,
               progress: Callable[[str], None] | None = None) -> CellResult:
    """``run_cell`` with the cell's records in ``logdir/harness.log``."""
    with cell_logging(cell.id, logdir):
        log.info("cell %s starts: builds %s -> %s, target %s, transport %s, log folder %s",
                 cell.id, cell.src_build.name, cell.dst_build.name, cell.target.name,
                 cell.transport or f"of scenario {cell.scenario}", logdir)
        t0 = time.monotonic()
        try:
            result = run_any(cell, logdir, progress)
        except Exception as exc:   # noqa: BLE001 -- a harness bug: this cell's error
            log.exception("the harness failed running this cell")
            result = CellResult(id=cell.id, verdict=ERROR, inputs=cell.inputs(),
                                reason=f"harness error: {exc!r} (traceback in "
                                       f"{logdir / CELL_LOG})",
                                logdir=str(logdir), duration=round(time.monotonic() - t0, 3))
        except BaseException as exc:   # Ctrl-C, SIGTERM: the run ends; say so here too
            log.info("cell %s interrupted after %.2f s: %r", cell.id,
                     time.monotonic() - t0, exc)
            raise
        log.info("cell %s: %s in %.2f s%s", cell.id, result.verdict, result.duration,
                 f": {result.reason}" if result.reason else "")
    return result
