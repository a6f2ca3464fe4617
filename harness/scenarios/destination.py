"""The destination is not there, or dies: ``migrate`` to a refused tcp port or a
missing unix socket, and a destination killed mid-migration.  The source must
report the failure with the right error and run on with its RAM intact."""
from __future__ import annotations

import logging
import os
import signal

from qemu.qmp import ExecuteError

from harness.migration.driver import start
from harness.migration.waits import TERMINAL, states_since, wait_state
from harness.results import CheckResult
from harness.scenarios.registry import scenario
from harness.scenarios.rig import SLOW, Rig, Side, free_port
from harness.scenarios.verdicts import judge_state

log = logging.getLogger(__name__)


async def _bad_destination(rig: Rig, src: Side, uri: str, name: str) -> None:
    """``migrate`` to a bad URI: either refused at once or ``failed`` with an
    error-desc matching ``ERRORS[name]``; then the source runs on and can
    still migrate."""
    try:
        since = await start(src.m, uri)
    except ExecuteError as exc:  # refused synchronously: the error is the reply
        rig.expect_text(name, str(exc))
        rig.add(CheckResult("migration-failed", True, f"migrate refused: {exc}"))
    else:
        status = await wait_state(src.m, TERMINAL, since)
        info = await src.m.execute("query-migrate")
        rig.add(judge_state("migration-failed", status, "failed", states_since(src.m, since)))
        rig.figures["query_migrate_status"] = info.get("status")
        rig.expect_text(name, info.get("error-desc"))
    await rig.source_running(src)
    await rig.migrate_ok(src)


@scenario("bad-destination-tcp-refused", "migrate to a loopback tcp port nothing listens on")
async def bad_destination_tcp(rig: Rig) -> None:
    """``migrate`` to a loopback port nothing listens on."""
    src = await rig.source()
    await _bad_destination(rig, src, f"tcp:127.0.0.1:{free_port()}", "tcp-refused")


@scenario("bad-destination-unix-missing", "migrate to a unix socket path that does not exist")
async def bad_destination_unix(rig: Rig) -> None:
    """``migrate`` to a unix socket path that does not exist."""
    src = await rig.source()
    await _bad_destination(rig, src, f"unix:{rig.workdir / 'no-such.sock'}", "unix-missing")


@scenario("destination-killed", "SIGKILL the destination while RAM is being sent")
async def destination_killed(rig: Rig) -> None:
    """SIGKILL the destination (by its PID) while RAM is being sent."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    dst = await rig.destination()
    since = await rig.migrate_until(src, dst, "active", " before the kill")
    assert dst.m.proc is not None
    log.info("killing %s (pid %d)", dst.m.role, dst.m.proc.pid)
    os.kill(dst.m.proc.pid, signal.SIGKILL)
    status = await wait_state(src.m, TERMINAL, since)
    info = await src.m.execute("query-migrate")
    rig.add(judge_state("migration-failed", status, "failed", states_since(src.m, since)))
    desc = info.get("error-desc")
    rig.figures["errors"]["destination-killed"] = {"text": desc}
    rig.add(CheckResult("error-reported", bool(desc), f"error-desc: {desc}"))
    await rig.source_running(src)
    await rig.migrate_ok(src)
