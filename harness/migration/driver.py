"""Driving migrations: configure both sides, start, follow, cancel, settle.

The one place that acts on a migration, for the cell flow
(:mod:`harness.migration.flow`) and the failure-path scenarios
(:mod:`harness.scenarios`) alike; the waits it builds on (migration states,
resume, run state, guest progress) are in :mod:`harness.migration.waits`.

What a migration needs from the host depends on its capabilities, so the
driver acts on them rather than on a separate "mode" setting:

- ``postcopy-ram``: once precopy has made ``POSTCOPY_AFTER_SYNCS`` dirty-bitmap
  syncs, ``migrate-start-postcopy``; when the destination reports
  ``postcopy-active`` it is resumed (``cont``: it was started with ``-S``) so the
  guest really runs before all its pages have arrived.  After completion the
  destination is stopped again for the checks.
- ``pause-before-switchover``: the source stops in ``pre-switchover``; the
  driver records when and sends ``migrate-continue``.

Throughout, ``query-migrate`` on the source is sampled every ``SAMPLE_PERIOD``
seconds (as QEMU's guestperf does), so behaviour checks can see how throttling,
xbzrle and the transfer rate evolved, and a non-converging migration is
reported with its figures rather than as a hang.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from qemu.qmp import ExecuteError

from harness.errors import BuildError
from harness.migration.waits import (DEST_SETTLE_TIMEOUT, STATE_TIMEOUT, TERMINAL, final_info,
                                     is_migration, settled_status, states_since, wait_info,
                                     wait_state)
from harness.qemu.build import QemuBuild
from harness.qemu.machine import Event, Machine
from harness.qemu.runqueue import (POLL_PERIOD, HostWait, WaitReading, find_migration_thread,
                                   host_wait, monotonic_of, read_wait)
from harness.waiting import WaitTimeout, poll_until

__all__ = ["BASE_CAPABILITIES", "DEST_SETTLE_TIMEOUT", "POSTCOPY_AFTER_SYNCS", "SAMPLE_PERIOD",
           "STATE_TIMEOUT", "TERMINAL", "MigrationRun", "PostcopyResume", "cancel", "configure",
           "event_stamp", "final_info", "is_migration", "postcopy_due", "pre_switchover_hold",
           "resume_in_postcopy", "run_migration", "settle_destination", "settled_status", "start",
           "start_postcopy_when_due", "start_until"]

log = logging.getLogger(__name__)

SAMPLE_PERIOD = 0.1
POSTCOPY_AFTER_SYNCS = 2
#: How long ``cancel`` waits for the state ``migrate_cancel`` leads to.
CANCEL_TIMEOUT = 10.0

#: Capabilities the harness turns on for every cell: without ``events`` QEMU
#: emits no MIGRATION events (migration/migration.c, migrate_set_state ->
#: qapi_event_send_migration is gated by migrate_use_events() in 7.2).
BASE_CAPABILITIES = {"events": True}

#: ``migrate`` refusals that only mean an earlier attempt has not let go yet.
#: util/yank.c yank_register_instance (7.2, 10.0), called from qmp_migrate:
#: "duplicate yank instance" while the previous migration's instance is
#: registered; migration/migration.c migrate_prepare (7.2, 10.0):
#: QERR_MIGRATION_ACTIVE "There's a migration process in progress".
BUSY_REFUSALS = (r"(?i)duplicate yank instance", r"(?i)migration process in progress")


@dataclass
class MigrationRun:
    """What happened during one migration, for the checks."""

    uri: str
    caps: dict[str, bool]
    status: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    source_states: list[str] = field(default_factory=list)
    destination_states: list[str] = field(default_factory=list)
    #: When the destination first became resumable (completed, or postcopy-active).
    t_dst_ready: float | None = None
    #: When the destination was resumed during postcopy (None: it was not);
    #: with ``dst_autostart``, when QEMU started it itself (its ``RESUME``).
    t_dst_resumed: float | None = None
    #: ``dst_autostart``: when the harness stopped the destination that QEMU
    #: had started, on its ``completed`` (None: it did not start, or paused).
    t_dst_stopped: float | None = None
    t_postcopy_started: float | None = None
    #: Dirty-bitmap syncs done when the driver asked for postcopy.
    postcopy_after_syncs: int | None = None
    #: release-ram: a copy of the source's RAM taken in pre-switchover, and how
    #: many bytes its RAM file held then.
    ram_at_switchover: Path | None = None
    ram_allocated_at_switchover: int = 0
    t_pre_switchover: float | None = None
    #: Seconds the source waited in ``pre-switchover`` for the harness (the
    #: ``at_pre_switchover`` work, e.g. release-ram's copy of the source RAM,
    #: then ``migrate-continue``), on QEMU's own clock: see
    #: :func:`pre_switchover_hold`.  QEMU counts this wait in its ``downtime``,
    #: the VM being stopped before the pause (migration/migration.c):
    #: 7.2: migration_completion sets downtime_start, stops the VM, then
    #: migration_maybe_pause waits; migration_calculate_complete ends it.
    #: postcopy_start takes time_at_stop on entry, migration_maybe_pause
    #: waits after the stop, ms->downtime is set once the device state is sent.
    #: 10.0: migration_stop_vm -> migration_downtime_start, then
    #: migration_switchover_start -> migration_switchover_prepare waits
    #: (migration_completion_precopy and postcopy_start alike);
    #: migration_downtime_end ends it (migration_completion_end, or the end
    #: of postcopy_start).  So the downtime check takes it off QEMU's figure.
    source_held_s: float = 0.0
    #: The same wait on the host clock, as a cross-check: from the
    #: ``pre-switchover`` event's arrival to the reply to ``migrate-continue``
    #: (it misses the event's trip to the harness and includes the reply's).
    source_held_host_s: float = 0.0
    #: When the source reported its terminal state (host monotonic time).
    t_source_done: float | None = None
    #: From the source's ``STOP`` to its terminal MIGRATION event, on QEMU's
    #: own event timestamps (s; None: unstamped or no stop): how long the
    #: source stood stopped until the migration ended (:func:`stop_to_done`).
    stop_to_done_s: float | None = None
    error: str = ""
    #: Index in the source's event list where this migration began, and the
    #: MIGRATION states of this migration alone (``source_states`` holds every
    #: state the source reported, earlier attempts included).
    since: int = 0
    states: list[str] = field(default_factory=list)
    #: Precopy on a local source: how long its migration thread certainly
    #: waited for a CPU during the downtime (None: not read; see
    #: harness.qemu.runqueue).  The downtime check takes it off.
    host_wait: HostWait | None = None
    #: Why ``host_wait`` is None on a precopy that completed ("" otherwise).
    host_wait_unread: str = ""
    #: A saved stream that outgrew its cap (harness.migration.transports.
    #: stream_cap): the bytes sent when the driver stopped waiting, with the
    #: migration still going, as a timeout leaves it (None: not capped).
    stream_capped: int | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def _sample(info: dict[str, Any], t: float) -> dict[str, Any]:
    ram = info.get("ram", {})
    out = {"t": round(t, 3), "status": info.get("status"),
           "transferred": ram.get("transferred"), "remaining": ram.get("remaining"),
           "normal_bytes": ram.get("normal-bytes"),
           "dirty_rate": ram.get("dirty-pages-rate"), "syncs": ram.get("dirty-sync-count"),
           "mbps": ram.get("mbps"), "expected_downtime": info.get("expected-downtime")}
    if "cpu-throttle-percentage" in info:
        out["throttle"] = info["cpu-throttle-percentage"]
    if "xbzrle-cache" in info:
        out["xbzrle_pages"] = info["xbzrle-cache"].get("pages")
    # dirty-limit (8.1+, qapi/migration.json MigrationInfo): how long each
    # vCPU was held per throttle round, and how long it waited on a full ring.
    for key in ("dirty-limit-throttle-time-per-round", "dirty-limit-ring-full-time"):
        if key in info:
            out[key.replace("-", "_")] = info[key]
    return out


async def start(src: Machine, uri: str, *, resume: bool = False,
                refusals: list[dict[str, Any]] | None = None,
                retry_for: float = STATE_TIMEOUT) -> int:
    """``migrate`` to ``uri`` (``resume``: a paused postcopy's recovery);
    returns the index in ``src.events`` this migration's events start at.

    A refusal raises :class:`ExecuteError`, except, when ``refusals`` is given
    (a list the refusals are recorded in), one of ``BUSY_REFUSALS``: that is
    retried for up to ``retry_for`` seconds.  QEMU 10.0 reports a migration
    cancelled in ``setup`` as ``cancelled`` while its connection attempt is
    still pending, and the migration's yank instance (util/yank.c
    yank_register_instance, called from qmp_migrate) is only released when
    that attempt ends; the refused ``migrate`` leaves the state ``setup`` (so
    the next one is refused as "in progress") until the stale attempt ends
    and cancels it.  Between attempts ``query-migrate`` is polled for the
    stale attempt's end: it may end without a MIGRATION event (state ``none``).
    """
    args: dict[str, Any] = {"uri": uri, **({"resume": True} if resume else {})}
    t = time.monotonic()
    while True:
        since = len(src.events)
        try:
            await src.execute("migrate", args)
        except ExecuteError as exc:
            if (refusals is None or not any(re.search(p, str(exc)) for p in BUSY_REFUSALS)
                    or time.monotonic() - t > retry_for):
                log.info("%s: migrate to %s refused: %s", src.role, uri, exc)
                raise
            state = (await src.execute("query-migrate")).get("status")
            refusals.append({"after_s": round(time.monotonic() - t, 3), "class": exc.error_class,
                             "text": str(exc), "state_after": state})
            log.warning("%s: migrate refused while an earlier attempt lets go (%s; state %s): "
                        "retrying once it has ended", src.role, exc, state)
            await wait_info(src, lambda i: i.get("status") in (None, "none"),
                            max(0.0, retry_for - (time.monotonic() - t)),
                            "the stale migration attempt to end")
            continue
        log.info("%s: migrate%s to %s", src.role, " (resume)" if resume else "", uri)
        return since


async def start_until(src: Machine, uri: str, state: str, timeout: float = STATE_TIMEOUT
                      ) -> tuple[int, str | None]:
    """``migrate`` and wait until the source reaches ``state`` (or ends).
    Returns the event index the migration started at and the state reached
    (None: neither within ``timeout``)."""
    since = await start(src, uri)
    return since, await wait_state(src, (state,) + TERMINAL, since, timeout)


async def run_migration(src: Machine, dst: Machine, uri: str, caps: dict[str, bool],
                        timeout: float, t0: float, restore_uri: str | None = None,
                        postcopy_after: int = POSTCOPY_AFTER_SYNCS,
                        at_pre_switchover: Callable[[], Awaitable[None]] | None = None,
                        refusals: list[dict[str, Any]] | None = None,
                        on_sample: Callable[[dict[str, Any]], None] | None = None,
                        dst_autostart: bool = False,
                        stream_cap: int | None = None) -> MigrationRun:
    """Migrate ``src`` to ``dst`` (already listening on ``uri``, or, with
    ``restore_uri``, told to read the saved stream from there once the source
    has finished writing it).

    Returns when the source reached a terminal state, or after ``timeout``
    seconds with ``status`` set to the state it was still in (the caller
    cancels).  The destination is left paused when the migration completed.
    ``postcopy_after`` is the switch-over point (dirty-bitmap syncs) with
    postcopy-ram; ``at_pre_switchover`` runs while the source is held in
    ``pre-switchover`` (its RAM still and not yet sent in full);
    ``refusals``: see :func:`start`.

    ``dst_autostart``: the destination was started without ``-S``, so QEMU
    runs the guest itself (harness.migration.dst_start): in postcopy nothing
    is sent to it (its ``RESUME`` is awaited instead of sending ``cont``), and
    once it reports ``completed`` it is stopped at once, so its RAM holds still
    for the checks (``t_dst_resumed``, ``t_dst_stopped``).

    ``on_sample`` is told each ``query-migrate`` sample as it is recorded
    (the cell's live progress, harness.progress).

    ``stream_cap``: a saved stream's budget in bytes sent (see
    harness.migration.transports.stream_cap); once a sample shows more sent
    with the migration still going, the driver returns as if the timeout had
    run out, with ``stream_capped`` set.
    """
    run = MigrationRun(uri=uri, caps=caps)
    dst_since = len(dst.events)
    postcopy = caps.get("postcopy-ram", False)
    pause = caps.get("pause-before-switchover", False)
    run.since = src_since = await start(src, uri, refusals=refusals)
    capped = asyncio.Event()
    tasks = [asyncio.ensure_future(_sampler(src, run, postcopy, t0, postcopy_after, timeout,
                                            on_sample, stream_cap, capped))]
    waits = _CpuWaitReadings(src)
    if src.local_pid is not None:
        src.event_hooks.append(waits.on_event)
    resume: asyncio.Future[None] | None = None
    if postcopy:
        resume = asyncio.ensure_future(_resume_in_postcopy(dst, run, dst_since, timeout,
                                                           dst_autostart))
    deadline = time.monotonic() + timeout
    try:
        since = src_since
        while True:
            wanted = TERMINAL + (("pre-switchover",) if pause else ())
            got = await _unless(capped, src.wait_event(lambda e: is_migration(e, *wanted),
                                                       max(0.0, deadline - time.monotonic()),
                                                       since))
            if got is None:
                break
            since = src.events.index(got) + 1
            status = got[1]["data"]["status"]
            if status == "pre-switchover":
                run.t_pre_switchover = got[0]
                if at_pre_switchover is not None:
                    await at_pre_switchover()
                await src.execute("migrate-continue", {"state": "pre-switchover"})
                run.source_held_host_s += time.monotonic() - got[0]
                log.info("%s: held in pre-switchover %.3f s (host clock), continued", src.role,
                         run.source_held_host_s)
                continue
            run.status = status
            run.t_source_done = got[0]
            if status == "completed" and "postcopy-active" not in states_since(src, src_since):
                run.host_wait = waits.result(got[1])
                if run.host_wait is None:
                    run.host_wait_unread = waits.unread
            break
    finally:
        await waits.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if resume is not None:
            await _finish_resume(resume, run)
    run.source_states = src.migration_states()
    run.states = states_since(src, src_since)
    run.stop_to_done_s = stop_to_done(src, src_since)
    if pause:
        held = pre_switchover_hold(src, src_since)
        if held is None:
            # A wait the migration never left (cancelled or failed in it),
            # or unstamped events: the host's figure is all there is.
            log.warning("%s: no QEMU timestamps around pre-switchover; the host's figure "
                        "stands", src.role)
        run.source_held_s = run.source_held_host_s if held is None else held
        log.info("%s: pre-switchover hold %.3f s (QEMU's clock), %.3f s (host's)", src.role,
                 run.source_held_s, run.source_held_host_s)
    if not run.status:
        run.info = await src.execute("query-migrate") if src.alive else {}
        run.status = str(run.info.get("status", "unknown"))
        if run.stream_capped is not None:
            log.warning("%s: migration still '%s' with %d MiB of saved stream, over its cap of "
                        "%d MiB (states %s)", src.role, run.status, run.stream_capped >> 20,
                        (stream_cap or 0) >> 20, run.states)
        else:
            log.warning("%s: migration still '%s' after %.0f s (states %s)", src.role,
                        run.status, timeout, run.states)
        return run
    if not run.completed:
        run.info = await src.execute("query-migrate")
        run.error = str(run.info.get("error-desc", "no error given"))
        log.warning("%s: migration %s: %s", src.role, run.status, run.error)
        return run
    log.info("%s: migration completed (states %s)", src.role, run.states)
    if restore_uri is not None:
        await dst.execute("migrate-incoming", {"uri": restore_uri})
    # The destination finishes loading after the source says completed; wait
    # for its own 'completed' and for it to settle before touching its RAM.
    dst_done = await dst.wait_event(lambda e: is_migration(e, *TERMINAL), DEST_SETTLE_TIMEOUT,
                                    dst_since)
    run.destination_states = dst.migration_states()
    if dst_done is None or dst_done[1]["data"]["status"] != "completed":
        run.status = "destination-failed"
        run.error = f"destination did not reach 'completed' (states {run.destination_states}; " \
                    f"{dst.exit_reason()})"
        log.warning("%s: %s", dst.role, run.error)
        return run
    if dst_autostart:
        await _stop_autostarted(dst, run, dst_since)
    if run.t_dst_ready is None:
        run.t_dst_ready = dst_done[0]
    run.info = await final_info(src)
    return run


def event_stamp(ev: Event) -> float | None:
    """QEMU's own time of an event (seconds): the ``timestamp`` every QMP
    event carries, taken when QEMU builds it (qapi/qmp-event.c,
    timestamp_put: g_get_real_time, in 7.2 and 10.0)."""
    ts = ev.get("timestamp")
    if not isinstance(ts, dict) or ts.get("seconds", -1) < 0:
        return None
    return float(ts["seconds"]) + float(ts.get("microseconds", 0)) / 1e6


def stop_to_done(src: Machine, since: int = 0) -> float | None:
    """Seconds from the source's first ``STOP`` after event index ``since``
    to its terminal MIGRATION event after that, on QEMU's event timestamps;
    None when either is missing or unstamped.

    The downtime check compares it with a postcopy ``downtime``: QEMU emits
    ``STOP`` from vm_stop, after migration_downtime_start took the start
    (10.0: migration_stop_vm), and ``completed`` in migration_completion,
    before migration_calculate_complete reads its clock for the end, so a
    ``downtime`` computed from that start to that end is at least this
    span, give or take the clocks' rounding."""
    stop = None
    for _, ev in src.events[since:]:
        if stop is None and ev.get("event") == "STOP":
            stop = event_stamp(ev)
            if stop is None:
                return None
        elif stop is not None and is_migration(ev, *TERMINAL):
            done = event_stamp(ev)
            return None if done is None else max(0.0, done - stop)
    return None


