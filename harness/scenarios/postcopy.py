"""Postcopy recovery: the migration channel breaks during postcopy.

Once postcopy has started the destination owns the guest, so "the source runs
again" does not apply: ``postcopy-recover`` asserts that both sides pause,
resume over a new channel and complete, that the RAM is exact but for the
bytes the running destination guest rewrote, and that the destination guest
runs on.  ``postcopy-break-unrecovered`` is its negative control.

QEMU's requirements (7.2 = Debian 7.2+dfsg, 10.0 = 10.0.2):

* only ``postcopy-ram`` on both sides; ``return-path`` is not needed: the
  source opens the return path whenever postcopy-ram is on
  (migration/migration.c migrate_fd_connect (7.2) / migration_connect (10.0):
  ``if (migrate_postcopy_ram() || migrate_use_return_path())``);
* ``release-ram`` must be off (migration.c migrate_prepare refuses a resume
  with it);
* the destination pauses instead of failing only once it runs the guest
  (migration/savevm.c qemu_loadvm_state_main: ``postcopy_state_get() ==
  POSTCOPY_INCOMING_RUNNING`` -> postcopy_pause_incoming); a break while it
  is still ``postcopy-active`` but only LISTENING (device state not yet
  loaded) fails the migration instead.  So the scenario breaks the channel
  only once the destination has sent ``RESUME``;
* the source pauses from ``postcopy-active`` (migration.c postcopy_pause,
  via migration_detect_error);
* ``migrate-recover`` is accepted only in ``postcopy-paused`` (migration.c
  qmp_migrate_recover); it frees the old listener's address list
  (migration_incoming_transport_cleanup) and listens anew, so a ``:0`` port
  is reported by ``query-migrate`` socket-address as for the first listen;
* ``migrate`` with ``resume: true`` is accepted only in ``postcopy-paused``
  (migration.c migrate_prepare); 10.0 then passes through
  ``postcopy-recover-setup`` (added in 9.1) before ``postcopy-recover``; the
  resumed channel runs at ``max-postcopy-bandwidth`` (migrate_fd_connect /
  migration_connect), not ``max-bandwidth``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.checks.ram import Explained, check_ram, x86_layout
from harness.errors import HarnessError
from harness.migration.driver import (POSTCOPY_AFTER_SYNCS, STATE_TIMEOUT, postcopy_due,
                                      resume_in_postcopy, start, start_postcopy_when_due)
from harness.migration.proxy import Proxy
from harness.migration.waits import (TERMINAL, event_time, is_migration, states_since,
                                     wait_resumed, wait_state)
from harness.results import CheckResult
from harness.scenarios.registry import scenario
from harness.scenarios.rig import FAST, SLOW, Rig, Side, free_port, source_running
from harness.scenarios.verdicts import judge_sequence, judge_state
from harness.units import PAGE, MiB

log = logging.getLogger(__name__)

POSTCOPY = {"postcopy-ram": True}
#: Precopy at a modest rate; postcopy (rate ``max-postcopy-bandwidth``, whose
#: default 0 means unlimited) slow enough that the 16 MiB region the guest
#: keeps dirty takes about 2 s to arrive, so the break lands in postcopy.
POSTCOPY_PARAMS = {"max-bandwidth": SLOW, "max-postcopy-bandwidth": 8 * MiB}
#: How long the paused migration is left alone before recovery (and, in the
#: negative control, how long it must stay paused without recovery).
PAUSE_HOLD = 1.0
UNRECOVERED_HOLD = 3.0
#: The states each side must pass through, in order, for a recovery.
RECOVERED = ["postcopy-active", "postcopy-paused", "postcopy-recover", "postcopy-active",
             "completed"]


def port_of(info: dict[str, Any]) -> int | None:
    """The tcp port a destination listens on, from its ``query-migrate``."""
    for addr in info.get("socket-address", []) or []:
        if addr.get("type") == "inet":
            return int(addr["port"])
    return None


@dataclass
class Broken:
    """A postcopy migration whose channel the harness has broken."""

    src: Side
    dst: Side
    proxy: Proxy
    src_since: int
    dst_since: int
    t_break: float

    def states(self) -> dict[str, list[str]]:
        return {"source": states_since(self.src.m, self.src_since),
                "destination": states_since(self.dst.m, self.dst_since)}


async def _postcopy_broken(rig: Rig) -> Broken:
    """Source -> proxy -> destination (tcp port 0), postcopy started after
    ``POSTCOPY_AFTER_SYNCS`` dirty syncs, the destination resumed on its
    ``postcopy-active`` and running; then ``proxy.break_()`` and both sides
    must report ``postcopy-paused``."""
    src = await rig.source(caps=POSTCOPY, params=POSTCOPY_PARAMS)
    dst = await rig.destination(caps=POSTCOPY, params=POSTCOPY_PARAMS)
    await dst.m.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    port = port_of(await dst.m.execute("query-migrate"))
    if port is None:
        raise HarnessError("destination did not report its listening port")
    proxy = await rig.proxy("127.0.0.1", port)
    dst_since = len(dst.m.events)
    t_migrate = time.monotonic()
    src_since = await start(src.m, proxy.uri)
    info, t_start = await start_postcopy_when_due(src.m, POSTCOPY_AFTER_SYNCS, STATE_TIMEOUT)
    syncs = info.get("ram", {}).get("dirty-sync-count", 0)
    if t_start is None or not postcopy_due(info, POSTCOPY_AFTER_SYNCS):
        raise HarnessError(f"source never made {POSTCOPY_AFTER_SYNCS} dirty syncs in "
                           f"'active' (status {info.get('status')}, syncs {syncs}, "
                           f"{info.get('error-desc', '')})")
    rig.figures["syncs_at_postcopy_start"] = syncs
    resumed = await resume_in_postcopy(dst.m, dst_since, STATE_TIMEOUT)
    if resumed is None:
        raise HarnessError(f"destination never reached postcopy-active "
                           f"(states {states_since(dst.m, dst_since)})")
    beats_at_cont = dst.hb.heartbeats
    # The destination pauses (rather than fails) only once it runs the guest.
    if await wait_resumed(dst.m, resumed.cont_since, STATE_TIMEOUT) is None:
        raise HarnessError(f"destination did not run after cont (status "
                           f"{await dst.m.status() if dst.m.alive else 'dead'})")
    t_running = time.monotonic()
    # Break at once: the running guest touches every page of its region, so
    # it faults the rest of RAM in from the source within a pass or two, and
    # a pause here let postcopy finish before the break (seen on 7.2 in CI).
    before = await src.m.execute("query-migrate")
    rig.figures["before_break"] = {
        "source_status": before.get("status"),
        "postcopy_requests": before.get("ram", {}).get("postcopy-requests"),
        "remaining": before.get("ram", {}).get("remaining"),
        "proxy_bytes_up": proxy.up, "proxy_bytes_down": proxy.down,
        "destination_heartbeats_since_cont": dst.hb.heartbeats - beats_at_cont}
    rig.add(CheckResult("broken-in-postcopy", before.get("status") == "postcopy-active",
                        f"source state when the channel was broken: {before.get('status')} "
                        f"({before.get('ram', {}).get('remaining')} bytes remaining)"))
    t_break = time.monotonic()
    broken = proxy.break_()
    log.info("migration channel broken (%s connections) in %s", broken, before.get("status"))
    rig.figures["connections_broken"] = broken
    rig.figures["timings_s"] = {"migrate_to_postcopy_start": round(t_start - t_migrate, 3),
                                "postcopy_start_to_dst_running": round(t_running - t_start, 3),
                                "dst_running_to_break": round(t_break - t_running, 3)}
    for side, since in ((src, src_since), (dst, dst_since)):
        got = await side.m.wait_event(lambda e: is_migration(e, "postcopy-paused", *TERMINAL),
                                      STATE_TIMEOUT, since)
        state = None if got is None else got[1]["data"]["status"]
        who = "source" if side is src else "destination"
        rig.add(CheckResult(f"{who}-postcopy-paused", state == "postcopy-paused",
                            f"{who} after the break: {state} "
                            f"(states {states_since(side.m, since)})"))
        if got is not None:
            rig.figures["timings_s"][f"break_to_{who}_paused"] = round(got[0] - t_break, 3)
    return Broken(src, dst, proxy, src_since, dst_since, t_break)


async def _still_paused(rig: Rig, b: Broken, hold: float, name: str) -> bool:
    """After ``hold`` seconds without recovery both sides are still paused.
    (A deliberate hold, not a wait for a condition: nothing must happen.)"""
    await asyncio.sleep(hold)
    states = {}
    for who, side in (("source", b.src), ("destination", b.dst)):
        states[who] = (await side.m.execute("query-migrate")).get("status")
    ok = states == {"source": "postcopy-paused", "destination": "postcopy-paused"}
    rig.add(CheckResult(name, ok, f"after {hold:.1f} s without recovery: source "
                        f"{states['source']}, destination {states['destination']}",
                        {"hold_s": hold, **states}))
    return ok


@scenario("postcopy-recover",
          "break the channel during postcopy; migrate-recover and resume complete it",
          capabilities=("postcopy-ram",))
async def postcopy_recover(rig: Rig) -> None:
    """Break the migration channel (the harness's proxy) during postcopy: both
    sides pause; ``migrate-recover`` on a new destination port and ``migrate``
    with ``resume`` (through a fresh proxy) complete it; RAM exact (but the
    bytes the running destination guest rewrote) and the destination guest
    runs on."""
    b = await _postcopy_broken(rig)
    src, dst = b.src, b.dst
    if not all(c.passed for c in rig.checks):
        rig.figures["states"] = b.states()
        return
    await _still_paused(rig, b, PAUSE_HOLD, "paused-without-recovery")
    beats_paused = dst.hb.heartbeats
    # The destination listens again (port 0: read it back like the first time).
    await dst.m.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    info = await dst.m.execute("query-migrate")
    port = port_of(info)
    # 7.2 sends a MIGRATION 'setup' event here (qemu_start_incoming_migration
    # emits it unconditionally) while the state stays postcopy-paused.
    rig.figures["destination_after_migrate_recover"] = {"status": info.get("status"),
                                                        "port_reported": port is not None}
    if port is None:  # not reported: fall back to a port chosen here
        port = free_port()
        await dst.m.execute("migrate-recover", {"uri": f"tcp:127.0.0.1:{port}"})
    proxy2 = await rig.proxy("127.0.0.1", port)
    # The resumed channel runs at max-postcopy-bandwidth: let it finish quickly.
    await src.m.execute("migrate-set-parameters", {"max-postcopy-bandwidth": FAST})
    t_resume = time.monotonic()
    await start(src.m, proxy2.uri, resume=True)
    status = await wait_state(src.m, TERMINAL, b.src_since)
    dst_status = await wait_state(dst.m, TERMINAL, b.dst_since)
    t_done = time.monotonic()
    rig.figures["states"] = states = b.states()
    rig.add(judge_state("source-completed", status, "completed", states["source"]))
    rig.add(judge_state("destination-completed", dst_status, "completed",
                        states["destination"]))
    rig.add(judge_sequence("source-recovered", states["source"], RECOVERED))
    rig.add(judge_sequence("destination-recovered", states["destination"], RECOVERED))
    timings = rig.figures["timings_s"]
    for who, side, since in (("source", src, b.src_since), ("destination", dst, b.dst_since)):
        paused = event_time(side.m, "postcopy-paused", since)
        # The first state after postcopy-paused ends the pause.
        after = [t for t, e in side.m.events[since:] if e.get("event") == "MIGRATION"
                 and paused is not None and t > paused
                 and e["data"]["status"] != "postcopy-paused"]
        if paused is not None and after:
            timings[f"{who}_paused"] = round(after[0] - paused, 3)
    timings["resume_to_completed"] = round(t_done - t_resume, 3)
    timings["break_to_completed"] = round(t_done - b.t_break, 3)
    rig.figures["proxies"] = {"broken": b.proxy.figures(), "recovery": proxy2.figures()}
    rig.figures["stderr"] = {"src": src.stderr()[-300:], "dst": dst.stderr()[-300:]}
    rig.add(CheckResult("recovery-channel-used", proxy2.up > 0,
                        f"{proxy2.up} bytes source->destination and {proxy2.down} back over "
                        "the recovery channel"))
    if status != "completed" or dst_status != "completed":
        return
    info = await src.m.execute("query-migrate")
    rig.figures["postcopy_requests"] = info.get("ram", {}).get("postcopy-requests")
    rig.figures["destination_heartbeats"] = {"while_paused": beats_paused,
                                             "at_completion": dst.hb.heartbeats}
    # The destination guest was resumed during postcopy and must run on.
    alive = await source_running(dst)
    alive.name = "destination-running"
    alive.summary = alive.summary.replace("source", "destination")
    rig.add(alive)
    await dst.m.execute("stop")
    wl = dst.target.workload
    explained = Explained(np.arange(wl.region_base, wl.region_base + wl.region_size, PAGE),
                          "the destination guest ran during postcopy and rewrote the first "
                          "byte of its region's pages; those bytes are judged by the guest "
                          "invariant")
    rig.add(check_ram(src.paths.ram, dst.paths.ram, x86_layout(dst.target.memory), explained))
    guest = dst.invariant()
    guest.name = "destination-guest"
    rig.add(guest)


@scenario("postcopy-break-unrecovered",
          "negative control: the channel broken in postcopy and not recovered stays paused",
          capabilities=("postcopy-ram",))
async def postcopy_unrecovered(rig: Rig) -> None:
    """Negative control of postcopy-recover: the channel is broken during
    postcopy and NOT recovered; both sides stay ``postcopy-paused``, the
    destination never completes (bounded wait), and the completion verdict
    used by postcopy-recover fails on it."""
    b = await _postcopy_broken(rig)
    if not all(c.passed for c in rig.checks):
        return
    await _still_paused(rig, b, UNRECOVERED_HOLD, "still-paused")
    dst_status = await wait_state(b.dst.m, TERMINAL, b.dst_since, 0.1)
    rig.figures["states"] = states = b.states()
    verdict = judge_state("destination-completed", dst_status, "completed",
                          states["destination"])
    rig.add(CheckResult("not-completed-without-recovery", not verdict.passed,
                        f"completion verdict without recovery: {verdict.summary}",
                        verdict.figures))
    rig.add(CheckResult("no-terminal-state",
                        not any(s in TERMINAL for s in states["source"] + states["destination"]),
                        f"source {states['source']}, destination {states['destination']}"))
    rig.figures["stderr"] = {"src": b.src.stderr()[-300:], "dst": b.dst.stderr()[-300:]}
    # A destination paused in postcopy does not answer 'quit' (its vCPUs wait
    # on missing pages): end it by its PID rather than wait out Machine.close.
    assert b.dst.m.proc is not None
    os.kill(b.dst.m.proc.pid, signal.SIGKILL)
    rig.figures["destination_exit"] = await b.dst.m.wait_exit(5.0)
