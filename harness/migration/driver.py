"""Driving one migration from ``migrate`` to a terminal state.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from qemu.qmp import ExecuteError

from harness.errors import BuildError
from harness.qemu.build import QemuBuild
from harness.qemu.machine import Event, Machine

SAMPLE_PERIOD = 0.1
POSTCOPY_AFTER_SYNCS = 2
DEST_SETTLE_TIMEOUT = 30.0
TERMINAL = ("completed", "failed", "cancelled")

#: Capabilities the harness turns on for every cell: without ``events`` QEMU
#: emits no MIGRATION events (migration/migration.c, migrate_set_state ->
#: qapi_event_send_migration is gated by migrate_use_events() in 7.2).
BASE_CAPABILITIES = {"events": True}



def is_migration(ev: Event, *states: str) -> bool:
    return ev.get("event") == "MIGRATION" and ev["data"]["status"] in states


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
    #: When the destination was resumed during postcopy (None: it was not).
    t_dst_resumed: float | None = None
    t_postcopy_started: float | None = None
    #: Dirty-bitmap syncs done when the driver asked for postcopy.
    postcopy_after_syncs: int | None = None
    #: release-ram: a copy of the source's RAM taken in pre-switchover, and how
    #: many bytes its RAM file held then.
    ram_at_switchover: Path | None = None
    ram_allocated_at_switchover: int = 0
    t_pre_switchover: float | None = None
    #: Seconds the harness itself kept the source in ``pre-switchover``: from
    #: the event's arrival to the reply to ``migrate-continue`` (the
    #: ``at_pre_switchover`` work, e.g. release-ram's copy of the source RAM,
    #: plus one QMP round trip).  QEMU counts this wait in its ``downtime``
    #: (the VM is already stopped: migration/migration.c, migration_maybe_pause
    #: runs after the stop in postcopy_start and migration_completion), so the
    #: downtime check takes it off QEMU's figure rather than blaming QEMU.
    source_held_s: float = 0.0
    #: When the source reported its terminal state (host monotonic time).
    t_source_done: float | None = None
    error: str = ""

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


async def run_migration(src: Machine, dst: Machine, uri: str, caps: dict[str, bool],
                        timeout: float, t0: float, restore_uri: str | None = None,
                        postcopy_after: int = POSTCOPY_AFTER_SYNCS,
                        at_pre_switchover: Callable[[], Awaitable[None]] | None = None
                        ) -> MigrationRun:
    """Migrate ``src`` to ``dst`` (already listening on ``uri``, or, with
    ``restore_uri``, told to read the saved stream from there once the source
    has finished writing it).

    Returns when the source reached a terminal state, or after ``timeout``
    seconds with ``status`` set to the state it was still in (the caller
    cancels).  The destination is left paused when the migration completed.
    ``postcopy_after`` is the switch-over point (dirty-bitmap syncs) with
    postcopy-ram; ``at_pre_switchover`` runs while the source is held in
    ``pre-switchover`` (its RAM still and not yet sent in full).
    """
    run = MigrationRun(uri=uri, caps=caps)
    src_since, dst_since = len(src.events), len(dst.events)
    postcopy = caps.get("postcopy-ram", False)
    pause = caps.get("pause-before-switchover", False)
    await src.execute("migrate", {"uri": uri})
    tasks = [asyncio.ensure_future(_sampler(src, run, postcopy, t0, postcopy_after))]
    if postcopy:
        tasks.append(asyncio.ensure_future(_resume_in_postcopy(dst, run, dst_since, timeout)))
    deadline = time.monotonic() + timeout
    try:
        since = src_since
        while True:
            wanted = TERMINAL + (("pre-switchover",) if pause else ())
            got = await src.wait_event(lambda e: is_migration(e, *wanted),
                                       max(0.0, deadline - time.monotonic()), since)
            if got is None:
                break
            since = src.events.index(got) + 1
            status = got[1]["data"]["status"]
            if status == "pre-switchover":
                run.t_pre_switchover = got[0]
                if at_pre_switchover is not None:
                    await at_pre_switchover()
                await src.execute("migrate-continue", {"state": "pre-switchover"})
                run.source_held_s += time.monotonic() - got[0]
                continue
            run.status = status
            run.t_source_done = got[0]
            break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    run.source_states = src.migration_states()
    if not run.status:
        run.info = await src.execute("query-migrate") if src.alive else {}
        run.status = str(run.info.get("status", "unknown"))
        return run
    if not run.completed:
        run.info = await src.execute("query-migrate")
        run.error = str(run.info.get("error-desc", "no error given"))
        return run
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
        return run
    if run.t_dst_ready is None:
        run.t_dst_ready = dst_done[0]
    run.info = await final_info(src)
    return run


async def _sampler(src: Machine, run: MigrationRun, postcopy: bool, t0: float,
                   postcopy_after: int = POSTCOPY_AFTER_SYNCS) -> None:
    while True:
        try:
            info = await src.execute("query-migrate")
        except ExecuteError:
            return
        run.samples.append(_sample(info, time.monotonic() - t0))
        status = info.get("status")
        if status in TERMINAL:
            return
        syncs = info.get("ram", {}).get("dirty-sync-count", 0)
        if postcopy and run.t_postcopy_started is None and status == "active" \
                and syncs >= postcopy_after:
            run.postcopy_after_syncs = syncs
            run.t_postcopy_started = time.monotonic()
            await src.execute("migrate-start-postcopy")
        await asyncio.sleep(SAMPLE_PERIOD)


async def _resume_in_postcopy(dst: Machine, run: MigrationRun, since: int,
                              timeout: float) -> None:
    got = await dst.wait_event(lambda e: is_migration(e, "postcopy-active"), timeout, since)
    if got is None:
        return
    run.t_dst_ready = got[0]
    run.t_dst_resumed = time.monotonic()
    await dst.execute("cont")


async def settled_status(m: Machine, timeout: float = DEST_SETTLE_TIMEOUT,
                         leaving: str = "inmigrate") -> str:
    """The run state once it has left ``leaving`` (a transitional state)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await m.status()
        if status != leaving or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.01)


