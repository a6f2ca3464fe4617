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

Here too, once a run is over, its verdict is judged against the cell's known
issues (harness.known_issues: the builds' versions are known by then), and a
``repeat: N`` cell runs N times, each run in ``<logdir>/run-<i>/`` with its
own harness.log (the cell's harness.log has them all): the serial runner, the
workers and pytest all get both.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from harness.cell import Cell
from harness.known_issues import apply_known_issues, combine_runs
from harness.logs import CELL_LOG, cell_logging
from harness.migration.flow import run_cell
from harness.progress import ProgressFn, ProgressUpdate
from harness.results import ERROR, SKIPPED, CellResult
from harness.scenarios.cells import run_scenario_cell

log = logging.getLogger(__name__)


def run_any(cell: Cell, logdir: Path,
            progress: ProgressFn | None = None) -> CellResult:
    """The one dispatch on a cell's kind: a failure-path scenario cell runs
    its scenario (``harness.scenarios``), any other cell the migration flow.
    Serial runs, workers and the pytest entry points all come through here."""
    if cell.scenario:
        if progress is not None:   # a scenario reports no phases of its own
            progress(f"scenario {cell.scenario}")
        return run_scenario_cell(cell, logdir)
    return run_cell(cell, logdir, progress)


def run_logged(cell: Cell, logdir: Path,
               progress: ProgressFn | None = None) -> CellResult:
    """``run_cell`` with the cell's records in ``logdir/harness.log``, judged
    with its known issues; ``cell.repeat`` times when it says so."""
    if cell.repeat > 1:
        return _run_repeated(cell, logdir, progress)
    return _run_once(cell, logdir, progress)


def _run_repeated(cell: Cell, logdir: Path,
                  progress: ProgressFn | None) -> CellResult:
    """N runs, one folder each; one result ("k of N runs failed").  A run that
    is skipped (the build or host cannot run it) ends the series: the rest
    would be skipped for the same reason."""
    runs: list[CellResult] = []
    with cell_logging(cell.id, logdir):
        log.info("cell %s: %d runs", cell.id, cell.repeat)
        for i in range(1, cell.repeat + 1):
            def on_phase(update: ProgressUpdate, i: int = i) -> None:
                if progress is not None:   # phases named with the run, samples as they are
                    progress(f"run {i}/{cell.repeat}: {update}" if isinstance(update, str)
                             else update)
            run = _run_once(cell, logdir / f"run-{i}", on_phase)
            runs.append(run)
            if run.verdict == SKIPPED:
                break
        result = combine_runs(runs, str(logdir), cell.known_issues)
        log.info("cell %s: %s after %d runs%s", cell.id, result.verdict, len(runs),
                 f": {result.reason}" if result.reason else "")
    return result


def _run_once(cell: Cell, logdir: Path,
              progress: ProgressFn | None) -> CellResult:
    with cell_logging(cell.id, logdir):
        log.info("cell %s starts: builds %s -> %s, target %s, transport %s, log folder %s",
                 cell.id, cell.src_build.name, cell.dst_build.name, cell.target.name,
                 cell.transport or f"of scenario {cell.scenario}", logdir)
        t0 = time.monotonic()
        try:
            result = apply_known_issues(run_any(cell, logdir, progress), cell.known_issues)
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
