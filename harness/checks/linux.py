"""The Linux guest's checks: evidence in, verdict with figures out.

The workload (harness.guest.linux) collects the evidence: the agent's own
verdicts and error lines, its heartbeats as the host received them, the
harness's TCP peer's record-by-record reading of the stream, the host's
reading of the disk image, and what a reboot on the destination showed.
Each function here judges one concern:

- ``guest-data``: the agent's memory records were verified continuously and
  after the migration, with no mismatch (each mismatch the agent printed is
  quoted: address, expected, observed);
- ``guest-downtime``: the heartbeat stream went on across the switchover
  with nothing lost or repeated, and the gap the guest showed is within
  ``downtime-limit`` + tolerance + two heartbeat periods;
- ``disk``: every write the guest saw acknowledged is in the image, intact,
  and ``qemu-img check`` finds the image consistent; the agent's own re-read
  agrees;
- ``net``: the TCP stream stayed open (no reset) and every record arrived
  once, in order, intact; the switchover stall is recorded;
- ``clock``: neither guest clock went backwards, with the steps across the
  switchover recorded;
- ``reboot``: a guest reboot on the destination comes back, finds its disk
  where it left it (the last acknowledged write; the blocks themselves are
  the disk check's), and its agent's memory, network and clocks work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.results import CheckResult

__all__ = ["AgentVerdict", "HeartbeatEvidence", "RebootEvidence", "check_guest_data",
           "check_guest_downtime", "check_disk", "check_net", "check_clock", "check_reboot"]

#: Agent error lines quoted in a failed check's summary.
QUOTED_ERRORS = 3


@dataclass(frozen=True)
class AgentVerdict:
    """An ``MH VERDICT`` line (None fields: the agent never answered)."""

    fields: dict[str, str] | None
    #: ``MH ERR`` lines of this boot, and how many there were.
    errors: tuple[str, ...] = ()
    error_count: int = 0

    def get(self, key: str, default: str = "") -> str:
        return (self.fields or {}).get(key, default)

    def num(self, key: str) -> int:
        try:
            return int(self.get(key, "0"))
        except ValueError:
            return 0

    def errors_of(self, what: str) -> list[str]:
        return [e for e in self.errors if e.split(" ", 1)[0] == what]


def _quote(errors: list[str]) -> str:
    shown = "; ".join(errors[:QUOTED_ERRORS])
    more = len(errors) - QUOTED_ERRORS
    return shown + (f" (+{more} more)" if more > 0 else "")


def check_guest_data(verdict: AgentVerdict) -> CheckResult:
    """The agent's memory verification: continuous (each record checked right
    before it is rewritten) and a full pass after the migration."""
    mem_errors = verdict.errors_of("mem")
    figures: dict[str, Any] = {
        "records": verdict.num("mem_records"), "passes": verdict.num("mem_passes"),
        "mismatches": verdict.num("mem_errors"), "bad_records": verdict.num("mem_bad_records"),
        "errors_reported": len(mem_errors), "first_errors": mem_errors[:8]}
    if verdict.fields is None:
        return CheckResult("guest-data", False, "the agent gave no verdict after migration",
                           figures)
    if verdict.get("mem") != "ok" or mem_errors:
        return CheckResult("guest-data", False,
                           f"the agent found {verdict.num('mem_bad_records')} of "
                           f"{verdict.num('mem_records')} records wrong "
                           f"({verdict.num('mem_errors')} mismatches): {_quote(mem_errors)}",
                           figures)
    return CheckResult("guest-data", True,
                       f"{verdict.num('mem_records')} records verified over "
                       f"{verdict.num('mem_passes')} passes and after migration", figures)


@dataclass(frozen=True)
class HeartbeatEvidence:
    """The heartbeats around the switchover, as the host received them."""

    period_ms: float
    heartbeats: int
    lost: int
    duplicated: int
    #: Last source and first destination heartbeat: sequence numbers, host
    #: arrival (s) and guest CLOCK_MONOTONIC (ns).  None: none arrived.
    src_last: tuple[int, float, int] | None
    dst_first: tuple[int, float, int] | None
    #: Time the harness held the guest stopped (taken off the gap), QEMU's
    #: downtime, the limit and the tolerance (ms).
    held_ms: float
    qemu_downtime_ms: float
    limit_ms: float
    tolerance_ms: float
    #: Heartbeat lines a QEMU left half-written and the next completed.
    carried_lines: int = 0


def check_guest_downtime(ev: HeartbeatEvidence) -> CheckResult:
    """Heartbeats continuous across the switchover; the guest's gap in bounds."""
    figures: dict[str, Any] = {"period_ms": ev.period_ms, "heartbeats": ev.heartbeats,
                               "lost": ev.lost, "duplicated": ev.duplicated,
                               "qemu_downtime_ms": ev.qemu_downtime_ms,
                               "harness_held_ms": round(ev.held_ms, 2),
                               "lines_completed_by_destination": ev.carried_lines}
    if ev.src_last is None or ev.dst_first is None:
        return CheckResult("guest-downtime", False, "no heartbeat on "
                           f"{'the source' if ev.src_last is None else 'the destination'}",
                           figures)
    seq_step = ev.dst_first[0] - ev.src_last[0]
    gap_ms = (ev.dst_first[1] - ev.src_last[1]) * 1000 - ev.held_ms
    guest_ms = (ev.dst_first[2] - ev.src_last[2]) / 1e6
    bound = ev.limit_ms + ev.tolerance_ms + 2 * ev.period_ms
    figures.update({"switchover_seq": [ev.src_last[0], ev.dst_first[0]],
                    "gap_ms": round(gap_ms, 2), "guest_clock_step_ms": round(guest_ms, 3),
                    "bound_ms": bound})
    if ev.lost or ev.duplicated or seq_step != 1:
        return CheckResult("guest-downtime", False,
                           f"heartbeats not continuous: {ev.lost} lost, {ev.duplicated} "
                           f"repeated; across the switchover {ev.src_last[0]} -> "
                           f"{ev.dst_first[0]}", figures)
    if gap_ms > bound:
        return CheckResult("guest-downtime", False,
                           f"the guest was silent {gap_ms:.0f} ms across the switchover, over "
                           f"{bound:.0f} ms (downtime-limit {ev.limit_ms:.0f} + tolerance "
                           f"{ev.tolerance_ms:.0f} + 2 heartbeat periods); QEMU says "
                           f"{ev.qemu_downtime_ms:.0f} ms", figures)
    return CheckResult("guest-downtime", True,
                       f"heartbeats continuous ({seq_step} step at switchover), guest silent "
                       f"{gap_ms:.1f} ms (QEMU: {ev.qemu_downtime_ms:.0f} ms), its clock "
                       f"moved {guest_ms:.1f} ms", figures)


