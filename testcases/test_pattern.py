"""The architecture-neutral pattern workload on real x86 QEMU: a seeded
pattern preloaded by the generic loader into the source only, migrated paused
and running, found byte for byte on the destination; the cpu-state check runs
on the same pair."""
from __future__ import annotations

import asyncio
import mmap
from pathlib import Path

import pytest

from harness.workloads.pattern import check_pattern, migrate_pattern

QEMU = "/usr/bin/qemu-system-x86_64"
MiB = 1 << 20


def _run(machine: str, running: bool, tmp_path: Path) -> dict:
    async def go():
        out = await migrate_pattern([QEMU], {}, ["-M", machine, "-accel", "tcg"], 128 * MiB,
                                    64 * MiB, 16 * MiB, 20240607, tmp_path, tmp_path,
                                    running=running, arch="x86_64")
        for m in out.pop("machines", ()):
            await m.close()
        return out
    return asyncio.run(go())


@pytest.mark.parametrize("machine", ["q35", "pc"])
@pytest.mark.parametrize("running", [False, True], ids=["paused", "running"])
def test_pattern_survives_migration(machine, running, tmp_path):
    out = _run(machine, running, tmp_path)
    assert out["status"] == "completed", out
    assert out["runstates"]["source"] == "postmigrate"
    assert out["pattern"].passed, out["pattern"].summary
    assert out["cpu-state"].passed, out["cpu-state"].summary
    # One flipped byte on the destination is found at its address.
    with open(tmp_path / "dst.ram", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[64 * MiB + 0x12345] ^= 0x01
    bad = check_pattern(tmp_path / "dst.ram", 64 * MiB, 16 * MiB, 20240607)
    assert not bad.passed
    assert bad.figures["first_differences"][0]["gpa"] == hex(64 * MiB + 0x12345)
