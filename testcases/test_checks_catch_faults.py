"""The checks catch what they exist for, on a real migration.

Each test runs a real TCG cell and injects one fault into the destination's
RAM file while both VMs are stopped (after the migration, before the
checks), then asserts that the right check fails and names the right page.
A check that cannot fail would make these tests fail.
"""
from __future__ import annotations

import dataclasses
import mmap
from pathlib import Path

import pytest

from harness.cell import Cell
from harness.matrix import tier_cells
from harness.migration.flow import run_cell
from harness.qemu.build import discover
from harness.results import FAILED, PASSED, SKIPPED
from harness.run.runner import cell_logdir


@pytest.fixture
def base_cell(matrix) -> Cell:
    """The first smoke cell that runs under TCG over a unix socket."""
    for cell in tier_cells(matrix, "smoke", resolve=discover):
        if cell.target.accel == "tcg" and cell.transport == "unix" and not cell.expect_fail:
            return cell
    pytest.fail("matrix.yaml's smoke tier has no TCG unix cell")


def _run(cell: Cell, run_state, record, inject, name: str):
    cell = dataclasses.replace(cell, id=f"{cell.id}-{name}")
    result = record(run_cell(cell, cell_logdir(run_state.results_dir, cell.id), inject=inject))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    return result


def _poke(path: Path, offset: int, change) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[offset] = change(m[offset]) & 0xFF


def test_one_corrupted_byte_fails_ram_check_with_its_address(base_cell, run_state, record):
    offset = 0x345678  # not the first byte of a page: only the exact comparison can see it
    result = _run(base_cell, run_state, record,
                  lambda src, dst: _poke(dst, offset, lambda b: b ^ 0x5A), "corrupt-byte")
    ram = result.check("ram")
    assert result.verdict == FAILED
    assert ram is not None and not ram.passed
    assert ram.figures["differing_pages"] == 1
    assert ram.figures["first_differing_gpas"][0] == hex(offset & ~0xFFF)
    assert "0x345000" in result.reason
    assert result.check("guest").passed  # the invariant only reads first bytes


def test_stale_page_breaks_guest_invariant(base_cell, run_state, record):
    wl = base_cell.target.workload
    page = (wl.region_size // 4096) // 3
    offset = wl.region_base + page * 4096
    # Two passes behind its neighbours: what a lost dirty-page update looks like.
    result = _run(base_cell, run_state, record,
                  lambda src, dst: _poke(dst, offset, lambda b: b - 2), "stale-page")
    guest = result.check("guest")
    assert result.verdict == FAILED
    assert guest is not None and not guest.passed
    assert guest.figures["first_bad_gpa"] in (hex(offset - 4096), hex(offset), hex(offset + 4096))
    assert not result.check("ram").passed


def test_unchanged_run_passes(base_cell, run_state, record):
    """The same cell with a no-op injector passes: the faults above are the cause."""
    result = _run(base_cell, run_state, record, lambda src, dst: None, "no-fault")
    assert result.verdict == PASSED, result.reason


def test_negative_controls(control_cell, run_state, record):
    """Cells built to make one check fail (e.g. downtime-limit far below what
    is achievable with zero tolerance) pass only when that check fails."""
    result = record(run_cell(control_cell, cell_logdir(run_state.results_dir, control_cell.id)))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    for name in control_cell.expect_fail:
        check = result.check(name)
        assert check is not None, f"check {name} did not run: {result.reason}"
        assert not check.passed, f"negative control {name} passed: {check.summary}"
    assert result.verdict == PASSED, result.reason


def test_pmemsave_fallback_checks_the_same_and_catches_a_fault(base_cell, run_state, record,
                                                               monkeypatch):
    """With the RAM read through QMP ``pmemsave`` instead of the RAM files, the
    cell passes, and a corrupted destination byte is still found at its page."""
    monkeypatch.setenv("MHARNESS_RAM_SOURCE", "pmemsave")
    ok = _run(base_cell, run_state, record, lambda src, dst: None, "pmemsave")
    assert ok.verdict == PASSED, ok.reason
    assert ok.figures["ram_source"] == "pmemsave"
    offset = 0x456789
    bad = _run(base_cell, run_state, record,
               lambda src, dst: _poke(dst, offset, lambda b: b ^ 0x11), "pmemsave-corrupt")
    ram = bad.check("ram")
    assert not ram.passed and ram.figures["first_differing_gpas"][0] == hex(offset & ~0xFFF)