def check_disk(host: dict[str, Any] | None, verdict: AgentVerdict,
               host_problem: str = "") -> CheckResult:
    """The image holds every acknowledged write (host's reading, ``host``:
    harness.guest.linux_disk.DiskReport.figures()) and the agent's own
    re-read after the migration agreed."""
    disk_errors = verdict.errors_of("disk")
    figures: dict[str, Any] = {"host": host, "agent_acked": verdict.num("disk_acked"),
                               "agent_errors": verdict.num("disk_errors"),
                               "agent_first_errors": disk_errors[:8]}
    if verdict.get("disk") == "off":
        return CheckResult("disk", True, "no disk in this cell", figures)
    problems = []
    if verdict.fields is None:
        problems.append("the agent gave no verdict after migration")
    elif verdict.get("disk") != "ok" or disk_errors:
        problems.append(f"the agent's re-read found {verdict.num('disk_errors')} bad blocks: "
                        f"{_quote(disk_errors)}")
    if host is None:
        problems.append(f"the host could not read the image back: {host_problem}")
    else:
        if host["mismatches"]:
            first = host["first_mismatches"][0]
            problems.append(f"{host['mismatches']} of {host['blocks']} blocks do not hold what "
                            f"write {host['acked']} left (block {first['block']}: expected "
                            f"write {first['expected_seq']}, found {first['found']})")
        if not host["image_consistent"]:
            problems.append(f"qemu-img check: {host['qemu_img_check']}")
    if problems:
        return CheckResult("disk", False, "; ".join(problems), figures)
    return CheckResult("disk", True, f"{host['acked'] if host else 0} acknowledged writes all "
                       f"in the image ({host['intact'] if host else 0} blocks intact), image "
                       "consistent", figures)


def check_net(report: dict[str, Any] | None, verdict: AgentVerdict, switched: bool
              ) -> CheckResult:
    """Stream intact: ``report`` is harness.guest.linux_net.StreamReport.figures();
    ``switched``: the stream had to cross from the source's connection to the
    destination's."""
    net_errors = verdict.errors_of("net")
    figures: dict[str, Any] = {"peer": report, "agent_sent": verdict.num("net_sent"),
                               "agent_errors": verdict.num("net_errors"),
                               "agent_first_errors": net_errors[:4]}
    if verdict.get("net") == "off":
        return CheckResult("net", True, "no network stream in this cell", figures)
    problems = []
    if verdict.fields is not None and (verdict.get("net") != "ok" or net_errors):
        problems.append(f"the agent's stream broke: {_quote(net_errors) or 'not connected'}")
    if report is None or report["records"] == 0:
        problems.append("the peer received no record")
    else:
        for key, what in (("lost", "lost"), ("duplicated", "repeated"), ("corrupt", "corrupt")):
            if report[key]:
                problems.append(f"{report[key]} records {what}")
        if report["trailing_bytes"]:
            problems.append(f"{report['trailing_bytes']} bytes of a cut record at the end")
        if switched and report["switchover_gap_ms"] is None:
            problems.append("nothing arrived through the destination's connection")
        if problems and report.get("problems"):
            problems.append(f"first: {report['problems'][0]}")
    if problems:
        return CheckResult("net", False, "; ".join(problems), figures)
    stall = report.get("switchover_stall_ms", report["switchover_gap_ms"]) if report else None
    return CheckResult("net", True, f"{report['records']} records in order, none lost or "
                       "repeated" + (f"; switchover stall {stall:.0f} ms" if stall is not None
                                     else ""), figures)


