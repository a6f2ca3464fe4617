"""Failure-path migrations on real QEMU: 7.2 (required) and 10.0 (skipped
with a reason when its private prefix is not set up).

One test id per scenario and build, e.g. ``test_failure_path[cancel-in-active-qemu-7.2]``.
Each runs one scenario of the :mod:`harness.scenarios` registry and requires every check to pass:
the right end state and error (pattern from QEMU's source), the source
running with its guest heartbeating, and its RAM intact (exact comparison
after a second migration, or the guest invariant on the stopped source).
``postcopy-recover`` also has its state sequence from ``postcopy-paused`` on
checked per build (``RECOVERY_STATES``); ``postcopy-break-unrecovered`` is its
negative control.  The last tests show the live checks can fail.
"""
from __future__ import annotations

import asyncio
import mmap
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from harness.scenarios import SCENARIOS, run_scenario
from harness.scenarios.rig import Rig, source_running
from harness.run.rundir import runtime_dir
from harness.qemu.build import QemuBuild, discover
from harness.results import PASSED, SKIPPED
from harness.run.runner import cell_logdir

pytestmark = pytest.mark.qemu

#: Matrix build name -> label in test ids.
BUILDS = {"system": "qemu-7.2", "debian-10.0": "qemu-10.0"}
REQUIRED = "system"


@pytest.fixture(scope="module")
def builds(matrix) -> dict[str, QemuBuild]:
    specs = {s.name: s for s in matrix.build_specs() if s.binary.endswith("x86_64")}
    return {name: discover(specs[name]) for name in BUILDS if name in specs}


def _build(builds: dict[str, QemuBuild], name: str) -> QemuBuild:
    build = builds.get(name)
    if name == REQUIRED:
        # Never turn a missing system QEMU into a pass or a skip.
        if build is None or build.missing:
            pytest.fail(f"required QEMU build '{name}' is missing: "
                        f"{build.missing if build else 'not in matrix.yaml'}")
    elif build is None or build.missing:
        pytest.skip(f"optional QEMU build '{name}' unavailable: "
                    f"{build.missing if build else 'not in matrix.yaml'} "
                    "(bash scripts/setup.sh sets it up)")
    return build


@pytest.mark.parametrize("build_name", list(BUILDS), ids=list(BUILDS.values()))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_failure_path(scenario: str, build_name: str, builds, run_state, record) -> None:
    build = _build(builds, build_name)
    result_id = SCENARIOS[scenario].result_id(BUILDS[build_name])
    result = run_scenario(scenario, build, cell_logdir(run_state.results_dir, result_id),
                          result_id)
    record(result)
    assert result.verdict != SKIPPED, result.reason
    bad = [f"{c.name}: {c.summary}" for c in result.checks if not c.passed]
    assert result.verdict == PASSED, f"{result.reason}\nfailed checks: {bad}\n" \
                                     f"logs: {result.logdir}"
    if scenario in RECOVERY_STATES:
        _assert_recovery_states(result.figures, RECOVERY_STATES[scenario][build_name])


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
        for build in BUILDS},
}


def _assert_recovery_states(figures: dict, want: dict[str, list[str]]) -> None:
    for side, states in want.items():
        seen = figures["states"][side]
        tail = seen[seen.index("postcopy-paused"):]
        assert tail == states, f"{side}: {seen}"


# -- the live checks can fail ----------------------------------------------------

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


def test_source_running_check_fails_on_stopped_source(builds, run_state) -> None:
    build = _build(builds, REQUIRED)

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


def test_refusal_check_fails_when_qemu_accepts(builds, run_state) -> None:
    """``expect_refusal`` of a command QEMU accepts is a failed check."""
    build = _build(builds, REQUIRED)

    async def body(rig, src):
        # query-status is accepted: the "refusal" check must fail.
        return await rig.expect_refusal("migrate-bad-scheme", src.m, "query-status")

    check = asyncio.run(_with_source(
        build, cell_logdir(run_state.results_dir, "failpath-control-accepted"), body))
    assert not check.passed
    assert "no error reported" in check.summary


def test_source_invariant_check_fails_on_stale_page(builds, run_state) -> None:
    """The stopped-source guest invariant catches a page two passes behind."""
    build = _build(builds, REQUIRED)

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
