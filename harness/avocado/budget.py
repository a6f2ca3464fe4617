"""Cores and memory shared by cells that run in separate processes.

Why this exists: ``mharness run -j N`` schedules cells from one process and
keeps what they use together within a :class:`harness.run.runner.Budget` (a
cell takes one core per vCPU and its guest RAM twice:
:func:`harness.run.runner.cell_needs`; a cell larger than the whole budget
runs alone).  Under Avocado every cell is its own task process, started by
Avocado's scheduler (``--max-parallel-tasks``), which knows nothing of cores
or guest RAM.  So before a task starts its QEMUs it takes its share from this
pool, and gives it back when the cell is done: with ``--max-parallel-tasks``
as high as you like, the cells running at once stay within the budget that
``mharness run -j`` keeps.

How: a ledger file on tmpfs, locked with flock(2) while it is read and
rewritten, lists the holders (PID, the process's start time, the cell, its
share) and a queue of waiters.  A waiter takes its share when it is first in
the queue and fits beside the holders -- in arrival order, as the runner
starts cells in tier order, so a large cell is not starved by small ones.
Why a ledger of processes rather than a counting semaphore: shares differ per
cell, and a task killed with SIGKILL (Avocado's hard termination) cannot give
its share back; an entry whose process is gone -- checked by PID *and* start
time, so a reused PID is not taken for it -- is dropped by the next reader.

Scope: one ledger per user and machine, shared by every Avocado job on it (two
jobs started side by side on a CI host share its cores as well).  The budget
is measured (``Budget.of_this_machine``) when the ledger has no holder, as the
runner measures it once when a run starts: measuring while cells run would
count their own guest RAM as unavailable.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.cell import Cell
from harness.qemu.procfs import stat_fields
from harness.run.rundir import runtime_base
from harness.run.runner import Budget, cell_needs
from harness.waiting import poll_until_sync

log = logging.getLogger(__name__)

#: How often a waiting task looks at the ledger again.
POLL_INTERVAL = 0.1
#: Longest wait for a share; Avocado's own timeouts (``--job-timeout``,
#: ``task.timeout.running``) end a task long before in practice.
WAIT_LIMIT = 7 * 24 * 3600.0


def default_ledger() -> Path:
    """``/dev/shm/mharness-budget-<uid>.json`` (the tmpdir without /dev/shm).

    A file, not a folder: ``harness.run.rundir.sweep_stale`` removes stale
    ``mharness-*`` folders, and this ledger must outlive every run."""
    return runtime_base() / f"mharness-budget-{os.getuid()}.json"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (proc(5), field 22
    of /proc/PID/stat), or None when it is gone: with the PID it names one
    process, even after the PID is reused."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Entry:
    """A holder or a waiter: which process, for which cell, wanting how much."""

    pid: int
    start: int
    cell: str
    cpus: float
    memory: int
    #: Wall-clock time it joined the queue, or took its share.
    since: float

    def alive(self) -> bool:
        return process_start(self.pid) == self.start


@dataclass
class Ledger:
    """The ledger file's contents."""

    budget: dict[str, float] | None = None
    holders: list[Entry] = field(default_factory=list)
    queue: list[Entry] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "Ledger":
        if not text.strip():
            return cls()
        try:
            data = json.loads(text)
            return cls(budget=data.get("budget"),
                       holders=[Entry(**e) for e in data.get("holders", [])],
                       queue=[Entry(**e) for e in data.get("queue", [])])
        except (ValueError, TypeError, AttributeError) as exc:
            # Only a process killed mid-write leaves this; its peers re-queue
            # themselves on their next look, holders lose their accounting.
            log.warning("budget ledger unreadable (%s): starting a new one", exc)
            return cls()

    def text(self) -> str:
        return json.dumps({"budget": self.budget,
                           "holders": [asdict(e) for e in self.holders],
                           "queue": [asdict(e) for e in self.queue]}, indent=1)

    def prune(self) -> None:
        """Drop entries whose process is gone (killed tasks never give back)."""
        self.holders = [e for e in self.holders if e.alive()]
        self.queue = [e for e in self.queue if e.alive()]