def check_clock(verdict: AgentVerdict, guest_step_ms: float | None,
                host_gap_ms: float | None) -> CheckResult:
    """Guest clocks never went backwards; the steps across the switchover are
    recorded (the guest's CLOCK_MONOTONIC step between the last source and the
    first destination heartbeat, beside the host's)."""
    figures: dict[str, Any] = {
        "mono_backwards": verdict.num("mono_back"), "real_backwards": verdict.num("real_back"),
        "max_mono_step_ms": round(verdict.num("max_mono_step_ns") / 1e6, 3),
        "max_real_step_ms": round(verdict.num("max_real_step_ns") / 1e6, 3),
        "max_wall_drift_ms": round(verdict.num("max_wall_drift_ns") / 1e6, 3),
        "switchover_guest_step_ms": guest_step_ms, "switchover_host_gap_ms": host_gap_ms}
    if verdict.fields is None:
        return CheckResult("clock", False, "the agent gave no verdict after migration", figures)
    if verdict.get("clock") != "ok" or figures["mono_backwards"] or figures["real_backwards"]:
        return CheckResult("clock", False,
                           f"guest clock went backwards: CLOCK_MONOTONIC "
                           f"{figures['mono_backwards']} times, CLOCK_REALTIME "
                           f"{figures['real_backwards']} times", figures)
    step = f", {guest_step_ms:.1f} ms across the switchover" if guest_step_ms is not None else ""
    return CheckResult("clock", True, "no backwards step; largest monotonic step "
                       f"{figures['max_mono_step_ms']:.1f} ms{step}", figures)


@dataclass(frozen=True)
class RebootEvidence:
    """What the destination showed after the agent was told to reboot."""

    requested: bool
    bye: bool = False
    #: The new boot: its id, seconds to its READY, its disk scan, its verdict.
    new_boot: str | None = None
    old_boot: str = ""
    ready_s: float | None = None
    timeout_s: float = 0.0
    diskscan: dict[str, str] | None = None
    acked_before: int = 0
    verdict: AgentVerdict = field(default_factory=lambda: AgentVerdict(None))
    panic: str | None = None
    alive: bool = True
    exit_reason: str = ""


def check_reboot(ev: RebootEvidence) -> CheckResult:
    """The guest reboots on the destination and comes back whole."""
    figures: dict[str, Any] = {"bye": ev.bye, "new_boot": ev.new_boot, "ready_s": ev.ready_s,
                               "diskscan": ev.diskscan, "acked_before": ev.acked_before,
                               "verdict": ev.verdict.fields}
    if not ev.requested:
        return CheckResult("reboot", True, "not asked for in this cell", figures)
    if not ev.alive:
        return CheckResult("reboot", False, f"destination died: {ev.exit_reason}", figures)
    if ev.panic:
        return CheckResult("reboot", False, f"kernel panic after reboot: {ev.panic}", figures)
    if ev.new_boot is None or ev.new_boot == ev.old_boot or ev.ready_s is None:
        return CheckResult("reboot", False, f"the guest did not come back within "
                           f"{ev.timeout_s:.0f} s (agent said goodbye: {ev.bye})", figures)
    problems = []
    # Which blocks hold what is the disk check's business (it reads the whole
    # image); the reboot must find the disk where the guest left it.
    if ev.diskscan is not None:
        found = int(ev.diskscan.get("max_seq", "0"))
        if found < ev.acked_before:
            problems.append(f"after reboot the disk's last write is {found}, but "
                            f"{ev.acked_before} were acknowledged before it")
    v = ev.verdict
    if v.fields is None:
        problems.append("the rebooted agent gave no verdict")
    else:
        bad = [k for k in ("mem", "net", "clock") if v.get(k) not in ("ok", "off")]
        if bad:
            problems.append(f"the rebooted agent reports {', '.join(bad)} failing: "
                            f"{_quote(list(v.errors))}")
    if problems:
        return CheckResult("reboot", False, "; ".join(problems), figures)
    return CheckResult("reboot", True, f"back in {ev.ready_s:.1f} s, disk writes found, "
                       "devices work", figures)
