"""The migration-coverage report on real x86 machines (QEMU 7.2): every
device that holds state is in the migration stream."""
from __future__ import annotations

import asyncio

import pytest

from harness.cell import BuildSpec
from harness.coverage import coverage_report
from harness.qemu.build import discover
from harness.workloads.pattern import migrate_pattern

QEMU = "/usr/bin/qemu-system-x86_64"


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_x86_coverage_passes(machine, tmp_path):
    build = discover(BuildSpec(name="system", binary=QEMU))

    async def go():
        out = await migrate_pattern([QEMU], {}, ["-M", machine, "-accel", "tcg"], 128 << 20,
                                    64 << 20, 1 << 20, 1, tmp_path, tmp_path, running=False,
                                    arch="x86_64")
        src, dst = out.pop("machines")
        try:
            return await coverage_report(src, build, machine)
        finally:
            await src.close()
            await dst.close()
    rep = asyncio.run(go())
    assert rep["passed"], rep["summary"]
    types = {e["type"] for e in rep["covered"]}
    assert {"qemu64-x86_64-cpu", "apic", "isa-serial", "mc146818rtc", "hpet"} <= types
    assert not rep["truncated"]
    assert rep["summary"].startswith(f"{len(rep['covered'])} of {len(rep['devices'])} devices")
    assert all("why" in e for e in rep["not_covered_fine"])
