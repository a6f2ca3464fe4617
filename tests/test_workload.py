"""The workload strategies without QEMU: which one a cell gets, the arguments
each side needs, and the evidence each collects (on fake machines and RAM
files), so the e2k path is exercised even where no qemu-system-e2k exists."""
from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from harness.cell import BuildSpec, Cell, TargetSpec, WorkloadSpec
from harness.guest import e2k_dirtier
from harness.guest.workload import (MARKER_ADDR, E2kDirtier, GuestProgressError, Pattern,
                                    PatternPaused, X86Dirtier, wait_warm_up, workload_for)
from harness.units import MiB

BUILD = BuildSpec("b", "/nonexistent/qemu")


def _cell(kind: str = "dirtier", arch: str = "x86_64", region: int = 1 * MiB) -> Cell:
    wl = WorkloadSpec(kind=kind, region_base=2 * MiB, region_size=region, warmup_passes=2)
    return Cell(id=f"{arch}-{kind}", target=TargetSpec("t", arch=arch, memory=8 * MiB,
                                                       workload=wl),
                src_build=BUILD, dst_build=BUILD)


class FakeMachine:
    def __init__(self, role: str = "dst", alive: bool = True) -> None:
        self.role, self.alive = role, alive

    def exit_reason(self) -> str:
        return "running" if self.alive else "killed by SIGKILL"

    async def status(self) -> str:
        return "running"


@pytest.mark.parametrize("kind,arch,cls", [
    ("dirtier", "x86_64", X86Dirtier), ("dirtier", "e2k", E2kDirtier),
    ("pattern", "x86_64", Pattern), ("pattern", "e2k", Pattern),
    ("pattern-paused", "x86_64", PatternPaused),
])
def test_workload_for_picks_by_kind_and_arch(tmp_path, kind, arch, cls):
    assert type(workload_for(_cell(kind, arch), tmp_path)) is cls


def test_machine_args_per_side(tmp_path):
    x86 = workload_for(_cell(), tmp_path)
    assert x86.needs_disk and x86.machine_args("src") == [] == x86.machine_args("dst")
    pattern = workload_for(_cell("pattern"), tmp_path)
    src = pattern.machine_args("src")
    assert not pattern.needs_disk and src[0] == "-device" and "-S" not in src
    assert "addr=0x200000" in src[1] and (tmp_path / "pattern.bin").stat().st_size == 1 * MiB
    assert pattern.machine_args("dst") == []  # only the source gets the pattern
    paused = workload_for(_cell("pattern-paused"), tmp_path)
    assert paused.machine_args("src")[-1] == "-S" and paused.machine_args("dst") == []


def test_e2k_dirtier_boots_both_sides_from_one_firmware(tmp_path):
    e2k = workload_for(_cell(arch="e2k"), tmp_path)
    src, dst = e2k.machine_args("src"), e2k.machine_args("dst")
    assert src == dst and src[0] == "-bios" and not e2k.needs_disk
    base, pages, marker = e2k_dirtier.read_params(Path(src[1]))
    assert (base, pages, marker) == (2 * MiB, 256, MARKER_ADDR)


def _ram(tmp_path: Path, boots: int, passes: int) -> Path:
    ram = tmp_path / "dst.ram"
    if not ram.exists():
        ram.write_bytes(bytes(8 * MiB))
    with open(ram, "r+b") as f:
        f.seek(MARKER_ADDR)
        f.write(struct.pack(e2k_dirtier.MARKER_FORMAT, boots, passes))
    return ram


def test_e2k_warm_up_and_liveness_read_the_marker(tmp_path):
    e2k = workload_for(_cell(arch="e2k"), tmp_path)
    ram = _ram(tmp_path, 1, 5)
    figures: dict = {}
    asyncio.run(e2k.warm_up(FakeMachine("src"), ram, figures))
    assert figures == {"warmup_passes": 5}
    e2k.before_cont(ram)
    _ram(tmp_path, 1, 9)
    live = asyncio.run(e2k.liveness(FakeMachine(), ram))
    assert live.passed and live.figures["passes_after"] == 9


def test_e2k_liveness_sees_a_reset_cpu(tmp_path):
    e2k = workload_for(_cell(arch="e2k"), tmp_path)
    ram = _ram(tmp_path, 1, 5)
    e2k.before_cont(ram)
    _ram(tmp_path, 2, 0)  # the CPU started again from the reset PC
    live = asyncio.run(e2k.liveness(FakeMachine(), ram))
    assert not live.passed and "CPU state not migrated" in live.summary


