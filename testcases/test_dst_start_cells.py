"""An autostarting destination follows the source's run state, on real QEMU.

The modes tier's ``dst-start: autostart`` cells (run by test_modes.py) show
QEMU starting the guest itself after a running source, in precopy and
postcopy, on 7.2 and 10.0.  This is the other half of the contract
(migration/migration.c, process_incoming_migration_bh: only a guest whose
source was running is started; any other run state is carried over): a
source that never ran a CPU (the pattern-paused workload, ``-S``, run state
``prelaunch``) must leave an autostarting destination in ``prelaunch``, so
the ``autostart`` check passes because nothing started.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from harness.matrix import tier_cells
from harness.migration.dst_start import AUTOSTART
from harness.migration.flow import run_cell
from harness.qemu.build import discover
from harness.results import PASSED, SKIPPED
from harness.run.runner import cell_logdir

pytestmark = [pytest.mark.qemu]


@pytest.mark.parametrize("build", ["system", "debian-10.0"])
def test_autostart_destination_keeps_a_never_run_source_paused(build, matrix, run_state,
                                                               record):
    cell = next(c for c in tier_cells(matrix, "pattern", resolve=discover)
                if c.target.workload.kind == "pattern-paused" and c.src_build.name == build)
    cell = replace(cell, id=f"{cell.id}-autostart", dst_start=AUTOSTART)
    result = record(run_cell(cell, cell_logdir(run_state.results_dir, cell.id)))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    assert result.verdict == PASSED, result.reason
    auto = result.check("autostart")
    assert auto is not None and auto.passed, auto
    assert auto.figures["source_runstate"] == "prelaunch"
    assert not auto.figures["started_by_itself"]
    assert result.figures["runstates"]["destination"] == "prelaunch"
