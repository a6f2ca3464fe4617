"""How long a local QEMU's migration thread waited for a CPU.

On a busy host QEMU's migration thread can be ready to run and still not
run: the kernel counts that time per thread as its run-queue delay
(``/proc/PID/task/TID/schedstat``, second field, nanoseconds; present with
CONFIG_SCHED_INFO, as on Debian's kernels).  Waiting there during the
stop-and-copy stretches QEMU's ``downtime`` by time the host took, not
QEMU, which is what made the precopy smoke cell fail its downtime check at
load 11 in the flake hunt (benchmarks/README.md).  The downtime check takes
that wait off (harness.checks.downtime), the way it takes off the harness's
own hold in ``pre-switchover``.

The thread is found by name, so QEMU is started with
``-name ...,debug-threads=on`` (harness.qemu.cmdline; without it QEMU names
no thread: util/qemu-thread-posix.c, qemu_thread_create sets the name only
when ``name_threads``).  Its name, from QEMU's source:

- 7.2 (and the 6.0 e2k fork): ``live_migration``, or ``bg_snapshot`` for a
  background snapshot (migration/migration.c, migrate_fd_connect);
- 10.0: ``mig/src/main`` and ``mig/snapshot`` (migration/migration.h,
  MIGRATION_THREAD_SRC_MAIN and MIGRATION_THREAD_SNAPSHOT, used by
  migrate_fd_connect in migration/migration.c).

Only a QEMU on this machine can be read; a remote one gives no reading.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

#: Names of the source's migration thread (see the module docstring).
MIGRATION_THREAD_NAMES = ("live_migration", "bg_snapshot", "mig/src/main", "mig/snapshot")
#: How often the thread is read during the downtime (seconds): a reading is
#: one small file read; the last one before the thread ends bounds the wait.
POLL_PERIOD = 0.01


@dataclass(frozen=True)
class WaitReading:
    """The migration thread's run-queue wait at one moment."""

    #: Host monotonic time of the reading (seconds).
    t: float
    #: Its cumulative run-queue delay (seconds).
    wait_s: float
    #: The thread read (name and id), for the record.
    thread: str


def find_migration_thread(pid: int, proc: Path = Path("/proc")) -> tuple[str, int] | None:
    """The source migration thread's name and thread id; None when the
    process is gone or has no such thread (QEMU not started with thread
    names, or not migrating)."""
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        if name in MIGRATION_THREAD_NAMES and task.name.isdigit():
            return name, int(task.name)
    return None


def read_wait(pid: int, thread: tuple[str, int],
              proc: Path = Path("/proc")) -> WaitReading | None:
    """One thread's cumulative run-queue delay now; None once it has ended
    (or on a kernel without CONFIG_SCHED_INFO)."""
    name, tid = thread
    t = time.monotonic()
    try:
        fields = (proc / str(pid) / "task" / str(tid) / "schedstat").read_text().split()
    except OSError:
        return None
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return WaitReading(t=t, wait_s=int(fields[1]) / 1e9, thread=f"{name} ({tid})")


def migration_thread_wait(pid: int, proc: Path = Path("/proc")) -> WaitReading | None:
    """The source migration thread's run-queue delay now (None: no such
    thread to read)."""
    thread = find_migration_thread(pid, proc)
    return None if thread is None else read_wait(pid, thread, proc)


@dataclass(frozen=True)
class HostWait:
    """Run-queue wait of the source's migration thread that certainly fell
    inside QEMU's downtime.

    The first reading is taken when the source's ``STOP`` event arrives (the
    downtime starts with the VM stop, before it), then the thread is read
    every ``POLL_PERIOD`` while it lives (it ends soon after ``completed``, and
    its counters with it); the last reading that worked is used.  A reading
    taken after QEMU's downtime ended (``tail_s``: past the ``completed``
    event's own timestamp) may include wait that is not QEMU's downtime, so
    that much is taken off the wait measured.  Waits before the first or
    after the last reading are missed: the figure is a lower bound, never
    more."""

    #: The wait between the two readings (seconds).
    measured_s: float
    #: From the ``completed`` event's timestamp to the second reading (s).
    tail_s: float
    #: The thread read.
    thread: str

    @property
    def in_downtime_s(self) -> float:
        """The least of the measured wait that fell inside the downtime."""
        return max(0.0, self.measured_s - max(0.0, self.tail_s))


def host_wait(first: WaitReading | None, last: WaitReading | None,
              t_completed: float | None) -> HostWait | None:
    """The wait between two readings of the same thread, its tail measured
    from ``t_completed`` (host monotonic time of QEMU's ``completed``).
    None when a reading or the completion time is missing, or the readings
    are of different threads."""
    if first is None or last is None or t_completed is None or first.thread != last.thread:
        return None
    return HostWait(measured_s=max(0.0, last.wait_s - first.wait_s),
                    tail_s=max(0.0, last.t - t_completed), thread=first.thread)


def monotonic_of(stamp: float) -> float:
    """A QMP event timestamp (wall clock: qapi/qmp-event.c, timestamp_put
    uses g_get_real_time) on this machine's monotonic clock."""
    return stamp - (time.time() - time.monotonic())