def pre_switchover_hold(src: Machine, since: int = 0) -> float | None:
    """Seconds the source waited in ``pre-switchover`` (summed over every
    such wait from event index ``since`` on), from QEMU's event timestamps;
    None when a wait has no stamped MIGRATION event after it.

    QEMU emits ``pre-switchover`` just before it sleeps on ``pause_sem`` and
    the next MIGRATION state just after ``migrate-continue`` woke it
    (migration/migration.c: 7.2 migration_maybe_pause -> ``device`` for
    precopy, ``postcopy-active`` for postcopy; 10.0
    migration_switchover_prepare -> ``device`` for both).  The two stamps
    bracket exactly the wait QEMU counts in ``downtime``, with no QMP round
    trip of the harness's inside."""
    total, start = 0.0, None
    for _, ev in src.events[since:]:
        if ev.get("event") != "MIGRATION":
            continue
        stamp = event_stamp(ev)
        if start is not None:
            if stamp is None:
                return None
            total += stamp - start
            start = None
        if ev["data"]["status"] == "pre-switchover":
            if stamp is None:
                return None
            start = stamp
    return None if start is not None else total


def postcopy_due(info: dict[str, Any], after: int = POSTCOPY_AFTER_SYNCS) -> bool:
    """Time to switch to postcopy: precopy is ``active`` and has made ``after``
    dirty-bitmap syncs (so the guest has dirtied pages already sent)."""
    return info.get("status") == "active" \
        and info.get("ram", {}).get("dirty-sync-count", 0) >= after


