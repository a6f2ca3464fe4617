"""The checks as functions of evidence: each must be able to fail."""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from harness.qemu.runqueue import HostWait
from harness.checks.downtime import DowntimeEvidence, check_downtime
from harness.checks.ram import check_ram, compare_files, gpa_of, x86_layout
from harness.results import FAILED, PASSED, CheckResult, judge

MiB = 1 << 20


def _ram_pair(tmp_path: Path, size: int = 8 * MiB) -> tuple[Path, Path]:
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    a, b = tmp_path / "src.ram", tmp_path / "dst.ram"
    a.write_bytes(data)
    b.write_bytes(data)
    return a, b


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[offset] ^= 0xFF


def test_identical_files_pass(tmp_path):
    a, b = _ram_pair(tmp_path)
    res = check_ram(a, b, x86_layout(8 * MiB))
    assert res.passed and res.figures["differing_pages"] == 0
    assert res.figures["bytes_compared"] == 8 * MiB


def test_one_corrupted_byte_is_found_with_its_page(tmp_path):
    a, b = _ram_pair(tmp_path)
    _flip(b, 0x123456)
    res = check_ram(a, b, x86_layout(8 * MiB))
    assert not res.passed
    assert res.figures["differing_pages"] == 1
    assert res.figures["first_differing_gpas"] == ["0x123000"]
    assert "0x123000" in res.summary


def test_counts_pages_across_chunks_and_keeps_order(tmp_path):
    a, b = _ram_pair(tmp_path, 40 * MiB)  # more than two 16 MiB chunks
    for off in (5, 4096 * 3 + 7, 20 * MiB + 1, 40 * MiB - 1):
        _flip(b, off)
    diff = compare_files(a, b)
    assert diff.differing_pages == 4
    assert diff.first_offsets == [0, 4096 * 3, 20 * MiB, 40 * MiB - 4096]


def test_size_mismatch_is_an_error(tmp_path):
    a, b = _ram_pair(tmp_path)
    with open(b, "ab") as f:
        f.write(b"x" * 4096)
    with pytest.raises(ValueError, match="differ in size"):
        compare_files(a, b)


def test_ram_above_the_4g_split_maps_to_4g():
    layout = x86_layout(3 << 30, below_4g=2 << 30)
    assert gpa_of(0x1000, layout) == 0x1000
    assert gpa_of((2 << 30) + 0x2000, layout) == (1 << 32) + 0x2000


def test_downtime_within_limit_and_tolerance_passes():
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=120, limit_ms=100, tolerance_ms=50,
                                          guest_gap_ms=130, heartbeat_interval_ms=2))
    assert res.passed
    assert res.figures["tolerance_reason"]


def test_downtime_over_limit_with_zero_tolerance_fails():
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=12, limit_ms=1, tolerance_ms=0))
    assert not res.passed and "12 ms > limit 1" in res.summary


def test_guest_observed_gap_is_judged_too():
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=10, limit_ms=100, tolerance_ms=0,
                                          guest_gap_ms=400, heartbeat_interval_ms=10))
    assert not res.passed and "guest saw" in res.summary


def test_harness_hold_in_pre_switchover_is_not_judged_as_qemu_downtime():
    """The release-ram flake: 747 ms reported, 500 of them the harness copying
    the source's RAM while QEMU waited in pre-switchover."""
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=747, limit_ms=300, tolerance_ms=250,
                                          guest_gap_ms=260, heartbeat_interval_ms=20,
                                          harness_hold_ms=500))
    assert res.passed, res.summary
    assert res.figures["qemu_downtime_ms"] == 747           # QEMU's figure is kept as reported
    assert res.figures["harness_hold_ms"] == 500
    assert res.figures["qemu_downtime_judged_ms"] == 247
    assert "pre-switchover" in res.figures["harness_hold_reason"]
    assert "less the harness's 500 ms hold" in res.summary


def test_harness_hold_does_not_excuse_a_real_overrun():
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=1200, limit_ms=300, tolerance_ms=250,
                                          harness_hold_ms=500))
    assert not res.passed
    assert "QEMU downtime 700 ms (reported 1200 less the harness's 500 ms hold) > limit 300" \
        in res.summary


def test_without_a_hold_nothing_is_taken_off():
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=600, limit_ms=300, tolerance_ms=250))
    assert not res.passed and "harness_hold_ms" not in res.figures
    assert "QEMU downtime 600 ms > limit 300" in res.summary