async def final_info(src: Machine) -> dict[str, Any]:
    """query-migrate once its figures are filled in: QEMU can report
    'completed' while downtime and total-time are still 0 for a moment
    (migration/migration.c: the figures are computed in migration_calculate_complete
    after the state change)."""
    info: dict[str, Any] = {}
    for _ in range(50):
        info = await src.execute("query-migrate")
        if info.get("total-time") and "downtime" in info:
            break
        await asyncio.sleep(0.02)
    return info


async def cancel(src: Machine) -> str | None:
    """``migrate_cancel`` and wait for the terminal state it leads to."""
    since = len(src.events)
    try:
        await src.execute("migrate_cancel")
    except ExecuteError:
        return None
    got = await src.wait_event(lambda e: is_migration(e, *TERMINAL), 10.0, since)
    return None if got is None else str(got[1]["data"]["status"])


async def configure(m: Machine, build: QemuBuild, caps: dict[str, bool],
                     params: dict[str, Any]) -> None:
    """Apply capabilities and parameters, then read them back: a silent mismatch
    would make every later verdict meaningless."""
    side = "source" if m.role == "src" else "destination"
    try:
        await m.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": k, "state": v} for k, v in caps.items()]})
    except ExecuteError as exc:
        raise BuildError(build.name, f"{build.version_text} refused capabilities {caps} on the "
                         f"{side}: {exc}") from exc
    if params:
        try:
            await m.execute("migrate-set-parameters", params)
        except ExecuteError as exc:
            raise BuildError(build.name, f"{build.version_text} refused parameters {params} on "
                             f"the {side}: {exc}") from exc
    got_caps = {c["capability"]: c["state"] for c in await m.execute("query-migrate-capabilities")}
    got_params = await m.execute("query-migrate-parameters")
    wrong = [f"capability {k}={got_caps.get(k)!r} (set {v!r})" for k, v in caps.items()
             if got_caps.get(k) != v]
    wrong += [f"parameter {k}={got_params.get(k)!r} (set {v!r})" for k, v in params.items()
              if got_params.get(k) != v]
    if wrong:
        raise BuildError(build.name, f"read-back mismatch on the {side}: {'; '.join(wrong)}")
