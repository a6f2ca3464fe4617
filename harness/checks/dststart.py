"""The ``autostart`` check: an autostarting destination started by itself, when
QEMU says it must, and not otherwise.

A destination started without ``-S`` (``dst-start: autostart``,
harness.migration.dst_start) gets no ``cont`` from the harness: that QEMU runs
the guest on is the liveness the user relies on.  What QEMU promises, in 7.2
and 10.0 alike:

- precopy: migration/migration.c, process_incoming_migration_bh starts the
  guest (``vm_start``) when the source was running (7.2:
  ``global_state_get_runstate() == RUN_STATE_RUNNING``, or no global state;
  10.0: ``runstate_is_live(migration_get_target_runstate())``), and otherwise
  gives the destination the source's run state (``runstate_set``).  It does so
  *before* it reports ``completed`` ("This must happen after any state changes
  since as soon as an external observer sees this event they might start to
  prod at the VM assuming it's ready to use").
- postcopy: migration/savevm.c, loadvm_postcopy_handle_run_bh starts it when
  the source says run, whatever the source's state, and the end of postcopy
  (postcopy_ram_listen_thread) leaves it running.

Evidence: the destination's ``RESUME`` event (QEMU sends it whenever the vCPUs
start: vm_prepare_start) with the harness having sent no ``cont``, and its
``completed`` event, in the order they arrived on the one QMP socket.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from harness.results import CheckResult

log = logging.getLogger(__name__)

NAME = "autostart"

PRECOPY_RULE = ("migration/migration.c, process_incoming_migration_bh: vm_start() when the "
                "source was running, before 'completed'; otherwise the source's run state")
POSTCOPY_RULE = ("migration/savevm.c, loadvm_postcopy_handle_run_bh: vm_start() when the "
                 "source says run")


@dataclass(frozen=True)
class AutostartEvidence:
    """What an autostarting destination did, with no ``cont`` from the harness."""

    #: The source's run state when the migration began (``running``, or
    #: ``prelaunch`` for a source that never ran a CPU).
    source_runstate: str
    #: The migration switched to postcopy (the source reported postcopy-active).
    postcopy: bool
    #: Host times of the destination's first ``RESUME`` and of its
    #: ``completed`` (None: it sent none).
    t_resume: float | None
    t_completed: float | None
    #: The destination's run state once the migration was over, as QEMU left
    #: it or after the harness stopped the guest it had started.
    destination_runstate: str


def check_autostart(ev: AutostartEvidence) -> CheckResult:
    """Started by itself exactly when QEMU must start it, and (precopy) before
    it said ``completed``."""
    must_start = ev.postcopy or ev.source_runstate == "running"
    rule = POSTCOPY_RULE if ev.postcopy else PRECOPY_RULE
    started = ev.t_resume is not None
    figures: dict[str, object] = {
        "source_runstate": ev.source_runstate, "postcopy": ev.postcopy,
        "started_by_itself": started, "destination_runstate": ev.destination_runstate,
        "rule": rule}
    if started and ev.t_completed is not None:
        # Positive: the guest ran before 'completed' arrived.
        figures["resume_before_completed_ms"] = round((ev.t_completed - ev.t_resume) * 1000, 2)
    if must_start and not started:
        return CheckResult(NAME, False,
                           f"the destination did not start by itself (source was "
                           f"{ev.source_runstate}{', postcopy' if ev.postcopy else ''}; "
                           f"destination {ev.destination_runstate}): {rule}", figures)
    if not must_start and started:
        return CheckResult(NAME, False,
                           f"the destination started although the source was "
                           f"{ev.source_runstate}: QEMU must carry the source's run state "
                           f"over ({rule})", figures)
    if not started:
        return CheckResult(NAME, True,
                           f"the source was {ev.source_runstate}: the destination stayed "
                           f"{ev.destination_runstate}, as QEMU must leave it", figures)
    if not ev.postcopy and ev.t_completed is not None and ev.t_resume > ev.t_completed:
        return CheckResult(NAME, False,
                           "the destination reported 'completed' before it started the guest "
                           f"({(ev.t_resume - ev.t_completed) * 1000:.0f} ms later): {rule}",
                           figures)
    when = "when the source said run (postcopy)" if ev.postcopy else "before 'completed'"
    return CheckResult(NAME, True, f"the destination started the guest by itself {when}, "
                       "no cont sent", figures)


__all__ = ["AutostartEvidence", "NAME", "check_autostart"]
