"""The CPU-state fidelity check on real x86 migrations.

The flow runs the check in its verify phase, with the source in
``postmigrate`` and the destination paused.  A pass on q35 and pc, then two
faults planted on the paused destination through the flow's
``CellHooks.after_migrate`` hook (after the migration, before any check):
running it for a moment (registers move on: the check names them) and a
``system_reset`` (the e2k symptom: "CPU state not migrated").
"""
from __future__ import annotations

import dataclasses

import pytest

from harness.cell import Cell
from harness.checks.cpustate import NOT_MIGRATED
from harness.guest.dirtier import read_region_bytes
from harness.matrix import tier_cells
from harness.migration.flow import CellHooks, run_cell
from harness.qemu.build import discover
from harness.results import SKIPPED
from harness.run.runner import cell_logdir
from harness.units import PAGE
from harness.waiting import poll_until

#: How long the resumed destination gets to show it ran (a TCG dirtier
#: writes its first page within milliseconds of its vCPU being scheduled).
RAN_TIMEOUT = 10.0


def _smoke_cell(matrix, machine: str) -> Cell:
    cells = [c for c in tier_cells(matrix, "smoke", resolve=discover) if c.target.accel == "tcg"
             and c.transport == "unix" and not c.expect_fail and c.target.machine == machine]
    if cells:
        return min(cells, key=lambda c: len(c.id))  # the plainest: no paramset
    pytest.fail(f"matrix.yaml's smoke tier has no TCG unix cell on {machine}")


def _run(cell: Cell, name: str, run_state, record, tamper=None):
    hooks = CellHooks()
    if tamper is not None:
        async def after_migrate(ctx, run) -> None:
            await tamper(ctx)

        hooks = CellHooks(after_migrate=after_migrate)
    cell = dataclasses.replace(cell, id=f"{cell.id}-cpustate-{name}")
    result = record(run_cell(cell, cell_logdir(run_state.results_dir, cell.id), hooks=hooks))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    check = result.check("cpu-state")
    assert check is not None, result.reason
    return result, check


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_cpu_state_identical_after_migration(machine, matrix, run_state, record):
    result, check = _run(_smoke_cell(matrix, machine), "pass", run_state, record)
    assert check.passed, check.summary
    assert check.figures["registers_compared"] >= 60
    assert result.verdict == "passed", result.reason


async def _run_briefly(ctx) -> None:
    """``cont``, wait until the guest has visibly run (a first byte of its
    region changed in the destination's RAM file), ``stop``.  Not a fixed
    sleep: on a loaded host the vCPU thread may not run within one."""
    wl, ram = ctx.cell.target.workload, ctx.dst_paths.ram

    def region():
        return read_region_bytes(ram, wl.region_base, wl.region_size // PAGE)

    before = region()
    await ctx.dst.execute("cont")
    await poll_until(region, lambda now: bool((now != before).any()), timeout=RAN_TIMEOUT,
                     what="the resumed destination guest writing its region")
    await ctx.dst.execute("stop")


def test_destination_that_ran_fails_naming_registers(matrix, run_state, record):
    _, check = _run(_smoke_cell(matrix, "q35"), "ran", run_state, record,
                    tamper=_run_briefly)
    assert not check.passed
    assert check.figures["diagnosis"] == "registers-differ"
    changed = {d["register"] for d in check.figures["differences"]}
    # The dirtier's loop moves its page pointer (ESI) and counter registers.
    assert changed & {"EIP", "EAX", "ESI", "ECX", "EDI", "EFL"}, changed
    first = check.figures["differences"][0]
    assert f"{first['register']} {first['src']} -> {first['dst']}" in check.summary


async def _reset(ctx) -> None:
    await ctx.dst.hmp("system_reset")


def test_reset_destination_is_diagnosed_as_not_migrated(matrix, run_state, record):
    _, check = _run(_smoke_cell(matrix, "pc"), "reset", run_state, record,
                    tamper=_reset)
    assert not check.passed
    assert check.summary.startswith(NOT_MIGRATED), check.summary
    assert "EIP 00007c" in check.summary or "EIP" in {d["register"] for d in
                                                     check.figures["differences"]}
