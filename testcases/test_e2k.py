"""Against a porter's e2k build (OpenE2K/qemu-e2k, e2k-softmmu): the e2k tier
of matrix.yaml, run exactly as a porter runs it (``--qemu`` override).  The
pattern migrates intact; the cpu-state check diagnoses the CPU state that is
not migrated; the coverage report names the devices without VMState.  The
cells expect all of it to migrate (the contract); against qemu-e2k 6.0.x the
matrix's known issues (e2k-cpu-vmstate, e2k-devices-vmstate) make them known
failures, judged here as the runner judges them.

Needs MHARNESS_E2K_QEMU (a qemu-system-e2k binary) and optionally
MHARNESS_E2K_BIOS (a firmware; default: a zero-filled placeholder the CPU
executes from 0x100000000).  The harness never calls query-cpus-fast,
query-target, HMP 'info cpus' or '-cpu help' on it (they crash that build)."""
from __future__ import annotations

import pytest

from harness.checks.cpustate import NOT_MIGRATED
from harness.known_issues import apply_known_issues
from harness.migration.flow import run_cell
from harness.matrix import override_build, tier_cells
from harness.qemu.build import discover
from harness.results import KNOWN_FAILURE
from harness.run.runner import cell_logdir
from qemu_builds import E2K, needs_e2k

pytestmark = needs_e2k


@pytest.fixture
def e2k_cells(matrix):
    cells = tier_cells(matrix, "e2k", resolve=discover)
    return {c.target.workload.kind: c for c in override_build(cells, E2K)}


def test_e2k_paused_pattern_and_coverage(e2k_cells, run_state, record):
    cell = e2k_cells["pattern-paused"]
    result = record(apply_known_issues(run_cell(cell, cell_logdir(run_state.results_dir, cell.id)),
                                       cell.known_issues))
    assert result.verdict == KNOWN_FAILURE, result.reason
    assert result.check("pattern").passed and result.check("ram").passed
    cov = result.check("coverage")
    assert not cov.passed and "no VMState:" in cov.summary
    missing = {e["type"] for e in cov.figures["not_covered"]}
    assert {"apic", "iohub"} <= missing


def test_e2k_running_cpu_state_not_migrated(e2k_cells, run_state, record):
    cell = e2k_cells["pattern"]
    result = record(apply_known_issues(run_cell(cell, cell_logdir(run_state.results_dir, cell.id)),
                                       cell.known_issues))
    assert result.verdict == KNOWN_FAILURE, result.reason
    assert result.check("pattern").passed
    cpu = result.check("cpu-state")
    assert not cpu.passed and cpu.summary.startswith(NOT_MIGRATED), cpu.summary
    assert "ip " in cpu.summary


def test_e2k_dirtier_runs_migrates_and_restarts(e2k_cells, run_state, record):
    """The e2k dirtier firmware (built by the project's own encoder) keeps its
    region consistent across the migration; after cont the destination CPU
    starts again from the reset PC, which its boots counter shows."""
    cell = e2k_cells["dirtier"]
    result = record(apply_known_issues(run_cell(cell, cell_logdir(run_state.results_dir, cell.id)),
                                       cell.known_issues))
    assert result.verdict == KNOWN_FAILURE, result.reason
    assert result.figures["warmup_passes"] >= cell.target.workload.warmup_passes
    assert result.check("ram").passed and result.check("guest").passed
    live = result.check("liveness")
    assert not live.passed and "guest restarted" in live.summary, live.summary
    assert live.figures["boots_after"] == live.figures["boots_before"] + 1
    cpu = result.check("cpu-state")
    assert not cpu.passed and cpu.summary.startswith(NOT_MIGRATED), cpu.summary
