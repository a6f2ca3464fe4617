"""The migration-coverage report on real x86 machines (QEMU 7.2): every
device that holds state is in the migration stream (q35 and pc)."""
from __future__ import annotations

import pytest

from harness.matrix import tier_cells
from harness.migration.flow import run_cell
from harness.qemu.build import discover
from harness.results import PASSED, SKIPPED
from harness.run.runner import cell_logdir


@pytest.mark.parametrize("kind", ["pattern", "pattern-paused"], ids=["q35", "pc"])
def test_x86_coverage_passes(kind, matrix, run_state, record):
    cell = next(c for c in tier_cells(matrix, "pattern", resolve=discover)
                if c.target.workload.kind == kind)
    result = record(run_cell(cell, cell_logdir(run_state.results_dir, cell.id + "-coverage")))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    assert result.verdict == PASSED, result.reason
    rep = result.figures["coverage"]
    assert rep["passed"], rep["summary"]
    types = {e["type"] for e in rep["covered"]}
    assert {"qemu64-x86_64-cpu", "apic", "isa-serial", "mc146818rtc", "hpet"} <= types
    assert not rep["truncated"]
    assert rep["summary"].startswith(f"{len(rep['covered'])} of {len(rep['devices'])} devices")
    assert all("why" in e for e in rep["not_covered_fine"])