async def _unless(stop: asyncio.Event, wait: Awaitable[tuple[float, Event] | None]
                  ) -> tuple[float, Event] | None:
    """``wait``'s result, or None as soon as ``stop`` is set (a result that is
    already there wins: a migration that ended as it was capped ended)."""
    waiter = asyncio.ensure_future(wait)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stopper):
            task.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
    return None if waiter.cancelled() else waiter.result()


async def _sampler(src: Machine, run: MigrationRun, postcopy: bool, t0: float,
                   postcopy_after: int, timeout: float,
                   on_sample: Callable[[dict[str, Any]], None] | None = None,
                   stream_cap: int | None = None, capped: asyncio.Event | None = None) -> None:
    """Sample ``query-migrate`` every ``SAMPLE_PERIOD`` until a terminal
    state, starting postcopy when it is due; each sample also to ``on_sample``.
    Past ``stream_cap`` bytes sent and not done: ``run.stream_capped``, ``capped``
    set, and sampling ends."""

    async def look() -> dict[str, Any] | None:
        try:
            info = await src.execute("query-migrate")
        except ExecuteError:
            return None
        run.samples.append(_sample(info, time.monotonic() - t0))
        if on_sample is not None:
            on_sample(run.samples[-1])
        if postcopy and run.t_postcopy_started is None and postcopy_due(info, postcopy_after):
            run.postcopy_after_syncs = info.get("ram", {}).get("dirty-sync-count", 0)
            run.t_postcopy_started = time.monotonic()
            log.info("%s: migrate-start-postcopy after %d dirty syncs", src.role,
                     run.postcopy_after_syncs)
            await src.execute("migrate-start-postcopy")
        sent = info.get("ram", {}).get("transferred", 0)
        if stream_cap is not None and sent > stream_cap and info.get("status") not in TERMINAL:
            run.stream_capped = sent
            if capped is not None:
                capped.set()
            return None
        return info

    try:
        await poll_until(look, lambda i: i is None or i.get("status") in TERMINAL,
                         timeout=timeout, interval=SAMPLE_PERIOD, what="migration samples")
    except WaitTimeout:
        pass  # run_migration reports the state it was left in


