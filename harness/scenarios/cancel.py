"""``migrate_cancel`` in each state a user can cancel in: ``setup`` (still
connecting), ``active`` (RAM being sent) and ``pre-switchover`` (guest already
stopped).  The migration must end ``cancelled``, the source run on, and a
fresh migration then succeed with the RAM intact."""
from __future__ import annotations

import logging
import socket
from typing import Any

from harness.migration.driver import STATE_TIMEOUT, cancel, start
from harness.migration.waits import TERMINAL, states_since, wait_state
from harness.results import CheckResult
from harness.scenarios.registry import scenario
from harness.scenarios.rig import SLOW, Rig, Side
from harness.scenarios.verdicts import judge_state

log = logging.getLogger(__name__)


def stuck_listener() -> tuple[list[socket.socket], int]:
    """A loopback port whose accept queue is full: a connect() to it stays
    pending (the kernel drops the SYNs and the client retransmits), which
    holds a migration in ``setup``."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = int(lst.getsockname()[1])
    fillers = []
    for _ in range(2):  # backlog 0 still admits one; two make sure
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    return [lst, *fillers], port


async def _cancel(rig: Rig, src: Side, since: int) -> None:
    status = await cancel(src.m, since, STATE_TIMEOUT)
    rig.add(judge_state("cancelled", status, "cancelled", states_since(src.m, since)))


@scenario("cancel-in-setup", "migrate_cancel while the source is still connecting (setup)")
async def cancel_setup(rig: Rig) -> None:
    """``migrate_cancel`` while the source is still in ``setup`` (connecting)."""
    src = await rig.source()
    socks, port = stuck_listener()
    try:
        since = await start(src.m, f"tcp:127.0.0.1:{port}")
        info = await src.m.execute("query-migrate")
        rig.figures["state_at_cancel"] = info.get("status")
        rig.add(CheckResult("in-setup", info.get("status") == "setup",
                            f"state before cancel: {info.get('status')}"))
        # The connection attempt is still pending; close the listener so it
        # ends (RST on the next SYN retransmission) whatever QEMU waits for.
        early = await cancel(src.m, since, 1.0)
        rig.figures["terminal_before_listener_closed"] = early
        log.info("cancel in setup: %s before the listener closed", early or "no end state")
    finally:
        for s in socks:
            s.close()
    status = early or await wait_state(src.m, TERMINAL, since)
    rig.figures["states"] = states_since(src.m, since)
    rig.add(judge_state("cancelled", status, "cancelled", states_since(src.m, since)))
    await rig.source_running(src)
    # QEMU 10.0 refuses the next migrate for a moment ("duplicate yank
    # instance", see harness.migration.driver.start).  The retry lets the
    # scenario go on to prove the source can still migrate, but the refusal is
    # judged: 'cancelled' is a terminal MigrationStatus (qapi/migration.json),
    # so the source must be free to migrate at once.  A build that is not is
    # shown by this check (known issue cancel-in-setup-next-migrate-refused),
    # never passed over by the retry.
    refusals: list[dict[str, Any]] = []
    rig.figures["next_migrate_refusals"] = refusals
    await rig.migrate_ok(src, refusals=refusals)
    rig.add(CheckResult(
        "migrate-after-cancel", not refusals,
        "the next migrate was accepted at once" if not refusals else
        f"after 'cancelled' the next migrate was refused {len(refusals)} time(s) (first: "
        f"{refusals[0]['text']}) until the stale connection attempt ended",
        {"refusals": len(refusals)}))


@scenario("cancel-in-active", "migrate_cancel while RAM is being sent (active)")
async def cancel_active(rig: Rig) -> None:
    """``migrate_cancel`` while RAM is being sent (throttled so it stays active)."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    dst = await rig.destination()
    since = await rig.migrate_until(src, dst, "active", " before cancel")
    await _cancel(rig, src, since)
    # The destination sees the stream end and gives up (it exits by default).
    rig.figures["destination_after_cancel"] = {"exit": await dst.m.wait_exit(5.0),
                                               "stderr": dst.stderr()[-300:]}
    await rig.source_running(src)
    await rig.migrate_ok(src)


@scenario("cancel-in-pre-switchover",
          "migrate_cancel while the source waits in pre-switchover, guest stopped",
          capabilities=("pause-before-switchover",))
async def cancel_pre_switchover(rig: Rig) -> None:
    """``pause-before-switchover`` on both sides; cancel while the source waits
    in ``pre-switchover`` with the guest stopped."""
    caps = {"pause-before-switchover": True}
    src = await rig.source(caps=caps)
    dst = await rig.destination(caps=caps)
    since = await rig.migrate_until(src, dst, "pre-switchover", " before cancel")
    paused = await src.m.status()
    rig.figures["source_status_in_pre_switchover"] = paused
    rig.add(CheckResult("source-stopped-in-pre-switchover", paused != "running",
                        f"source run state in pre-switchover: {paused}"))
    await _cancel(rig, src, since)
    await dst.m.wait_exit(5.0)
    await rig.source_running(src)
    await src.m.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": False}]})
    await rig.migrate_ok(src)
