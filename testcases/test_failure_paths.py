"""Failure-path migrations on real QEMU: the cells of the matrix's
``failpaths`` tier, run exactly as ``mharness run --tier failpaths`` runs them
(``harness.run.cellrun.run_logged``: the scenario, its harness.log, its result).

The matrix says which scenarios run on which builds (``failpaths``: every
scenario on Debian's 7.2, required, and on QEMU 10.0, skipped with a reason
when its private prefix is not set up).  One test id per cell, the cell id
without its ``failpath-`` prefix, e.g. ``test_failure_path[cancel-in-active-qemu-7.2]``;
results.json records the cell id (``failpath-cancel-in-active-qemu-7.2``), as
the CLI does.  Each cell requires every check to pass: the right end state
and error (pattern from QEMU's source), the source running with its guest
heartbeating, and its RAM intact (exact comparison after a second migration,
or the guest invariant on the stopped source).  ``postcopy-recover`` also has
its state sequence from ``postcopy-paused`` on checked per build
(``RECOVERY_STATES``); ``postcopy-break-unrecovered`` is its negative
control.  The last tests show the live checks can fail.
"""
from __future__ import annotations

import asyncio
import mmap
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from harness.cell import Cell
from harness.matrix import load_matrix, tier_cells
from harness.scenarios.rig import Rig, source_running
from harness.run.cellrun import run_logged
from harness.run.rundir import runtime_dir
from harness.qemu.build import QemuBuild, discover
from harness.results import KNOWN_FAILURE, PASSED, SKIPPED
from harness.run.runner import cell_logdir

pytestmark = pytest.mark.qemu

#: The matrix tier whose cells are the failure paths.
TIER = "failpaths"
PREFIX = "failpath-"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "failpath_cell" in metafunc.fixturenames:
        matrix = load_matrix(Path(metafunc.config.getoption("--matrix")))
        cells = tier_cells(matrix, TIER, resolve=discover) if TIER in matrix.tiers else []
        metafunc.parametrize("failpath_cell", cells,
                             ids=[c.id.removeprefix(PREFIX) for c in cells])


def test_failure_path(failpath_cell: Cell, run_state, record) -> None:
    cell = failpath_cell
    assert cell.scenario, f"{cell.id} ({cell.origin}) is not a scenario cell"
    result = record(run_logged(cell, cell_logdir(run_state.results_dir, cell.id)))
    if result.verdict == SKIPPED:
        # Only an optional build that is not there skips: never the required
        # build, nor a scenario that a build at hand should run.
        missing = discover(cell.src_build).missing
        assert missing and not cell.src_build.required, result.reason
        pytest.skip(f"{result.reason} (bash scripts/setup.sh sets up QEMU 10.0)")
    if result.verdict == KNOWN_FAILURE:
        # A build's own defect, declared in matrix.yaml's known-issues: shown
        # as an expected failure, never as a pass.
        pytest.xfail(result.reason)
    bad = [f"{c.name}: {c.summary}" for c in result.checks if not c.passed]
    assert result.verdict == PASSED, f"{result.reason}\nfailed checks: {bad}\n" \
                                     f"logs: {result.logdir}"
    want = RECOVERY_STATES.get(cell.scenario, {}).get(cell.src_build.name)
    if want is not None:
        _assert_recovery_states(result.figures, want)


#: Postcopy recovery, from the source's and the destination's first
#: ``postcopy-paused`` on: the MIGRATION events each build sends (QEMU
#: behaviour modelled per build, as seen here).
#: * 10.0's source passes through ``postcopy-recover-setup`` (migration.c
#:   migrate_prepare, QEMU >= 9.1) before ``postcopy-recover``;
#: * 7.2's destination sends a 'setup' event on ``migrate-recover`` although its
#:   state stays ``postcopy-paused`` (migration.c qemu_start_incoming_migration
#:   calls qapi_event_send_migration(SETUP) unconditionally; 10.0's
#:   migration_incoming_state_setup leaves a paused state alone).
RECOVERY_STATES = {
    "postcopy-recover": {
        "system": {"source": ["postcopy-paused", "postcopy-recover", "postcopy-active",
                              "completed"],
                   "destination": ["postcopy-paused", "setup", "postcopy-recover",
                                   "postcopy-active", "completed"]},
        "debian-10.0": {"source": ["postcopy-paused", "postcopy-recover-setup",
                                   "postcopy-recover", "postcopy-active", "completed"],
                        "destination": ["postcopy-paused", "postcopy-recover",
                                        "postcopy-active", "completed"]},
    },
    "postcopy-break-unrecovered": {
        build: {"source": ["postcopy-paused"], "destination": ["postcopy-paused"]}
        for build in ("system", "debian-10.0")},
}


def _assert_recovery_states(figures: dict, want: dict[str, list[str]]) -> None:
    for side, states in want.items():
        seen = figures["states"][side]
        tail = seen[seen.index("postcopy-paused"):]
        assert tail == states, f"{side}: {seen}"


# -- the live checks can fail ----------------------------------------------------

@pytest.fixture(scope="module")
def required_build(matrix) -> QemuBuild:
    """The matrix's required x86_64 build (Debian's 7.2): never a skip."""
    spec = next((s for s in matrix.build_specs()
                 if s.required and s.binary.endswith("x86_64")), None)
    if spec is None:
        pytest.fail("the matrix has no required x86_64 build")
    build = discover(spec)
    if build.missing:
        pytest.fail(f"required QEMU build '{spec.name}' is missing: {build.missing}")
    return build


async def _with_source(build: QemuBuild, logdir: Path, body):
    logdir.mkdir(parents=True, exist_ok=True)
    workdir = runtime_dir()
    try:
        async with AsyncExitStack() as stack:
            rig = Rig(build, logdir, workdir, stack)
            src = await rig.source()
            return await body(rig, src)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_source_running_check_fails_on_stopped_source(required_build, run_state) -> None:
    build = required_build

    async def body(rig, src):
        running = await source_running(src)
        await src.m.execute("stop")
        stopped = await source_running(src, timeout=1.0)
        return running, stopped

    running, stopped = asyncio.run(_with_source(
        build, cell_logdir(run_state.results_dir, "failpath-control-stopped-source"), body))
    assert running.passed, running.summary
    assert not stopped.passed
    assert "'paused'" in stopped.summary


def test_refusal_check_fails_when_qemu_accepts(required_build, run_state) -> None:
    """``expect_refusal`` of a command QEMU accepts is a failed check."""
    build = required_build

    async def body(rig, src):
        # query-status is accepted: the "refusal" check must fail.
        return await rig.expect_refusal("migrate-bad-scheme", src.m, "query-status")

    check = asyncio.run(_with_source(
        build, cell_logdir(run_state.results_dir, "failpath-control-accepted"), body))
    assert not check.passed
    assert "no error reported" in check.summary


def test_source_invariant_check_fails_on_stale_page(required_build, run_state) -> None:
    """The stopped-source guest invariant catches a page two passes behind."""
    build = required_build

    async def body(rig, src):
        await src.m.execute("stop")
        wl = src.target.workload
        offset = wl.region_base + (wl.region_size // 2 // 4096) * 4096
        with open(src.paths.ram, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            m[offset] = (m[offset] - 2) & 0xFF
        check = await rig.source_invariant(src)
        return check

    check = asyncio.run(_with_source(
        build, cell_logdir(run_state.results_dir, "failpath-control-stale-page"), body))
    assert not check.passed, check.summary
