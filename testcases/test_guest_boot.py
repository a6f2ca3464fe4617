"""The dirtier guest boots in real QEMU, and its serial and RAM agree.

One machine per case (no migration): wait for the banner and heartbeats,
``stop`` it, then check the one-step invariant straight from the RAM file and
that it agrees with the last heartbeat.  This is the evidence a migration cell
reads from its paused destination, so it must be right on its own first.
"""
from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from harness.cell import BuildSpec, TargetSpec
from harness.run.rundir import runtime_dir
from harness.qemu.build import discover
from harness.qemu.cmdline import MachinePaths, firmware_args, machine_argv
from harness.qemu.machine import Machine
from harness.guest import dirtier as d
from harness.waiting import WaitAborted, WaitTimeout, poll_until
from qemu_builds import usable

MiB = 1 << 20
SYSTEM = BuildSpec("system", "/usr/bin/qemu-system-x86_64", required=True)


async def _boot(target: TargetSpec, logdir: Path, want: int, timeout: float):
    build = usable(discover(SYSTEM))
    problem = build.accel_problems.get(target.accel)
    if problem:
        pytest.skip(f"{target.accel}: {problem}")
    wl = target.workload
    work = runtime_dir()
    try:
        paths = MachinePaths(qmp=work / "qmp", serial=work / "serial", ram=work / "ram",
                             disk=d.make_disk(work / "disk", wl.region_base, wl.region_size,
                                              ram_size=target.memory))
        parser = d.HeartbeatParser()
        # qboot: the dirtier's PVH build as -kernel (the disk stays attached).
        boot = firmware_args(target.arch, work, target.firmware) + d.boot_args(
            target.firmware, work, wl.region_base, wl.region_size, target.memory)
        t0 = time.monotonic()
        async with Machine("src", machine_argv(build, target, paths, incoming=False,
                                               extra=tuple(boot)),
                           build.env(), qmp_path=paths.qmp, serial_path=paths.serial,
                           logdir=logdir, t0=t0, serial_sink=parser.feed) as m:
            try:
                await poll_until(lambda: parser.heartbeats, lambda n: n >= want,
                                 timeout=timeout - (time.monotonic() - t0),
                                 what=f"{want} heartbeats",
                                 abort=lambda: None if m.alive else m.exit_reason())
            except (WaitTimeout, WaitAborted) as exc:
                pytest.fail(f"{exc} (banner: {parser.banner_seen})")
            await m.execute("stop")
            await asyncio.sleep(0.05)  # the serial socket may still hold the last bytes
            status = await m.status()
            region = d.check_invariant(d.read_region_bytes(paths.ram, wl.region_base,
                                                           wl.region_size // d.PAGE))
        return parser, region, status, parser.first_heartbeat_t - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("firmware", ["seabios", "qboot"])
@pytest.mark.parametrize("accel", ["tcg", "kvm"])
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_dirtier_boots_and_its_ram_agrees_with_serial(machine, accel, firmware, tmp_path):
    target = TargetSpec(name="boot", machine=machine, accel=accel, memory=256 * MiB,
                        cpu="qemu64,-kvmclock" if accel == "kvm" else None, firmware=firmware)
    want = 20 if accel == "tcg" else 2
    parser, region, status, first = asyncio.run(_boot(target, tmp_path, want, 60))
    assert status == "paused"
    assert parser.banner_count == 1, "banner missing, or the guest restarted"
    assert parser.sequence_errors == 0
    assert region.ok, region.reason
    assert d.heartbeat_agrees(region, parser.last_value), (region, parser.last_value)
    print(f"\n{machine}/{accel}/{firmware}: first heartbeat after {first:.2f} s, "
          f"rate {parser.rate()} /s")