def test_judge_requires_negative_controls_to_fail():
    ok = CheckResult("ram", True, "same")
    control_failed = CheckResult("downtime", False, "too long", expected_to_fail=True)
    control_passed = CheckResult("downtime", True, "fine", expected_to_fail=True)
    assert judge([ok, control_failed]) == (PASSED, "")
    verdict, reason = judge([ok, control_passed])
    assert verdict == FAILED and "negative control passed" in reason
    verdict, reason = judge([CheckResult("ram", False, "1 page differs")])
    assert verdict == FAILED and reason == "ram: 1 page differs"


def test_explained_bytes_are_counted_apart_but_other_bytes_still_fail(tmp_path):
    from harness.checks.ram import Explained

    a, b = _ram_pair(tmp_path)
    _flip(b, 0x200000)          # first byte of a region page: the guest wrote it
    _flip(b, 0x201000)          # likewise
    allowed = Explained(np.arange(0x200000, 0x400000, 4096), "guest ran after switchover")
    res = check_ram(a, b, x86_layout(8 * MiB), allowed)
    assert res.passed and res.figures["explained_pages"] == 2
    assert res.figures["explained_reason"] == "guest ran after switchover"
    _flip(b, 0x201001)          # a byte the guest never writes: a real difference
    res = check_ram(a, b, x86_layout(8 * MiB), allowed)
    assert not res.passed
    assert res.figures["first_differing_gpas"] == ["0x201000"]
    assert res.figures["explained_pages"] == 1


def _waited(measured_s: float, tail_s: float) -> HostWait:
    return HostWait(measured_s=measured_s, tail_s=tail_s, thread="live_migration (123)")


def test_cpu_wait_inside_the_downtime_is_the_hosts_not_qemus():
    """The flake hunt's precopy failure at load 11: 681 ms reported, the guest
    saw 703; here the migration thread waited 450 ms for a CPU, 20 of them
    after completed."""
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=681, limit_ms=300, tolerance_ms=250,
                                          guest_gap_ms=703, heartbeat_interval_ms=102,
                                          host_wait=_waited(0.450, 0.020)))
    assert res.passed, res.summary
    assert res.figures["host_wait_ms"] == 430                 # the tail is not counted
    assert res.figures["qemu_downtime_judged_ms"] == 251
    assert res.figures["guest_gap_judged_ms"] == 273
    assert "430 ms its migration thread waited for a CPU" in res.summary
    assert "schedstat" in res.figures["host_wait_reason"]


def test_cpu_wait_does_not_excuse_a_slow_copy_on_an_idle_host():
    """A QEMU that overruns while it has the CPU still fails: only the wait
    that fell inside the downtime is taken off, and a wait all in the tail
    after completed takes nothing off."""
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=900, limit_ms=300, tolerance_ms=250,
                                          guest_gap_ms=920, heartbeat_interval_ms=20,
                                          host_wait=_waited(0.100, 0.150)))
    assert not res.passed
    assert res.figures["host_wait_ms"] == 0
    assert "QEMU downtime 900 ms > limit 300" in res.summary and "guest saw a 920" in res.summary
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=900, limit_ms=300, tolerance_ms=250,
                                          host_wait=_waited(0.200, 0.0)))
    assert not res.passed and "QEMU downtime 700 ms (reported 900 less 200 ms" in res.summary


def test_an_unread_cpu_wait_says_why_and_takes_nothing_off():
    """Under a hog the harness may handle STOP only after the migration thread
    has ended (a flake hunt on huge pages: STOP handled 4 ms before completed,
    QEMU had stamped them 122 ms apart): QEMU's figure is judged as reported,
    and the figures say why no wait was read."""
    why = "no migration thread to read when the harness handled STOP, 118 ms after QEMU stamped it"
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=122, limit_ms=300, tolerance_ms=250,
                                          host_wait_unread=why))
    assert res.passed, res.summary
    assert res.figures["host_wait_unread"] == why
    assert "host_wait_ms" not in res.figures and "qemu_downtime_judged_ms" not in res.figures
    res = check_downtime(DowntimeEvidence(qemu_downtime_ms=122, limit_ms=300, tolerance_ms=250,
                                          host_wait=_waited(0.010, 0.0), host_wait_unread=why))
    assert "host_wait_unread" not in res.figures and res.figures["host_wait_ms"] == 10
