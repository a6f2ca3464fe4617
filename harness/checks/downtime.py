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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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


HOLD_REASON = ("with pause-before-switchover the source is already stopped while the harness "
               "works in pre-switchover, and QEMU counts that wait in its downtime "
               "(migration/migration.c: 7.2 migration_maybe_pause, 10.0 "
               "migration_switchover_prepare, both after the VM stop that starts the "
               "downtime); the harness's own hold is taken off before judging")


def check_downtime(ev: DowntimeEvidence) -> CheckResult:
    bound = ev.limit_ms + ev.tolerance_ms
    qemu_ms = ev.qemu_downtime_ms - ev.harness_hold_ms
    figures = {
        "qemu_downtime_ms": ev.qemu_downtime_ms,
        "downtime_limit_ms": ev.limit_ms,
        "tolerance_ms": ev.tolerance_ms,
        "tolerance_reason": TOLERANCE_REASON,
        "guest_gap_ms": None if ev.guest_gap_ms is None else round(ev.guest_gap_ms, 2),
        "heartbeat_interval_ms": (None if ev.heartbeat_interval_ms is None
                                  else round(ev.heartbeat_interval_ms, 2)),
    }
    held = ""
    if ev.harness_hold_ms:
        figures["harness_hold_ms"] = round(ev.harness_hold_ms, 2)
        if ev.harness_hold_host_ms is not None:
            figures["harness_hold_host_ms"] = round(ev.harness_hold_host_ms, 2)
        figures["harness_hold_reason"] = HOLD_REASON
        figures["qemu_downtime_judged_ms"] = round(qemu_ms, 2)
        held = f" (reported {ev.qemu_downtime_ms:.0f} less the harness's {ev.harness_hold_ms:.0f} ms hold)"
        log.info("downtime: QEMU reported %.0f ms, %.0f ms of it the harness's hold in "
                 "pre-switchover; judging %.0f ms", ev.qemu_downtime_ms, ev.harness_hold_ms,
                 qemu_ms)
    problems = []
    if qemu_ms > bound:
        problems.append(f"QEMU downtime {qemu_ms:.0f} ms{held} > limit {ev.limit_ms:.0f} "
                        f"+ tolerance {ev.tolerance_ms:.0f} ms")
    if ev.guest_gap_ms is not None:
        guest_bound = bound + (ev.heartbeat_interval_ms or 0.0)
        figures["guest_bound_ms"] = round(guest_bound, 2)
        if ev.guest_gap_ms > guest_bound:
            problems.append(f"guest saw a {ev.guest_gap_ms:.0f} ms gap > {guest_bound:.0f} ms "
                            "(limit + tolerance + heartbeat resolution)")
    if problems:
        return CheckResult("downtime", False, "; ".join(problems), figures)
    guest = "" if ev.guest_gap_ms is None else f", guest saw {ev.guest_gap_ms:.0f} ms"
    return CheckResult("downtime", True,
                       f"{qemu_ms:.0f} ms{held} <= {ev.limit_ms:.0f} + {ev.tolerance_ms:.0f} ms"
                       + guest, figures)
