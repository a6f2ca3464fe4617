"""Running a failure-path scenario cell: what the runner needs beyond the
cell itself (which ``harness.failpaths.scenario_cell`` makes from a tier).

A tier declares scenarios in ``matrix.yaml`` (``{scenario: ID, build: NAME}``
or ``{scenarios: all, builds: [...]}``); each (scenario, build) is a
:class:`~harness.cell.Cell` with ``scenario`` set, so ``mharness list``,
``-k``, ``--shard``, ``-j N``, results.json and junit see one kind of thing.
``harness.run.cellrun`` hands such a cell to :func:`run_scenario_cell`
instead of the migration flow, and the runner budgets it with
:func:`scenario_needs`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness.cell import Cell
from harness.qemu.build import discover
from harness.results import ERROR, CellResult
from harness.scenarios import SCENARIOS

log = logging.getLogger(__name__)


def scenario_needs(cell: Cell) -> tuple[float, int]:
    """(cores, bytes) a scenario cell takes while it runs: one running guest at
    a time (destinations wait paused, as in a matrix cell) and the guest RAM of
    every QEMU its rig keeps alive at once (``Scenario.peak_memory``)."""
    return float(cell.target.smp), SCENARIOS[cell.scenario].peak_memory


def run_scenario_cell(cell: Cell, logdir: Path) -> CellResult:
    """Run a scenario cell; never raises for a failure (a harness bug is left
    to the caller, ``harness.run.cellrun``, as for a migration cell).

    A required build that is missing is an error, not a skip: a nightly job
    must not go green on a machine without its QEMU.
    """
    build = discover(cell.src_build)
    if build.missing and build.spec.required:
        log.error("required build %s is missing: %s", build.name, build.missing)
        return CellResult(id=cell.id, verdict=ERROR, inputs=cell.inputs(),
                          reason=f"required build '{build.name}' is missing: {build.missing}",
                          logdir=str(logdir))
    result = SCENARIOS[cell.scenario].run(build, logdir, cell.id)
    # The scenario's own inputs (theme, description, QEMU version) over the
    # cell's (tier, origin, seed, builds).
    result.inputs = {**cell.inputs(), **result.inputs}
    return result


__all__ = ["run_scenario_cell", "scenario_needs"]