async def start_postcopy_when_due(src: Machine, after: int = POSTCOPY_AFTER_SYNCS,
                                  timeout: float = STATE_TIMEOUT
                                  ) -> tuple[dict[str, Any], float | None]:
    """Wait (polling ``query-migrate``: dirty syncs raise no event) until
    postcopy is due, then ``migrate-start-postcopy``.  Returns the reply
    judged on and when postcopy was started (None: the migration ended or
    ``timeout`` passed first; nothing was started)."""
    info = await wait_info(src, lambda i: postcopy_due(i, after), timeout,
                           f"{after} dirty syncs in 'active'")
    if not postcopy_due(info, after):
        log.warning("%s: postcopy never due (status %s, syncs %s)", src.role,
                    info.get("status"), info.get("ram", {}).get("dirty-sync-count"))
        return info, None
    t = time.monotonic()
    log.info("%s: migrate-start-postcopy after %s dirty syncs", src.role,
             info.get("ram", {}).get("dirty-sync-count"))
    await src.execute("migrate-start-postcopy")
    return info, t


@dataclass
class PostcopyResume:
    """A destination resumed during postcopy."""

    #: When it reported ``postcopy-active`` (host monotonic time).
    t_active: float
    #: When ``cont`` was sent.
    t_cont: float
    #: Its event index before ``cont``: a ``RESUME`` from there on means the
    #: guest runs (see :func:`harness.migration.waits.wait_resumed`).
    cont_since: int


