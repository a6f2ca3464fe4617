"""The migration thread's run-queue wait, read from a /proc tree laid out
as the kernel does (task/TID/comm and schedstat), and the bound on what of
it fell inside the downtime."""
from __future__ import annotations

import os
import time
from pathlib import Path

from harness.qemu.runqueue import (WaitReading, host_wait, migration_thread_wait,
                                   monotonic_of)


def _task(proc: Path, pid: int, tid: int, name: str, run_delay_ns: int) -> None:
    d = proc / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    (d / "comm").write_text(name + "\n")
    (d / "schedstat").write_text(f"1000 {run_delay_ns} 3\n")


def test_reads_the_named_migration_thread_only(tmp_path: Path) -> None:
    _task(tmp_path, 10, 10, "qemu-system-x86", 9_000_000_000)
    _task(tmp_path, 10, 12, "CPU 0/TCG", 8_000_000_000)
    _task(tmp_path, 10, 14, "mig/src/main", 250_000_000)
    got = migration_thread_wait(10, tmp_path)
    assert got is not None and got.wait_s == 0.25 and got.thread == "mig/src/main (14)"


def test_no_reading_without_the_thread_or_process(tmp_path: Path) -> None:
    _task(tmp_path, 10, 10, "qemu-system-x86", 5)
    assert migration_thread_wait(10, tmp_path) is None       # unnamed, or not migrating
    assert migration_thread_wait(11, tmp_path) is None       # no such process


def test_this_kernel_counts_run_queue_delay() -> None:
    """The harness's own process has a schedstat with a delay field here
    (CONFIG_SCHED_INFO), so a real QEMU's thread can be read."""
    fields = Path(f"/proc/{os.getpid()}/schedstat").read_text().split()
    assert len(fields) == 3 and all(f.isdigit() for f in fields)


def test_the_wait_after_completed_is_not_counted() -> None:
    first = WaitReading(t=10.0, wait_s=1.0, thread="live_migration (5)")
    last = WaitReading(t=10.8, wait_s=1.5, thread="live_migration (5)")
    found = host_wait(first, last, t_completed=10.7)
    assert found is not None
    assert abs(found.measured_s - 0.5) < 1e-9 and abs(found.tail_s - 0.1) < 1e-9
    assert abs(found.in_downtime_s - 0.4) < 1e-9
    # A reading long after completed can excuse nothing.
    assert host_wait(first, last, t_completed=9.0).in_downtime_s == 0.0  # type: ignore[union-attr]
    # Different threads (a second migration) or a missing reading: no figure.
    other = WaitReading(t=10.8, wait_s=1.5, thread="live_migration (6)")
    assert host_wait(first, other, 10.7) is None and host_wait(None, last, 10.7) is None


def test_event_stamps_map_onto_the_monotonic_clock() -> None:
    assert abs(monotonic_of(time.time()) - time.monotonic()) < 0.05


def test_a_stop_handled_after_the_thread_ended_is_reported_with_its_lateness() -> None:
    """The driver's reader, given STOP for a process with no migration thread
    (this test process): no reading, and the reason names how late the
    harness handled the event against QEMU's own stamp."""
    from types import SimpleNamespace

    from harness.migration.driver import _CpuWaitReadings

    src = SimpleNamespace(local_pid=os.getpid(), event_hooks=[])
    waits = _CpuWaitReadings(src)  # type: ignore[arg-type]
    assert waits.unread == "no STOP event from the source"
    stamp = time.time() - 0.120
    waits.on_event(0.0, {"event": "STOP", "timestamp": {"seconds": int(stamp),
                                                        "microseconds": int(stamp % 1 * 1e6)}})
    assert waits.first is None and waits.poller is None
    assert waits.unread.startswith("no migration thread to read when the harness handled STOP, ")
    late_ms = int(waits.unread.split(", ")[1].split(" ms")[0])
    assert 115 <= late_ms < 60_000, waits.unread
    completed = {"event": "MIGRATION", "data": {"status": "completed"}}
    assert waits.result(completed) is None and "STOP" in waits.unread
    # A remote source (no local PID): nothing is tried, so nothing to explain.
    remote = _CpuWaitReadings(SimpleNamespace(local_pid=None, event_hooks=[]))  # type: ignore[arg-type]
    assert remote.result(completed) is None and remote.unread == ""