@dataclass(frozen=True)
class Hold:
    """A share taken: what the cell holds, the budget, and how long it waited."""

    cpus: float
    memory: int
    budget: Budget
    waited: float
    #: Wall-clock time the share was taken (to compare holds across processes).
    taken_at: float
    #: Cells that held shares beside this one when it took its share.
    beside: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory,
                "budget": {"cpus": self.budget.cpus, "memory": self.budget.memory},
                "waited_s": round(self.waited, 3), "taken_at": self.taken_at,
                "beside": list(self.beside)}


class BudgetPool:
    """The machine's budget, shared through a ledger file (see module docstring)."""

    def __init__(self, path: Path | None = None,
                 measure: Callable[[], Budget] = Budget.of_this_machine,
                 interval: float = POLL_INTERVAL) -> None:
        self.path = path or default_ledger()
        self.measure = measure
        self.interval = interval

    @contextmanager
    def hold(self, cell: Cell) -> Iterator[Hold]:
        """Wait for ``cell``'s share (``cell_needs``), hold it while the block runs."""
        cpus, memory = cell_needs(cell)
        with self.hold_share(cpus, memory, cell.id) as held:
            yield held

    @contextmanager
    def hold_share(self, cpus: float, memory: int, label: str) -> Iterator[Hold]:
        pid = os.getpid()
        start = process_start(pid)
        assert start is not None
        me = Entry(pid, start, label, float(cpus), int(memory), time.time())
        t0 = time.monotonic()
        self._update(lambda ledger: ledger.queue.append(me) or None)
        try:
            held = poll_until_sync(lambda: self._try_take(me), lambda h: h is not None,
                                   timeout=WAIT_LIMIT, interval=self.interval,
                                   what=f"a share of the budget for {label}")
            assert held is not None
            held = Hold(held.cpus, held.memory, held.budget, time.monotonic() - t0,
                        held.taken_at, held.beside)
            if held.waited >= 1.0:
                log.info("cell %s waited %.1f s for its share (%g cores, %d MiB) of %s",
                         label, held.waited, cpus, memory >> 20, _describe(held.budget))
            yield held
        finally:
            self._update(lambda ledger: _remove(ledger, me))

    def _try_take(self, me: Entry) -> Hold | None:
        def take(ledger: Ledger) -> Hold | None:
            mine = [e for e in ledger.queue if (e.pid, e.start, e.cell) == (me.pid, me.start, me.cell)]
            if not mine:  # lost with an unreadable ledger: queue again
                ledger.queue.append(me)
            if not ledger.holders or ledger.budget is None:
                measured = self.measure()
                ledger.budget = {"cpus": measured.cpus, "memory": measured.memory}
            budget = Budget(float(ledger.budget["cpus"]), int(ledger.budget["memory"]))
            first = ledger.queue[0]
            if (first.pid, first.start, first.cell) != (me.pid, me.start, me.cell):
                return None
            # The runner's own rule (Budget.admits), so both ways of running
            # cells keep the same budget.
            if not budget.admits(me.cpus, me.memory, [(e.cpus, e.memory) for e in ledger.holders]):
                return None
            ledger.queue.pop(0)
            now = time.time()
            beside = tuple(e.cell for e in ledger.holders)
            ledger.holders.append(Entry(me.pid, me.start, me.cell, me.cpus, me.memory, now))
            return Hold(me.cpus, me.memory, budget, 0.0, now, beside)
        return self._update(take)

    def _update(self, change: Callable[[Ledger], Any]) -> Any:
        """Read, prune, change and rewrite the ledger under an exclusive flock.

        Rewritten in place, not replaced: the lock is on the file's inode, and
        a renamed-over file would let two processes hold "the" lock at once."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                ledger = Ledger.parse(f.read())
                ledger.prune()
                out = change(ledger)
                f.seek(0)
                f.truncate()
                f.write(ledger.text())
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return out

    def snapshot(self) -> Ledger:
        """The ledger as it is now (pruned), for tests and diagnostics."""
        return self._update(lambda ledger: Ledger(ledger.budget, list(ledger.holders),
                                                  list(ledger.queue)))


def _remove(ledger: Ledger, me: Entry) -> None:
    key = (me.pid, me.start, me.cell)
    ledger.holders = [e for e in ledger.holders if (e.pid, e.start, e.cell) != key]
    ledger.queue = [e for e in ledger.queue if (e.pid, e.start, e.cell) != key]


def _describe(budget: Budget) -> str:
    return f"{budget.cpus:g} cores and {budget.memory >> 20} MiB"