async def resume_in_postcopy(dst: Machine, since: int, timeout: float
                             ) -> PostcopyResume | None:
    """On the destination's ``postcopy-active`` (event index >= ``since``),
    ``cont`` it: it was started with ``-S``.  None when it ended or
    ``timeout`` passed without reaching postcopy-active."""
    got = await dst.wait_event(lambda e: is_migration(e, "postcopy-active", *TERMINAL),
                               timeout, since)
    if got is None or not is_migration(got[1], "postcopy-active"):
        return None
    cont_since = len(dst.events)
    t_cont = time.monotonic()
    log.info("%s: postcopy-active; cont", dst.role)
    await dst.execute("cont")
    return PostcopyResume(got[0], t_cont, cont_since)


class _CpuWaitReadings:
    """The source migration thread's run-queue wait through the downtime.

    The first reading is taken the moment the source's ``STOP`` arrives (an
    event hook, so no waiter's wake-up delays it; the VM stop starts the
    downtime: migration/migration.c, 7.2 migration_completion ->
    vm_stop_force_state, 10.0 migration_stop_vm); then the thread is read
    every ``POLL_PERIOD`` until the source completes or the thread ends
    (harness.qemu.runqueue.HostWait says why that bounds the wait)."""

    def __init__(self, src: Machine) -> None:
        self.src = src
        self.first: WaitReading | None = None
        self.last: WaitReading | None = None
        self.poller: asyncio.Task[None] | None = None
        #: Why there is no first reading, said in the downtime check's figures
        #: (the figure is then QEMU's own, nothing taken off); "" for a remote
        #: source, whose threads are not this host's to read.
        self.unread = "" if src.local_pid is None else "no STOP event from the source"

    def on_event(self, _t: float, ev: Event) -> None:
        pid = self.src.local_pid
        if pid is None or self.first is not None or ev.get("event") != "STOP":
            return
        thread = find_migration_thread(pid)
        if thread is not None:
            self.first = self.last = read_wait(pid, thread)
            if self.first is not None:
                self.poller = asyncio.ensure_future(self._poll(pid, thread))
                return
        # Under a CPU hog the harness itself can be handed STOP after the
        # migration has completed and its thread has ended: then there is
        # nothing left to read.
        stamp = event_stamp(ev)
        late = "" if stamp is None else f", {(time.time() - stamp) * 1000:.0f} ms after QEMU stamped it"
        self.unread = (f"no migration thread to read when the harness handled STOP{late} "
                       "(it had ended, or QEMU names its threads otherwise)")

    async def _poll(self, pid: int, thread: tuple[str, int]) -> None:
        while True:
            await asyncio.sleep(POLL_PERIOD)
            reading = read_wait(pid, thread)
            if reading is None:
                return  # the thread ended: its last reading stands
            self.last = reading

    async def stop(self) -> None:
        if self.on_event in self.src.event_hooks:
            self.src.event_hooks.remove(self.on_event)
        if self.poller is not None:
            self.poller.cancel()
            await asyncio.gather(self.poller, return_exceptions=True)

    def result(self, completed: Event) -> HostWait | None:
        """The wait from ``STOP`` to the last reading, its tail measured
        from the ``completed`` event's own timestamp.  Precopy only: in
        postcopy the downtime ends long before ``completed``, at no event
        (migration/migration.c, postcopy_start)."""
        pid, stamp = self.src.local_pid, event_stamp(completed)
        if pid is not None and self.first is not None:
            thread = find_migration_thread(pid)
            final = None if thread is None else read_wait(pid, thread)
            if final is not None and final.thread == self.first.thread:
                self.last = final
        found = host_wait(self.first, self.last, None if stamp is None else monotonic_of(stamp))
        if found is None and self.first is not None:
            self.unread = "the completed event carried no timestamp"
        if found is not None:
            log.info("%s: migration thread %s waited %.0f ms for a CPU after STOP "
                     "(%.0f ms of its last reading past completed)", self.src.role,
                     found.thread, found.measured_s * 1000, found.tail_s * 1000)
        return found


