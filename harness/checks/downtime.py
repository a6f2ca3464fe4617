"""Downtime against ``downtime-limit``.

QEMU's ``downtime-limit`` is the target its convergence logic aims the
*estimated* final stop-copy at, not a bound QEMU enforces
(migration/migration.c, 7.2 and 10.0: migration_update_counters sets
``threshold_size`` = measured bandwidth x downtime-limit, and
migration_iteration_run completes once the pending dirty bytes fall below
it): the real stop includes device state and, with return-path, the
destination's load.  So the verdict allows a declared tolerance, and results
record the tolerance and this reason next to the figures.

Two figures are judged:
- ``downtime`` from ``query-migrate`` on the source (QEMU's own number);
- the gap the guest saw: last source heartbeat to first destination heartbeat,
  minus the time the harness itself held the destination paused for its
  checks.  Heartbeats come once per pass over the region, so this figure is
  allowed one extra heartbeat interval.

With ``pause-before-switchover`` the source waits in ``pre-switchover`` for
the harness's ``migrate-continue``, with its VM already stopped, and QEMU
counts that wait in ``downtime`` (migration/migration.c):

- 7.2 precopy: migration_completion sets ``downtime_start``, stops the VM,
  then migration_maybe_pause waits on ``pause_sem``;
  migration_calculate_complete (from migration_iteration_finish) sets
  ``downtime = end - downtime_start``.
- 7.2 postcopy: postcopy_start takes ``time_at_stop`` on entry, stops the VM,
  migration_maybe_pause waits, and ``ms->downtime = now - time_at_stop``
  once the device state has been sent.
- 10.0 precopy and postcopy: migration_stop_vm calls migration_downtime_start;
  migration_switchover_start -> migration_switchover_prepare (which replaced
  migration_maybe_pause) waits on ``pause_sem``; migration_downtime_end
  (from migration_completion_end, or at the end of postcopy_start) sets
  ``downtime``.
- Both: qmp_migrate_continue only posts ``pause_sem``.

The harness's hold (``harness_hold_ms``, the driver's ``source_held_s``) is
read off QEMU's own clock: the ``timestamp`` of the ``pre-switchover`` event,
emitted just before the wait on ``pause_sem``, and of the next MIGRATION
event, emitted just after it (harness.migration.driver.pre_switchover_hold),
so it is exactly the wait QEMU counted, with no QMP round trip inside.  The
host's figure (``harness_hold_host_ms``: the event's arrival to the reply to
``migrate-continue``) is kept beside it as a cross-check.  The hold is taken
off QEMU's figure before judging; the guest gap has it taken off already.

On a busy host QEMU's migration thread can be ready to work through the
stop-and-copy and not get a CPU: the flake hunt's one downtime failure
(precopy, 681 ms at load 11 on 2 cores) was that.  For a precopy cell on
this machine the harness reads the thread's run-queue delay from the
kernel when the source stops and when it completes, and takes off the part
that certainly fell inside the downtime (``host_wait_ms``; how it is bounded:
harness.qemu.runqueue.HostWait), from QEMU's figure and the guest's gap
alike.  Time the thread spent running, or asleep on I/O and locks, stays
QEMU's: a slow final copy on an idle host fails as before.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from harness.qemu.runqueue import HostWait
from harness.results import CheckResult

log = logging.getLogger(__name__)

TOLERANCE_REASON = ("downtime-limit is QEMU's convergence target for the estimated final "
                    "copy, not an enforced bound; device state and switchover overheads "
                    "come on top")


@dataclass(frozen=True)
class DowntimeEvidence:
    qemu_downtime_ms: float
    limit_ms: float
    tolerance_ms: float
    #: None when there is no heartbeat workload or no heartbeat was seen.
    #: ``heartbeat_interval_ms``: the pass time around switchover (source and
    #: destination), i.e. how coarse the guest-observed figure is.
    guest_gap_ms: float | None = None
    heartbeat_interval_ms: float | None = None
    #: Time the harness itself held the stopped source in ``pre-switchover``
    #: (pause-before-switchover cells).  QEMU's ``downtime`` includes it, so
    #: it is taken off QEMU's figure before judging; ``guest_gap_ms`` has it
    #: taken off already.
    harness_hold_ms: float = 0.0
    #: The same hold on the host's clock (a cross-check; not judged).
    harness_hold_host_ms: float | None = None
    #: QEMU's ``total-time`` of the migration (None or 0: not reported), for
    #: the plausibility check.
    total_time_ms: float | None = None
    #: The migration switched to postcopy: the destination guest runs before
    #: its RAM has arrived, so its gap is not a measure of the stop.
    postcopy: bool = False
    #: Time QEMU's migration thread certainly waited for a CPU inside the
    #: downtime (harness.qemu.runqueue; None: not read).  Taken off both
    #: figures before judging.
    host_wait: HostWait | None = None
    #: Why ``host_wait`` could not be read ("" when read or not tried).
    host_wait_unread: str = ""
    #: This host's CLOCK_MONOTONIC (ms) a little before the source completed
    #: and when its ``query-migrate`` was read: the span QEMU's own
    #: QEMU_CLOCK_REALTIME stood in when it computed ``downtime``.  None when
    #: the source's clock is not this host's (a source on another host).
    clock_window_ms: tuple[float, float] | None = None
    #: From the source's ``STOP`` to its ``completed``, on QEMU's own event
    #: timestamps (ms; None: not known): harness.migration.driver.stop_to_done.
    stop_to_done_ms: float | None = None


HOLD_REASON = ("with pause-before-switchover the source is already stopped while the harness "
               "works in pre-switchover, and QEMU counts that wait in its downtime "
               "(migration/migration.c: 7.2 migration_maybe_pause, 10.0 "
               "migration_switchover_prepare, both after the VM stop that starts the "
               "downtime); the harness's own hold is taken off before judging")


HOST_WAIT_REASON = ("QEMU's migration thread was ready to run and waited for a CPU the host "
                    "gave to other work (its run-queue delay in /proc/PID/task/TID/schedstat, "
                    "read at the source's STOP and at completed; the part after completed is "
                    "not counted): that time is the host's, not QEMU's")


# --- does QEMU's postcopy figure measure the stop? -----------------------------------

STOP_CHECK = "downtime-measures-stop"
#: QEMU reads a downtime of 0 as "not set" (migration/migration.c: 7.2
#: migration_calculate_complete; 8.2 on, migration_downtime_end, which
#: postcopy_start and migration_calculate_complete both call), so a postcopy
#: switchover that took under 1 ms of QEMU_CLOCK_REALTIME is filled in again
#: at completion from ``downtime_start``:
CLOCK_REASON = (
    "QEMU before 8.2: postcopy_start measures its stop from a local time_at_stop and never "
    "sets downtime_start, so migration_calculate_complete, finding downtime 0 ('not set'), "
    "reports end_time - 0: the host's monotonic clock in ms (migration/migration.c, 7.2; "
    "fixed by 'migration: Set downtime_start even for postcopy', 8.2)")
WHOLE_REASON = (
    "QEMU 8.2 on: postcopy_start sets downtime_start, but a switchover under 1 ms still "
    "leaves downtime 0, and migration_downtime_end at completion fills in now - "
    "downtime_start: the whole time from the stop to the end of postcopy, while the "
    "destination was already running (migration/migration.c, migration_downtime_end)")
#: How long before the source's completed arrived QEMU may have read its clock
#: for ``end_time`` (ms): the event is emitted before migration_calculate_complete
#: runs, and reaches the harness after it; a loaded host delays either by seconds.
CLOCK_SLACK_MS = 5000.0
#: A postcopy downtime at least the source's whole stop-to-completed span (less
#: this, for ms rounding of two clocks: ms) is the span, not the stop...
SPAN_ROUNDING_MS = 2.0
#: ...judged only where the span is this long (ms): a real switchover (1-2 ms
#: here, 143 ms at most seen, benchmarks/README.md) cannot also fill the
#: postcopy phase after it, which sends the rest of RAM and waits for the
#: destination's return-path shutdown.
SPAN_MIN_MS = 50.0


def misreported(ev: DowntimeEvidence) -> tuple[str, str] | None:
    """Which of QEMU's two ways of filling in a 0 ms postcopy downtime, if
    either, produced ``ev.qemu_downtime_ms``: ``("clock", why)`` or
    ``("stop-to-end", why)``; None otherwise.

    Only where the defect's path exists (a postcopy switchover) and only on
    evidence that leaves no other reading:
    - clock: more than the migration's own ``total-time`` (a stop cannot
      outlast the migration) *and* inside the window of this host's
      monotonic clock in which QEMU computed it; for a source on another host
      (no window), more than both ``total-time`` and the stop-to-end span;
    - stop-to-end: at least the span from the source's ``STOP`` to its
      ``completed`` on QEMU's own event timestamps, when that span is longer
      than any switchover."""
    if not ev.postcopy:
        return None
    span = ev.stop_to_done_ms
    if ev.total_time_ms and ev.qemu_downtime_ms > ev.total_time_ms:
        # Past the whole migration; a clock reading when it sits in this
        # host's clock window, or (a source on another host: no window) when
        # it also passes the stop-to-end span on QEMU's own timestamps.
        if ev.clock_window_ms is not None:
            lo, hi = ev.clock_window_ms
            is_clock = lo - CLOCK_SLACK_MS <= ev.qemu_downtime_ms <= hi + 1.0
            where = f"this host's monotonic clock when the migration completed: {hi:.0f} ms"
        else:
            is_clock = span is not None and ev.qemu_downtime_ms >= span
            where = "the source's host clock is not this machine's, so not compared"
        if is_clock:
            return "clock", (
                f"QEMU reported its own clock as the downtime: {ev.qemu_downtime_ms:.0f} ms "
                f"({ev.qemu_downtime_ms / 3_600_000:.1f} h; {where}), while the whole "
                f"migration took {ev.total_time_ms:.0f} ms: the postcopy switchover measured "
                "0 ms and QEMU took 0 for 'not set'")
    if (span is not None and span >= SPAN_MIN_MS
            and ev.qemu_downtime_ms >= span - SPAN_ROUNDING_MS):
        return "stop-to-end", (
            f"QEMU reported the whole postcopy phase as the downtime: {ev.qemu_downtime_ms:.0f} "
            f"ms, the {span:.0f} ms from the source's STOP to its completed (QEMU's event "
            "timestamps), while the destination ran for most of it: the switchover measured "
            "0 ms and QEMU took 0 for 'not set'")
    return None


def check_downtime_measures_stop(ev: DowntimeEvidence) -> CheckResult:
    """A postcopy cell's ``downtime`` must measure the stop (QAPI
    MigrationInfo ``downtime``; migration/migration.c: postcopy_start sets it
    from the stop to the device state's send), neither QEMU's clock reading
    nor the whole postcopy phase (:func:`misreported`).  The known issues
    ``postcopy-downtime-is-clock`` and ``postcopy-downtime-is-whole-postcopy``
    (matrix.yaml) name the builds that break it; then the other two downtime
    checks judge what is left (the guest's gap) and this check carries the
    defect, so the cell is a visible known failure, never passed."""
    figures: dict[str, object] = {
        "qemu_downtime_ms": ev.qemu_downtime_ms, "total_time_ms": ev.total_time_ms,
        "stop_to_completed_ms": (None if ev.stop_to_done_ms is None
                                 else round(ev.stop_to_done_ms, 2)),
        "host_clock_window_ms": (None if ev.clock_window_ms is None
                                 else [round(t, 1) for t in ev.clock_window_ms]),
        "span_min_ms": SPAN_MIN_MS, "reason": CLOCK_REASON + "; " + WHOLE_REASON}
    found = misreported(ev)
    if found is not None:
        figures["misreported_as"] = found[0]
        return CheckResult(STOP_CHECK, False, found[1], figures)
    return CheckResult(STOP_CHECK, True,
                       f"reported {ev.qemu_downtime_ms:.0f} ms measures the stop (neither "
                       "QEMU's clock nor the whole postcopy phase)", figures)


NOT_A_STOP = ("not judged: it does not measure the stop (see the "
              f"{STOP_CHECK} check)")


def check_downtime(ev: DowntimeEvidence) -> CheckResult:
    # Where QEMU's figure is not a measure of the stop, only the guest's gap is.
    return _judge_downtime(ev, judge_qemu=misreported(ev) is None)


def _judge_downtime(ev: DowntimeEvidence, judge_qemu: bool) -> CheckResult:
    bound = ev.limit_ms + ev.tolerance_ms
    waited_ms = ev.host_wait.in_downtime_s * 1000 if ev.host_wait is not None else 0.0
    qemu_ms = ev.qemu_downtime_ms - ev.harness_hold_ms - waited_ms
    guest_ms = None if ev.guest_gap_ms is None else ev.guest_gap_ms - waited_ms
    figures = {
        "qemu_downtime_ms": ev.qemu_downtime_ms,
        "downtime_limit_ms": ev.limit_ms,
        "tolerance_ms": ev.tolerance_ms,
        "tolerance_reason": TOLERANCE_REASON,
        "guest_gap_ms": None if ev.guest_gap_ms is None else round(ev.guest_gap_ms, 2),
        "heartbeat_interval_ms": (None if ev.heartbeat_interval_ms is None
                                  else round(ev.heartbeat_interval_ms, 2)),
    }
    less = []
    if ev.harness_hold_ms:
        figures["harness_hold_ms"] = round(ev.harness_hold_ms, 2)
        if ev.harness_hold_host_ms is not None:
            figures["harness_hold_host_ms"] = round(ev.harness_hold_host_ms, 2)
        figures["harness_hold_reason"] = HOLD_REASON
        less.append(f"the harness's {ev.harness_hold_ms:.0f} ms hold")
        log.info("downtime: QEMU reported %.0f ms, %.0f ms of it the harness's hold in "
                 "pre-switchover", ev.qemu_downtime_ms, ev.harness_hold_ms)
    if ev.host_wait is not None:
        figures["host_wait_ms"] = round(waited_ms, 2)
        figures["host_wait_measured_ms"] = round(ev.host_wait.measured_s * 1000, 2)
        figures["host_wait_tail_ms"] = round(ev.host_wait.tail_s * 1000, 2)
        figures["host_wait_thread"] = ev.host_wait.thread
        figures["host_wait_reason"] = HOST_WAIT_REASON
        if waited_ms >= 1:
            less.append(f"{waited_ms:.0f} ms its migration thread waited for a CPU")
    elif ev.host_wait_unread:
        figures["host_wait_unread"] = ev.host_wait_unread
    held = ""
    if less:
        figures["qemu_downtime_judged_ms"] = round(qemu_ms, 2)
        held = f" (reported {ev.qemu_downtime_ms:.0f} less " + " and ".join(less) + ")"
    if waited_ms and guest_ms is not None:
        figures["guest_gap_judged_ms"] = round(guest_ms, 2)
    problems = []
    if not judge_qemu:
        figures["qemu_downtime_not_judged"] = NOT_A_STOP
    elif qemu_ms > bound:
        problems.append(f"QEMU downtime {qemu_ms:.0f} ms{held} > limit {ev.limit_ms:.0f} "
                        f"+ tolerance {ev.tolerance_ms:.0f} ms")
    if guest_ms is not None:
        guest_bound = bound + (ev.heartbeat_interval_ms or 0.0)
        figures["guest_bound_ms"] = round(guest_bound, 2)
        if guest_ms > guest_bound:
            waited = f" ({ev.guest_gap_ms:.0f} less the CPU wait)" if waited_ms >= 1 else ""
            problems.append(f"guest saw a {guest_ms:.0f} ms gap{waited} > {guest_bound:.0f} ms "
                            "(limit + tolerance + heartbeat resolution)")
    if problems:
        return CheckResult("downtime", False, "; ".join(problems), figures)
    guest = "" if guest_ms is None else f", guest saw {guest_ms:.0f} ms"
    if not judge_qemu:
        seen = ("nothing left to judge" if guest_ms is None else
                f"guest saw {guest_ms:.0f} ms <= {bound:.0f} ms + heartbeat resolution")
        return CheckResult("downtime", True, f"QEMU's figure {NOT_A_STOP}; {seen}",
                           figures)
    return CheckResult("downtime", True,
                       f"{qemu_ms:.0f} ms{held} <= {ev.limit_ms:.0f} + {ev.tolerance_ms:.0f} ms"
                       + guest, figures)


# --- is QEMU's figure plausible at all? ---------------------------------------------

PLAUSIBLE = "downtime-plausible"
#: How far QEMU's ``downtime`` may be off what the guest itself saw before the
#: figure is implausible, as a factor...
PLAUSIBILITY_FACTOR = 20.0
#: ...when the guest saw more than this without running (ms): below it a
#: loaded host explains the difference (benchmarks/README.md, timing row 2:
#: 944 ms of guest gap beside 45 ms of QEMU downtime with a CPU hog on both
#: cores, from the destination's load and its vCPU's first run; twice that).
PLAUSIBILITY_FLOOR_MS = 2000.0
#: ...and this much on top of the factor the other way (ms): QEMU may end its
#: downtime a little after the guest runs again (with return-path the source
#: waits for the destination's close: migration/migration.c,
#: await_return_path_close_on_source in 7.2), never by seconds.
PLAUSIBILITY_MARGIN_MS = 1000.0
PLAUSIBILITY_REASON = (
    "QEMU's downtime is the time the guest is stopped: it can be neither longer than the "
    "migration's own total-time (both on QEMU_CLOCK_REALTIME, the downtime starting after "
    f"the migration did: migration/migration.c) nor {PLAUSIBILITY_FACTOR:.0f}x off what the "
    "guest saw (its gap, less the heartbeat resolution; allowing "
    f"{PLAUSIBILITY_FLOOR_MS:.0f} ms of host lag one way and {PLAUSIBILITY_MARGIN_MS:.0f} ms "
    "of return-path tail the other)")


def check_downtime_plausible(ev: DowntimeEvidence) -> CheckResult:
    """QEMU's ``downtime`` against the migration's own ``total-time`` and the
    guest's gap: a figure that cannot be true is itself a failure, whatever
    the limit.  Separate from :func:`check_downtime`, so a cell that expects
    the downtime check to fail (a negative control) is still judged here.

    - reported downtime > total-time: impossible by construction;
    - too small: the guest was certainly stopped ``gap - resolution`` ms, more
      than ``PLAUSIBILITY_FLOOR_MS``, and QEMU reports under 1/20 of it
      (not judged for postcopy, where the destination guest runs, slowed by
      page faults that are not downtime);
    - too large: QEMU reports more than 20x the most the guest can have been
      stopped (``gap + resolution``) plus ``PLAUSIBILITY_MARGIN_MS``.

    QEMU's figure is judged less the harness's own hold in pre-switchover
    (see :func:`check_downtime`); a guest gap that is missing or not
    positive (no heartbeats, save/restore, a fault the cell injects) is not
    compared."""
    if misreported(ev) is not None:
        return CheckResult(PLAUSIBLE, True, f"QEMU's figure {NOT_A_STOP}",
                           {"qemu_downtime_ms": ev.qemu_downtime_ms,
                            "total_time_ms": ev.total_time_ms, "reason": PLAUSIBILITY_REASON})
    judged = ev.qemu_downtime_ms - ev.harness_hold_ms
    res = ev.heartbeat_interval_ms or 0.0
    figures: dict[str, object] = {
        "qemu_downtime_ms": ev.qemu_downtime_ms, "qemu_downtime_judged_ms": round(judged, 2),
        "total_time_ms": ev.total_time_ms,
        "guest_gap_ms": None if ev.guest_gap_ms is None else round(ev.guest_gap_ms, 2),
        "heartbeat_interval_ms": round(res, 2), "factor": PLAUSIBILITY_FACTOR,
        "floor_ms": PLAUSIBILITY_FLOOR_MS, "margin_ms": PLAUSIBILITY_MARGIN_MS,
        "reason": PLAUSIBILITY_REASON}
    problems = []
    if ev.total_time_ms and ev.qemu_downtime_ms > ev.total_time_ms:
        problems.append(f"reported {ev.qemu_downtime_ms:.0f} ms > the migration's total-time "
                        f"{ev.total_time_ms:.0f} ms")
    compared = ev.guest_gap_ms is not None and ev.guest_gap_ms > 0
    if compared:
        assert ev.guest_gap_ms is not None
        least, most = ev.guest_gap_ms - res, ev.guest_gap_ms + res
        too_large = PLAUSIBILITY_FACTOR * most + PLAUSIBILITY_MARGIN_MS
        figures["too_large_above_ms"] = round(too_large, 2)
        if judged > too_large:
            problems.append(f"reported {judged:.0f} ms > {PLAUSIBILITY_FACTOR:.0f} x the "
                            f"{most:.0f} ms the guest can have been stopped (gap "
                            f"{ev.guest_gap_ms:.0f} + resolution {res:.0f}) + "
                            f"{PLAUSIBILITY_MARGIN_MS:.0f} ms")
        if not ev.postcopy and least > PLAUSIBILITY_FLOOR_MS:
            figures["too_small_below_ms"] = round(least / PLAUSIBILITY_FACTOR, 2)
            if judged * PLAUSIBILITY_FACTOR < least:
                problems.append(f"reported {judged:.0f} ms < 1/{PLAUSIBILITY_FACTOR:.0f} of "
                                f"the {least:.0f} ms the guest was stopped at least (gap "
                                f"{ev.guest_gap_ms:.0f} - resolution {res:.0f})")
    if problems:
        log.warning("QEMU's downtime figure is implausible: %s", "; ".join(problems))
        return CheckResult(PLAUSIBLE, False,
                           "QEMU's downtime figure is implausible: " + "; ".join(problems),
                           figures)
    against = [f"total-time {ev.total_time_ms:.0f} ms"] if ev.total_time_ms else []
    if compared:
        against.append(f"the guest's {ev.guest_gap_ms:.0f} ms gap")
    return CheckResult(PLAUSIBLE, True,
                       f"reported {ev.qemu_downtime_ms:.0f} ms fits "
                       + (" and ".join(against) if against else "(nothing to compare with)"),
                       figures)