def test_e2k_liveness_of_a_dead_destination(tmp_path):
    e2k = workload_for(_cell(arch="e2k"), tmp_path)
    ram = _ram(tmp_path, 1, 5)
    e2k.before_cont(ram)
    live = asyncio.run(e2k.liveness(FakeMachine(alive=False), ram))
    assert not live.passed and live.summary == "destination died after cont: killed by SIGKILL"


def test_warm_up_failures_say_how_far_the_guest_got():
    async def wait(m):
        await wait_warm_up(m, lambda: 1, lambda: "1/3 heartbeats", 3, 0.05)

    with pytest.raises(GuestProgressError) as err:
        asyncio.run(wait(FakeMachine("src")))
    assert str(err.value) == "source warm-up: 1/3 heartbeats after 0 s"
    assert not err.value.qemu_died
    with pytest.raises(GuestProgressError) as err:
        asyncio.run(wait(FakeMachine("src", alive=False)))
    assert str(err.value) == "source warm-up: src QEMU died: killed by SIGKILL"
    assert err.value.qemu_died


def test_x86_guest_gap_takes_off_the_harness_hold(tmp_path):
    x86 = workload_for(_cell(), tmp_path)
    src, dst = x86.serial_sink("src"), x86.serial_sink("dst")
    src(b"noise" + b"MHDIRTIER\r\n" + b"\x01", 10.0)
    src(b"\x02", 10.5)
    dst(b"\x03", 11.5)
    dst(b"\x04", 11.7)
    gap = x86.guest_gap(held_s=0.25, t_source_done=10.9, qemu_downtime_ms=100)
    # Gap: 11.5 - 10.5 - 0.25 s.  Resolution: on the source the longer of its
    # last interval (0.5 s) and the pass under way at the stop (10.8 - 10.5 s),
    # plus the destination's last interval (0.2 s).
    assert gap.gap_ms == pytest.approx(750)
    assert gap.resolution_ms == pytest.approx(700)


def test_x86_guest_gap_says_where_the_gap_went(tmp_path):
    x86 = workload_for(_cell(), tmp_path)
    src, dst = x86.serial_sink("src"), x86.serial_sink("dst")
    src(b"MHDIRTIER\r\n" + b"\x01", 10.0)
    src(b"\x02", 10.1)
    dst(b"\x03", 11.6)
    dst(b"\x04", 11.7)
    gap = x86.guest_gap(held_s=0.8, t_source_done=10.2, qemu_downtime_ms=50,
                        t_dst_ready=10.5, t_resumed=11.3)
    # 10.1 -> 10.2 (source done) -> 10.5 (destination ready) -> held 0.8 s
    # -> 11.3 (cont) -> 11.6 (first destination heartbeat): 1.5 - 0.8 s.
    assert gap.gap_ms == pytest.approx(700)
    assert gap.parts == pytest.approx({
        "last_source_beat_to_source_done_ms": 100, "source_done_to_destination_ready_ms": 300,
        "resumed_to_first_destination_beat_ms": 300, "destination_pass_interval_ms": 100})
    # Unknown ends leave their part out.
    assert "source_done_to_destination_ready_ms" not in x86.guest_gap(0.0, 10.2, 50).parts
    # Resolution: the source's last interval (0.1 s) plus, on the destination,
    # the larger of its steady interval (0.1 s) and its first pass after cont
    # (0.3 s), which is the rest of the interrupted pass...
    assert gap.resolution_ms == pytest.approx(400)
    # ...but not in postcopy, where that pass waited for pages still on the
    # source: time the guest really was stopped.
    postcopy = x86.guest_gap(held_s=0.8, t_source_done=10.2, qemu_downtime_ms=50,
                             t_dst_ready=10.5, t_resumed=11.3, postcopy=True)
    assert postcopy.resolution_ms == pytest.approx(200)


def test_workloads_without_heartbeats_see_no_gap(tmp_path):
    for kind, arch in (("pattern", "x86_64"), ("dirtier", "e2k")):
        wl = workload_for(_cell(kind, arch), tmp_path)
        assert wl.serial_sink("src") is None
        gap = wl.guest_gap(0.0, 1.0, 50)
        assert gap.gap_ms is None and gap.resolution_ms is None


def test_pattern_paused_checks_zero_pages(tmp_path):
    paused = workload_for(_cell("pattern-paused"), tmp_path)
    (check,) = paused.stream_checks({"ram": {"transferred": 2 * MiB}})
    assert check.name == "zero-pages" and check.passed
    assert workload_for(_cell("pattern"), tmp_path).stream_checks({}) == []
