"""QMP commands QEMU must refuse, and refusing must change nothing:
``migrate-set-capabilities`` and a second ``migrate`` during a migration,
``migrate-start-postcopy`` without postcopy, ``migrate-incoming`` twice,
``migrate`` from a destination, an unknown URI scheme.  After each refusal
the migration (or the VM) carries on as if it had not been asked."""
from __future__ import annotations

import logging

from harness.migration.driver import start_until
from harness.migration.waits import TERMINAL, states_since, wait_state
from harness.results import CheckResult
from harness.scenarios.registry import scenario
from harness.scenarios.rig import FAST, SLOW, Rig, Side

log = logging.getLogger(__name__)


async def _converge(rig: Rig, src: Side, dst: Side, since: int) -> None:
    """The refusals changed nothing: the migration held ``active`` at SLOW
    (started at event ``since``) must, once let go, complete with the RAM
    exact.  migrate-set-parameters is allowed while active."""
    log.info("raising max-bandwidth so the migration converges")
    await src.m.execute("migrate-set-parameters", {"max-bandwidth": FAST})
    status = await wait_state(src.m, TERMINAL, since)
    await rig.judge_completed(src, dst, status, states_since(src.m, since))


@scenario("refused-while-active",
          "migrate-set-capabilities and a second migrate during a migration: refused")
async def refused_while_active(rig: Rig) -> None:
    """During an active migration ``migrate-set-capabilities`` and a second
    ``migrate`` are refused and change nothing; the migration then completes."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    dst = await rig.destination()
    before = await src.m.execute("query-migrate-capabilities")
    since = await rig.migrate_until(src, dst, "active")
    await rig.expect_refusal("caps-while-active", src.m, "migrate-set-capabilities",
                             {"capabilities": [{"capability": "xbzrle", "state": True}]})
    await rig.expect_refusal("migrate-while-active", src.m, "migrate",
                             {"uri": f"unix:{rig.workdir / 'other.sock'}"})
    after = await src.m.execute("query-migrate-capabilities")
    rig.add(CheckResult("capabilities-unchanged", before == after,
                        "capabilities unchanged" if before == after else
                        f"capabilities changed: {before} -> {after}"))
    await _converge(rig, src, dst, since)


@scenario("postcopy-without-capability",
          "migrate-start-postcopy with postcopy-ram off, idle and during a migration")
async def postcopy_without_cap(rig: Rig) -> None:
    """``migrate-start-postcopy`` with postcopy-ram off, idle and during a migration."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    await rig.expect_refusal("postcopy-disabled", src.m, "migrate-start-postcopy")
    dst = await rig.destination()
    uri = await rig.listen(dst)
    since, _ = await start_until(src.m, uri, "active")
    check = await rig.expect_refusal("postcopy-disabled", src.m, "migrate-start-postcopy")
    check.name = "postcopy-disabled-while-active"
    await _converge(rig, src, dst, since)


@scenario("destination-refusals",
          "migrate-incoming twice, and migrate from a VM in inmigrate: refused")
async def destination_refusals(rig: Rig) -> None:
    """On a destination: ``migrate-incoming`` twice, and ``migrate`` from a VM in
    ``inmigrate``; the first ``migrate-incoming`` still works afterwards."""
    src = await rig.source()
    dst = await rig.destination()
    uri = await rig.listen(dst)
    await rig.expect_refusal("incoming-twice", dst.m, "migrate-incoming",
                             {"uri": f"unix:{rig.workdir / 'second.sock'}"})
    await rig.expect_refusal("migrate-from-inmigrate", dst.m, "migrate",
                             {"uri": f"unix:{rig.workdir / 'back.sock'}"})
    run = await rig.migrate(src, dst, uri)
    await rig.judge_completed(src, dst, run.status, run.states)


@scenario("unknown-uri-scheme", "migrate and migrate-incoming with a scheme QEMU does not know")
async def unknown_scheme(rig: Rig) -> None:
    """``migrate`` and ``migrate-incoming`` with a scheme QEMU does not know."""
    src = await rig.source()
    await rig.expect_refusal("migrate-bad-scheme", src.m, "migrate", {"uri": "bogus:1234"})
    info = await src.m.execute("query-migrate")
    rig.figures["query_migrate_after_bad_scheme"] = info.get("status")
    dst = await rig.destination()
    await rig.expect_refusal("incoming-bad-scheme", dst.m, "migrate-incoming",
                             {"uri": "bogus:1234"})
    await rig.source_running(src)
    await rig.source_invariant(src)
    await rig.migrate_ok(src)
