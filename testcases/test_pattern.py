"""The architecture-neutral pattern workload on real x86 QEMU (the ``pattern``
tier): a seeded pattern preloaded by the generic loader into the source only,
migrated with the firmware running and paused, found byte for byte on the
destination, with the cpu-state and coverage checks on the same pair."""
from __future__ import annotations

import mmap

import pytest

from harness.matrix import tier_cells
from harness.migration.flow import run_cell
from harness.qemu.build import discover
from harness.results import FAILED, PASSED, SKIPPED
from harness.run.runner import cell_logdir

MiB = 1 << 20


@pytest.fixture(params=["x86_64-q35-tcg-pattern-unix-precopy",
                        "x86_64-pc-tcg-pattern-paused-tcp-precopy"])
def pattern_cell(request, matrix):
    return next(c for c in tier_cells(matrix, "pattern", resolve=discover)
                if c.id == request.param)


def test_pattern_survives_migration(pattern_cell, run_state, record):
    result = record(run_cell(pattern_cell, cell_logdir(run_state.results_dir, pattern_cell.id)))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    assert result.verdict == PASSED, result.reason
    assert {"ram", "pattern", "cpu-state", "coverage", "liveness"} <= {c.name for c in result.checks}


def test_flipped_pattern_byte_is_found_at_its_address(matrix, run_state, record):
    cell = next(c for c in tier_cells(matrix, "pattern", resolve=discover)
                if c.target.workload.kind == "pattern")
    wl = cell.target.workload
    target = wl.region_base + 0x12345

    def flip(src, dst):
        with open(dst, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            m[target] ^= 0x01

    result = record(run_cell(cell, cell_logdir(run_state.results_dir, cell.id + "-flip"),
                             inject=flip))
    assert result.verdict == FAILED
    pattern = result.check("pattern")
    assert not pattern.passed
    assert pattern.figures["first_differences"][0]["gpa"] == hex(target)
