"""Against a porter's e2k build (OpenE2K/qemu-e2k, e2k-softmmu): the pattern
migrates, the cpu-state check diagnoses the missing CPU VMState, the coverage
report names the devices without VMState.  Needs MHARNESS_E2K_QEMU (the
qemu-system-e2k binary) and optionally MHARNESS_E2K_BIOS (a firmware file;
default: 64 KiB of zeros, which the CPU executes from 0x100000000).  Never
calls query-cpus-fast, query-target, HMP 'info cpus' or '-cpu help' (they
crash that build)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from harness.cell import BuildSpec
from harness.checks.cpustate import NOT_MIGRATED
from harness.coverage import coverage_report
from harness.qemu.build import QemuBuild
from harness.workloads.pattern import migrate_pattern

E2K = os.environ.get("MHARNESS_E2K_QEMU")
pytestmark = pytest.mark.skipif(
    not E2K or not os.access(E2K, os.X_OK),
    reason="no e2k build configured: set MHARNESS_E2K_QEMU to a qemu-system-e2k binary")


def _run(tmp_path: Path, running: bool, coverage: bool = False) -> dict:
    bios = os.environ.get("MHARNESS_E2K_BIOS")
    if not bios:
        bios = str(tmp_path / "zero.bin")
        Path(bios).write_bytes(bytes(65536))

    async def go():
        out = await migrate_pattern([E2K], {}, ["-M", "e2k", "-accel", "tcg", "-bios", bios],
                                    128 << 20, 64 << 20, 16 << 20, 7, tmp_path, tmp_path,
                                    running=running, arch="e2k")
        src, dst = out.pop("machines")
        try:
            if coverage:
                build = QemuBuild(spec=BuildSpec(name="e2k", binary=E2K), arch="e2k")
                out["coverage"] = await coverage_report(src, build, "e2k")
        finally:
            await src.close()
            await dst.close()
        return out
    return asyncio.run(go())


def test_e2k_paused_pattern_and_coverage(tmp_path):
    out = _run(tmp_path, running=False, coverage=True)
    assert out["status"] == "completed"
    assert out["pattern"].passed, out["pattern"].summary
    rep = out["coverage"]
    assert not rep["passed"]
    assert "no VMState:" in rep["summary"]
    missing = {e["type"] for e in rep["not_covered"]}
    assert {"apic", "iohub"} <= missing
    assert any("CPU" in e["why"] for e in rep["not_covered"])


def test_e2k_running_cpu_state_not_migrated(tmp_path):
    out = _run(tmp_path, running=True)
    assert out["status"] == "completed"
    assert out["pattern"].passed, out["pattern"].summary
    cpu = out["cpu-state"]
    assert not cpu.passed
    assert cpu.summary.startswith(NOT_MIGRATED), cpu.summary
    assert "ip " in cpu.summary
