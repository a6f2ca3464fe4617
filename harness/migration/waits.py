"""Waiting on one QEMU: a migration state, a resume, a settled run state, the
guest's progress, figures QEMU fills in late.

There are exactly two ways to wait here, chosen by what QEMU offers:

* an event, when QEMU sends one: ``MIGRATION`` state changes (only with the
  ``events`` capability: migration/migration.c migrate_set_state ->
  qapi_event_send_migration) and ``RESUME`` (softmmu/cpus.c in 7.2,
  system/cpus.c in 10.0: vm_prepare_start sends it whenever the vCPUs start).
  These go through :meth:`Machine.wait_event`, which also returns early when
  the QEMU dies;
* a look, when QEMU has nothing to send (the run state after loading, the
  guest's heartbeat counter, ``query-migrate`` counters).  These go through
  :func:`harness.waiting.poll_until`, the one polling primitive.

Nothing here starts or changes a migration: that is the driver's job
(:mod:`harness.migration.driver`), which builds on these waits.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from harness.qemu.machine import Event, Machine
from harness.waiting import WaitTimeout, poll_until

log = logging.getLogger(__name__)

#: MIGRATION states after which nothing more happens to a migration
#: (qapi/migration.json MigrationStatus).
TERMINAL = ("completed", "failed", "cancelled")
#: How long a destination may take to finish loading and settle after the
#: source says completed.
DEST_SETTLE_TIMEOUT = 30.0
#: Default bound for a wait on one migration state (tens of times what a
#: state change takes on a loaded 2-core machine here).
STATE_TIMEOUT = 20.0
#: How long ``final_info`` waits for QEMU to fill in downtime and total-time.
FIGURES_TIMEOUT = 1.0


def is_migration(ev: Event, *states: str) -> bool:
    """A ``MIGRATION`` event for one of ``states``."""
    return ev.get("event") == "MIGRATION" and ev["data"]["status"] in states


def states_since(m: Machine, since: int = 0) -> list[str]:
    """The MIGRATION states ``m`` reported from event index ``since`` on."""
    return [e["data"]["status"] for _, e in m.events[since:] if e.get("event") == "MIGRATION"]


def event_time(m: Machine, state: str, since: int = 0) -> float | None:
    """Host time of the first MIGRATION ``state`` event at index >= ``since``."""
    for t, e in m.events[since:]:
        if is_migration(e, state):
            return t
    return None


async def wait_state(m: Machine, states: tuple[str, ...], since: int = 0,
                     timeout: float = STATE_TIMEOUT) -> str | None:
    """The first of ``states`` ``m`` reports from event index ``since`` on;
    None on timeout or when the QEMU died."""
    got = await m.wait_event(lambda e: is_migration(e, *states), timeout, since)
    if got is None:
        log.debug("%s: none of %s within %.1f s (states %s)", m.role, states, timeout,
                  states_since(m, since))
        return None
    status = str(got[1]["data"]["status"])
    log.debug("%s: migration %s", m.role, status)
    return status


async def wait_resumed(m: Machine, since: int, timeout: float = STATE_TIMEOUT) -> float | None:
    """Host time of the first ``RESUME`` at event index >= ``since``: the
    vCPUs really run.  After ``cont`` on a destination still ``inmigrate``
    QEMU only sets autostart (monitor/qmp-cmds.c qmp_cont) and starts the VM
    later (postcopy: migration/savevm.c loadvm_postcopy_handle_run_bh ->
    vm_start), so the reply to ``cont`` does not mean running; the event does."""
    got = await m.wait_event(lambda e: e.get("event") == "RESUME", timeout, since)
    if got is None:
        log.warning("%s: no RESUME within %.1f s", m.role, timeout)
        return None
    log.debug("%s: resumed", m.role)
    return got[0]


async def settled_status(m: Machine, timeout: float = DEST_SETTLE_TIMEOUT,
                         leaving: str = "inmigrate") -> str:
    """The run state once it has left ``leaving`` (a transitional state), or
    the state it still had after ``timeout``.

    Polled: QEMU sends no event when a destination started with ``-S``
    settles in ``paused`` after loading (migration/migration.c
    process_incoming_migration_bh calls runstate_set, which emits nothing)."""
    try:
        status = await poll_until(m.status, lambda s: s != leaving, timeout=timeout,
                                  what=f"{m.role} leaving '{leaving}'")
    except WaitTimeout as exc:
        log.warning("%s", exc)
        return str(exc.last)
    log.debug("%s: run state %s", m.role, status)
    return str(status)


async def final_info(src: Machine) -> dict[str, Any]:
    """query-migrate once its figures are filled in: QEMU can report
    'completed' while downtime and total-time are still 0 for a moment
    (migration/migration.c: the figures are computed in migration_calculate_complete
    after the state change).  After ``FIGURES_TIMEOUT`` the last reply is
    returned as it is."""
    try:
        return await poll_until(lambda: src.execute("query-migrate"),
                                lambda i: bool(i.get("total-time")) and "downtime" in i,
                                timeout=FIGURES_TIMEOUT, interval=0.02,
                                what="query-migrate figures")
    except WaitTimeout as exc:
        log.warning("%s", exc)
        return dict(exc.last or {})


async def wait_info(src: Machine, done: Callable[[dict[str, Any]], bool], timeout: float,
                    what: str, interval: float = 0.05) -> dict[str, Any]:
    """``query-migrate`` until ``done(info)`` or a terminal state; returns the
    last reply (the caller judges it).  For counters QEMU sends no event for
    (dirty-bitmap syncs, bytes sent).  On timeout the last reply is returned."""
    try:
        return await poll_until(lambda: src.execute("query-migrate"),
                                lambda i: done(i) or i.get("status") in TERMINAL,
                                timeout=timeout, interval=interval, what=what)
    except WaitTimeout as exc:
        log.warning("%s", exc)
        return dict(exc.last or {})


async def wait_progress(m: Machine, progress: Callable[[], int], count: int, timeout: float,
                        what: str) -> int:
    """Wait until the guest's progress counter (heartbeats, passes) reaches
    ``count``; returns it.  Raises :class:`~harness.waiting.WaitTimeout` with
    the count reached, or :class:`~harness.waiting.WaitAborted` at once when
    the QEMU dies.  Polled: serial bytes are counted by a parser, not sent as
    events."""
    return await poll_until(progress, lambda n: n >= count, timeout=timeout, what=what,
                            abort=lambda: None if m.alive else
                            f"{m.role} QEMU died: {m.exit_reason()}")