async def _finish_resume(resume: asyncio.Future[None], run: MigrationRun) -> None:
    """End the postcopy resume task once the source has finished.

    After the source's ``completed`` it is awaited, not cancelled: the
    destination may have been sent ``cont`` with its reply still on the way,
    and a task cancelled there would leave the destination running with no
    record of it, so the checks would not stop it (found by the flake hunt at
    load 11: "source postmigrate, destination running").  It ends promptly:
    a source that completed has taken the destination to ``postcopy-active``
    or, if postcopy never started, to a terminal state.  After anything else
    (failed, cancelled, timed out) it is cancelled as the cell ends anyway."""
    try:
        if run.status == "completed" and not resume.done():
            try:
                await asyncio.wait_for(asyncio.shield(resume), DEST_SETTLE_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("destination: no postcopy-active or terminal state %.0f s after "
                            "the source completed", DEST_SETTLE_TIMEOUT)
    finally:
        resume.cancel()
        await asyncio.gather(resume, return_exceptions=True)


async def _resume_in_postcopy(dst: Machine, run: MigrationRun, since: int,
                              timeout: float, autostart: bool = False) -> None:
    if autostart:
        await _autostarted_in_postcopy(dst, run, since, timeout)
        return
    resumed = await resume_in_postcopy(dst, since, timeout)
    if resumed is not None:
        run.t_dst_ready, run.t_dst_resumed = resumed.t_active, resumed.t_cont


def first_resume(m: Machine, since: int = 0) -> float | None:
    """Host time of the first ``RESUME`` at event index >= ``since`` (None: none yet)."""
    for t, ev in m.events[since:]:
        if ev.get("event") == "RESUME":
            return t
    return None


async def _autostarted_in_postcopy(dst: Machine, run: MigrationRun, since: int,
                                   timeout: float) -> None:
    """An autostarting destination in postcopy: nothing to send.  QEMU starts
    the guest when the source says run (migration/savevm.c,
    loadvm_postcopy_handle_run_bh: ``if (autostart) ... vm_start()``, 7.2 and
    10.0), after ``postcopy-active``; note when, from its ``RESUME``."""
    got = await dst.wait_event(lambda e: is_migration(e, "postcopy-active", *TERMINAL),
                               timeout, since)
    if got is None or not is_migration(got[1], "postcopy-active"):
        return
    resumed = await dst.wait_event(lambda e: e.get("event") == "RESUME", timeout, since)
    if resumed is not None:
        log.info("%s: postcopy-active; started by itself (autostart)", dst.role)
        run.t_dst_ready, run.t_dst_resumed = got[0], resumed[0]


async def _stop_autostarted(dst: Machine, run: MigrationRun, since: int) -> None:
    """On an autostarting destination's ``completed``: stop the guest QEMU
    started (precopy: migration/migration.c, process_incoming_migration_bh
    calls vm_start() before it sets ``completed``, when the source was
    running; postcopy: it has run since the source said run), so its RAM
    holds still for the checks.  A destination QEMU did not start (the
    source was not running) is left as it is."""
    t_resume = first_resume(dst, since)
    if t_resume is None:
        log.info("%s: completed without starting (autostart)", dst.role)
        return
    if run.t_dst_resumed is None:
        run.t_dst_resumed = t_resume
    await dst.execute("stop")
    run.t_dst_stopped = time.monotonic()
    log.info("%s: started by itself %.3f s before the harness stopped it", dst.role,
             run.t_dst_stopped - t_resume)


async def settle_destination(dst: Machine, since: int = 0,
                             timeout: float = DEST_SETTLE_TIMEOUT) -> tuple[str | None, str]:
    """Wait for the destination's own terminal MIGRATION state (it finishes
    loading after the source says completed), then for its run state to
    leave ``inmigrate`` (``paused`` with ``-S``).  Returns both."""
    status = await wait_state(dst, TERMINAL, since, timeout)
    return status, await settled_status(dst, timeout)


async def cancel(src: Machine, since: int | None = None,
                 timeout: float = CANCEL_TIMEOUT) -> str | None:
    """``migrate_cancel`` and wait for the terminal state it leads to.

    ``since`` (default: now) is where to look for that state; pass the
    migration's start index to also see a state it reached before the cancel
    (a migration can complete or fail while the cancel is on its way).
    None: the cancel was refused, or no terminal state within ``timeout``."""
    since = len(src.events) if since is None else since
    try:
        await src.execute("migrate_cancel")
    except ExecuteError as exc:
        log.warning("%s: migrate_cancel refused: %s", src.role, exc)
        return None
    status = await wait_state(src, TERMINAL, since, timeout)
    log.info("%s: migrate_cancel -> %s", src.role, status)
    return status


async def configure(m: Machine, build: QemuBuild, caps: dict[str, bool],
                     params: dict[str, Any]) -> dict[str, Any]:
    """Apply capabilities and parameters, then read them back: a silent mismatch
    would make every later verdict meaningless.  Returns every parameter as
    read back (``query-migrate-parameters``), defaults included."""
    side = "source" if m.role == "src" else "destination"

    async def apply(command: str, args: dict[str, Any], what: str, settings: Any) -> None:
        try:
            await m.execute(command, args)
        except ExecuteError as exc:
            log.warning("%s: %s %s refused: %s", m.role, what, settings, exc)
            raise BuildError(build.name, f"{build.version_text} refused {what} {settings} on "
                             f"the {side}: {exc}") from exc

    await apply("migrate-set-capabilities", {"capabilities": [
        {"capability": k, "state": v} for k, v in caps.items()]}, "capabilities", caps)
    if params:
        await apply("migrate-set-parameters", params, "parameters", params)
    got_caps = {c["capability"]: c["state"] for c in await m.execute("query-migrate-capabilities")}
    got_params = await m.execute("query-migrate-parameters")
    wrong = [f"capability {k}={got_caps.get(k)!r} (set {v!r})" for k, v in caps.items()
             if got_caps.get(k) != v]
    wrong += [f"parameter {k}={got_params.get(k)!r} (set {v!r})" for k, v in params.items()
              if got_params.get(k) != v]
    if wrong:
        log.error("%s: read-back mismatch: %s", m.role, "; ".join(wrong))
        raise BuildError(build.name, f"read-back mismatch on the {side}: {'; '.join(wrong)}")
    log.debug("%s: capabilities %s, parameters %s applied and read back", m.role, caps, params)
    return dict(got_params)
