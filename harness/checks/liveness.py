"""Liveness: after ``cont`` the destination guest runs on where it left off.

The flow resumes the destination once the paused-pair checks are done and
the workload watches it for a while (harness.guest.workload); these functions
judge what it saw.  Each workload proves life its own way:

- the x86 dirtier prints a heartbeat per pass on its serial port: heartbeats
  must resume, no banner may appear (a banner is a boot from reset: the CPU
  state did not arrive) and its region must keep changing;
- the e2k dirtier has no serial output: its boots/passes marker in guest RAM
  must go on counting passes with the boots counter unchanged (a CPU that
  starts again from the reset PC with migrated RAM bumps ``boots``);
- a pattern guest runs no code of ours: the destination must simply be
  ``running`` and stay up.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.results import CheckResult

#: Heartbeats (x86) or passes (e2k) the resumed guest must show.
LIVENESS_HEARTBEATS = 3
#: How long the resumed guest gets to show them.
LIVENESS_TIMEOUT = 20.0

NAME = "liveness"


@dataclass(frozen=True, kw_only=True)
class AfterCont:
    """What every guest's liveness evidence carries."""

    #: Whether the destination QEMU still runs, and how it ended if not.
    alive: bool
    exit_reason: str
    #: Heartbeats or passes the resumed guest had to show, and in how long.
    want: int = LIVENESS_HEARTBEATS
    timeout_s: float = LIVENESS_TIMEOUT


def _ran_on(ev: AfterCont, figures: dict[str, object], new: int, unit: str,
            restarted: str | None) -> CheckResult | None:
    """What every guest that counts its progress must show after ``cont``:
    its QEMU alive, no restart from reset (``restarted`` says how it
    showed), and ``ev.want`` new ``unit`` (heartbeats, passes).  None: all
    held; else the failed check."""
    if not ev.alive:
        return CheckResult(NAME, False, f"destination died after cont: {ev.exit_reason}",
                           figures)
    if restarted:
        return CheckResult(NAME, False, f"guest restarted on the destination ({restarted}): "
                           "CPU state not migrated", figures)
    if new < ev.want:
        return CheckResult(NAME, False, f"only {new} {unit} in {ev.timeout_s:.0f} s after cont",
                           figures)
    return None


@dataclass(frozen=True, kw_only=True)
class HeartbeatLiveness(AfterCont):
    """What the x86 dirtier's destination showed after ``cont``."""

    #: Heartbeats the destination's serial carried in total, and before ``cont``.
    heartbeats: int
    beats_before: int
    #: Banners seen on the destination's serial (each one a boot from reset).
    restarts: int
    #: Region pages whose first byte changed between the paused check and now.
    pages_changed: int


def check_heartbeat_liveness(ev: HeartbeatLiveness) -> CheckResult:
    """Heartbeats resumed, no restart, and the region keeps changing."""
    figures: dict[str, object] = {"heartbeats": ev.heartbeats, "restarts": ev.restarts,
                                  "pages_changed": ev.pages_changed, "destination_alive": ev.alive}
    new = ev.heartbeats - ev.beats_before
    if failed := _ran_on(ev, figures, new, "heartbeats",
                         "banner printed again" if ev.restarts else None):
        return failed
    if ev.pages_changed == 0:
        return CheckResult(NAME, False, "heartbeats but the region did not change", figures)
    return CheckResult(NAME, True, f"{new} heartbeats, {ev.pages_changed} pages changed", figures)


@dataclass(frozen=True, kw_only=True)
class MarkerLiveness(AfterCont):
    """The e2k dirtier's (boots, passes) marker before ``cont`` and after the wait."""

    boots_before: int
    passes_before: int
    boots_after: int
    passes_after: int


def check_marker_liveness(ev: MarkerLiveness) -> CheckResult:
    """Passes go on counting and the boots counter does not move."""
    figures: dict[str, object] = {"boots_before": ev.boots_before, "boots_after": ev.boots_after,
                                  "passes_before": ev.passes_before,
                                  "passes_after": ev.passes_after, "destination_alive": ev.alive}
    new = ev.passes_after - ev.passes_before
    restarted = (f"boots counter {ev.boots_before} -> {ev.boots_after}, passes "
                 f"{ev.passes_before} -> {ev.passes_after}"
                 if ev.boots_after != ev.boots_before else None)
    if failed := _ran_on(ev, figures, new, "passes", restarted):
        return failed
    return CheckResult(NAME, True, f"{new} passes after cont, no restart", figures)


def check_still_running(alive: bool, status: str, exit_reason: str) -> CheckResult:
    """Liveness without a heartbeat: a while after ``cont`` the destination
    is ``running`` (``status`` is "dead" when its QEMU has gone)."""
    ok = alive and status == "running"
    return CheckResult(NAME, ok, f"destination {status} after cont" if ok else
                       f"destination {status} after cont: {exit_reason}", {"status": status})
