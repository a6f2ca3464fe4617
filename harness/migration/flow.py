"""The steps of one migration cell, and nothing else.

One small function per phase; each phase's name is its key in results.json's
``phases`` (in this order):

- ``launch``: source (running its workload) and destination (``-S -incoming
  defer``; no ``-S`` with ``dst-start: autostart``, when QEMU starts the guest
  itself and the driver stops it again on its ``completed``: the
  ``autostart`` check) started together;
- ``devices`` (cells across two builds): the devices each VM really has, for
  the static VMState check shown beside the cell;
- ``configure``: capabilities and parameters on both sides, read back;
- ``warmup``: the source guest gets going (the workload says how);
- ``cancel-retry`` (mode cancel-retry): a first attempt cancelled midway,
  then a fresh destination;
- ``migrate``: follow MIGRATION events to a terminal state (never taking
  ``setup`` for done), then settle both sides' run states;
- ``verify``: with both sides stopped, RAM, guest, behaviour, CPU-state and
  coverage evidence (harness.migration.verify);
- ``liveness``: ``cont`` the destination and watch the guest run on; then the
  downtime figures;
- ``teardown``: end both QEMUs.

The flow collects evidence and never judges it: every verdict comes from a
function in ``harness.checks`` (``converged`` and ``cancel-retry`` from
checks.converged, ``liveness`` from checks.liveness, ``downtime`` from
checks.downtime, ...) and enters the evidence through
:meth:`CellContext.record`, which applies the cell's ``expect-fail`` marking.
What differs between guests is the workload strategy's business
(harness.guest.workload): the flow never asks which kind it has.  A cell that
cannot go on (a QEMU died, run states that would make the checks meaningless)
ends with :class:`CellFailure`, whose reason becomes the cell's.

Tests of the harness itself act on a real cell through :class:`CellHooks`.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from harness.cell import Cell
from harness.checks.converged import (CancelEvidence, check_cancel_retry, check_converged,
                                      migration_figures, ran_out_of_time)
from harness.checks.downtime import (DowntimeEvidence, check_downtime, check_downtime_measures_stop,
                                     check_downtime_plausible)
from harness.checks.dststart import AutostartEvidence, check_autostart
from harness.checks.modes import check_background_snapshot
from harness.checks.sides import allocated_bytes, check_late_block_activate, image_locked
from harness.checks.vmstate_static import (FIGURE_KEY, builds_differ, static_beside_live,
                                           walk_devices)
from harness.errors import BuildError, HarnessError
from harness.guest.kinds import workload_for
from harness.guest.workload import WARMUP_TIMEOUT, GuestProgressError
from harness.migration.context import (CellContext, CellFailure, CellHooks, Evidence, Inject,
                                       Progress)
from harness.migration.driver import (POSTCOPY_AFTER_SYNCS, MigrationRun, cancel, configure,
                                      run_migration, settled_status, start)
from harness.migration.launch import prepare_machine
from harness.migration.modes import CANCEL_RETRY, postcopy_after, side_args, side_caps
from harness.migration.placed import (open_sides, place_machine, placement_problem,
                                      region_reader, remove_dirs, tcp_address,
                                      timing_uncertainty_ms)
from harness.migration.tls import creds_args
from harness.migration.transports import (SAVE_RESTORE, incoming_uri, save_restore_uris,
                                          stream_cap)
from harness.migration.verify import verify_paused
from harness.migration.waits import event_time, wait_info
from harness.qemu.build import QemuBuild, discover
from harness.qemu.cmdline import MachinePaths
from harness.qemu.machine import Machine
from harness.qemu.machines import common_machine_type
from harness.results import ERROR, FAILED, SKIPPED, CellResult, CheckResult, judge
from harness.run.rundir import runtime_dir
from harness.units import MiB

__all__ = ["CellFailure", "CellHooks", "Evidence", "Inject", "Progress", "preflight",
           "run_cell", "run_cell_async", "WARMUP_TIMEOUT", "CANCEL_AFTER_TIMEOUT"]

log = logging.getLogger(__name__)

#: How long the first attempt of a cancel-retry cell may take to get going.
CANCEL_AFTER_TIMEOUT = 30.0
#: How often that first attempt is looked at (``query-migrate``) until then.
CANCEL_POLL_INTERVAL = 0.02
#: The first attempt's ``max-bandwidth`` (bytes/s): slow enough that it is
#: still ``active`` whenever the cancel lands (see :func:`_cancel_first`).
CANCEL_FIRST_BANDWIDTH = 32 * MiB


def preflight(cell: Cell, src: QemuBuild, dst: QemuBuild) -> str | None:
    """A skip reason when this host or build cannot run the cell; raise on bad input."""
    wl = cell.target.workload
    problem = placement_problem(cell)
    if problem:
        raise HarnessError(f"cell {cell.id} ({cell.origin}): {problem}")
    if wl.region_base + wl.region_size > cell.target.memory:
        raise HarnessError(f"cell {cell.id} ({cell.origin}): the guest's region ends at "
                           f"{wl.region_base + wl.region_size:#x}, beyond its "
                           f"{cell.target.memory >> 20} MiB of RAM")
    for side, build in (("source", src), ("destination", dst)):
        if build.missing:
            if build.spec.required:
                raise BuildError(build.name, f"required build is missing: {build.missing}")
            return f"{side} build '{build.name}' unavailable: {build.missing}"
        if build.arch != cell.target.arch:
            return f"{side} build '{build.name}' is {build.arch}, cell needs {cell.target.arch}"
        if cell.transport == "file" and build.version[:2] < (8, 2):
            return (f"{side} build '{build.name}' {build.version_text} has no file: migration "
                    "URI (migration/file.c came in QEMU 8.2)")
        problem = build.accel_problems.get(cell.target.accel, "not compiled into this binary")
        if problem:
            return f"accelerator {cell.target.accel} unusable with '{build.name}': {problem}"
        if build.resolve_machine(cell.target.machine) is None:
            return f"machine type '{cell.target.machine}' unknown to '{build.name}' {build.version_text}"
        for what, wanted, known in (("capability", cell.capabilities, list(build.capabilities)),
                                    ("parameter", cell.parameters, sorted(build.parameters))):
            unknown = [k for k, _ in wanted if k not in known]
            if unknown:
                raise BuildError(build.name, f"{build.version_text} has no migration {what} "
                                 f"{', '.join(map(repr, unknown))} (cell {cell.id}, "
                                 f"{cell.origin}); it supports: {', '.join(known)}")
    return None


def run_cell(cell: Cell, logdir: Path, progress: Progress | None = None,
             inject: Inject | None = None, hooks: CellHooks | None = None) -> CellResult:
    """Synchronous facade: run one cell to a CellResult.  Never raises for a cell
    failure; only for interruption (KeyboardInterrupt / Interrupted).

    ``hooks`` are for the harness's own tests (see :class:`CellHooks`);
    ``inject`` is shorthand for ``CellHooks(inject=...)``."""
    return asyncio.run(run_cell_async(cell, logdir, progress, inject, hooks))


async def run_cell_async(cell: Cell, logdir: Path, progress: Progress | None = None,
                         inject: Inject | None = None,
                         hooks: CellHooks | None = None) -> CellResult:
    """:func:`run_cell` for callers already in an event loop."""
    hooks = hooks or CellHooks()
    if inject is not None:
        hooks = replace(hooks, inject=inject)
    progress = progress or (lambda _: None)
    logdir.mkdir(parents=True, exist_ok=True)
    result = CellResult(id=cell.id, verdict=ERROR, inputs=cell.inputs(), logdir=str(logdir))
    t0 = time.monotonic()
    try:
        src_build = discover(cell.src_build)
        dst_build = discover(cell.dst_build)
        result.builds = {"source": src_build.brief(), "destination": dst_build.brief()}
        skip = preflight(cell, src_build, dst_build)
        if skip:
            log.info("skipped: %s", skip)
            result.verdict, result.reason = SKIPPED, skip
            return result
        evidence = Evidence()
        try:
            await asyncio.wait_for(
                _flow(cell, src_build, dst_build, logdir, evidence, progress, hooks),
                cell.timeout * 2 + WARMUP_TIMEOUT + 60)
            result.verdict, result.reason = judge(evidence.checks)
        except asyncio.TimeoutError:
            result.verdict = ERROR
            result.reason = (f"cell watchdog expired after {time.monotonic() - t0:.0f} s "
                             f"(phases done: {', '.join(evidence.phases) or 'none'})")
        except CellFailure as exc:
            log.warning("cell ended early (%s): %s", exc.verdict, exc)
            result.verdict, result.reason = exc.verdict, str(exc)
        result.phases = {k: round(v, 4) for k, v in evidence.phases.items()}
        result.figures = evidence.figures
        result.checks = evidence.checks
        # Advisory: shown beside the live verdict, never judged (see vmstate_static).
        devices = evidence.figures.get("vm_devices") or {}
        static = await static_beside_live(src_build, dst_build, evidence.figures.get("machine_type"),
                                          devices.get("source"), result,
                                          dst_devices=devices.get("destination"))
        if static is not None:
            result.figures[FIGURE_KEY] = static
    except HarnessError as exc:
        result.verdict, result.reason = ERROR, str(exc)
    except ExecuteError as exc:
        result.verdict, result.reason = ERROR, f"unexpected QMP error: {exc}"
    finally:
        result.duration = round(time.monotonic() - t0, 3)
    return result


async def _flow(cell: Cell, src_build: QemuBuild, dst_build: QemuBuild, logdir: Path,
                evidence: Evidence, progress: Progress, hooks: CellHooks) -> None:
    """The phases in order, with every QEMU ended and the runtime folder
    removed whatever happens."""
    workdir = runtime_dir()
    # The machines' logs and the migration samples count from here.
    ctx = CellContext(cell=cell, src_build=src_build, dst_build=dst_build, workdir=workdir,
                      logdir=logdir, t0=time.monotonic(),
                      workload=workload_for(cell, workdir, logdir), progress=progress,
                      hooks=hooks, evidence=evidence)
    try:
        ctx.machine_type = _common_machine_type(cell, src_build, dst_build)
        ctx.figures["machine_type"] = ctx.machine_type
        async with ctx.stack:
            ctx.stack.push_async_callback(ctx.workload.close)
            if cell.placed:
                await _open_hosts(ctx)
            await _launch(ctx)
            if builds_differ(src_build, dst_build):
                await _devices(ctx)
            await _configure(ctx)
            await _warmup(ctx)
            if cell.mode == CANCEL_RETRY:
                await _cancel_retry(ctx)
            run = await _migrate(ctx)
            if run is None:
                return
            await _verify(ctx, run)
            await _liveness_and_downtime(ctx, run)
            await _teardown(ctx)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- launch -----------------------------------------------------------------

async def _open_hosts(ctx: CellContext) -> None:
    """A placed cell's hosts (harness.migration.placed): connected, a folder
    for the cell on each remote one (removed when the cell ends), clocks read."""
    ctx.sides = sides = await open_sides(ctx.cell, ctx.workdir)
    ctx.stack.push_async_callback(remove_dirs, sides)
    ctx.figures["hosts"] = sides.figures()
    if ctx.remote("dst"):
        ctx.workload.read_region = region_reader(sides.dst)


async def _prepare(ctx: CellContext, name: str, build: QemuBuild
                   ) -> tuple[Machine, MachinePaths]:
    """One QEMU, not started yet.  ``name`` is src, dst, or dst2 (the
    destination of a retried migration).  On a remote host its files are
    copied there and its paths are that host's."""
    role = "src" if name == "src" else "dst"
    incoming = role == "dst"
    extra = ctx.workload.machine_args(role)
    extra += side_args(ctx.caps, role, ctx.cell.seed, ctx.cell.fault)
    creds = ctx.params.get("tls-creds")
    if creds:
        # Across hosts the source checks the server certificate against the
        # destination's address.
        addresses = [tcp_address(ctx.sides)] if ctx.remote("dst") and ctx.sides else []
        extra += creds_args(str(creds), incoming, ctx.workdir, addresses)
    # x-ignore-shared: both sides map the source's RAM file, so RAM is not
    # sent at all (migration/ram.c, ramblock_is_ignored); the destination
    # must not prealloc it (touching pages rewrites them).
    shared = ctx.shared_ram
    host = ctx.sides.host(role) if ctx.sides is not None else None
    m, paths = prepare_machine(name, build, ctx.cell.target, ctx.workdir, ctx.logdir, ctx.t0,
                               incoming=incoming, machine_type=ctx.machine_type, extra=extra,
                               with_disk=ctx.workload.needs_disk,
                               ram=ctx.workdir / "src.ram" if shared else None,
                               prealloc=not (shared and incoming),
                               serial_sink=ctx.workload.serial_sink(role),
                               start_paused=not ctx.autostart, host=host)
    if ctx.sides is not None and host is not None and not host.is_local:
        paths = await place_machine(host, m, paths, ctx.workdir, ctx.sides.dirs[host.name],
                                    ctx.sides.ram_dirs[host.name])
    return m, paths


async def _launch(ctx: CellContext) -> None:
    with ctx.phase("launch"):
        sides = await asyncio.gather(_prepare(ctx, "src", ctx.src_build),
                                     _prepare(ctx, "dst", ctx.dst_build))
        # Register teardown before starting either, so a failure starting the
        # second still ends the first.
        for m, _ in sides:
            ctx.stack.push_async_callback(m.close)
        await asyncio.gather(*(m.start() for m, _ in sides))
        (ctx.src, ctx.src_paths), (ctx.dst, ctx.dst_paths) = sides
        log.info("launched %s (machine %s, workload %s)", ", ".join(m.role for m, _ in sides),
                 ctx.machine_type, ctx.workload.kind)


def _common_machine_type(cell: Cell, src: QemuBuild, dst: QemuBuild) -> str:
    """The concrete machine type: aliases (q35) resolve per build, so across
    builds the cell must name a versioned type both know."""
    a, b = src.resolve_machine(cell.target.machine), dst.resolve_machine(cell.target.machine)
    if a is not None and a == b:
        return a
    # An alias names a different version in each build (q35 is pc-q35-7.2 in
    # 7.2, pc-q35-10.0 in 10.0): take the newest versioned type both know.
    common = common_machine_type(src, dst, cell.target.machine)
    if common is None:
        raise CellFailure(f"machine '{cell.target.machine}' is {a} on '{src.name}' but {b} on "
                          f"'{dst.name}', and they share no versioned type of that family: "
                          f"name a versioned machine type both know", ERROR)
    return common


async def _devices(ctx: CellContext) -> None:
    """For the static VMState check beside a cross-build cell: the devices
    these VMs really have (~0.1 s of QMP while the guest boots anyway)."""
    with ctx.phase("devices"):
        try:
            walks = await asyncio.gather(walk_devices(ctx.src), walk_devices(ctx.dst))
            ctx.figures["vm_devices"] = {"source": list(walks[0].types),
                                         "destination": list(walks[1].types)}
        except HarnessError as exc:
            ctx.figures["vm_devices_error"] = str(exc)


# --- configure and warm up ---------------------------------------------------

async def _configure(ctx: CellContext) -> None:
    with ctx.phase("configure"):
        src_params, _ = await asyncio.gather(
            configure(ctx.src, ctx.src_build, ctx.caps, ctx.params), _configure_destination(ctx))
        ctx.limit_ms = float(src_params["downtime-limit"])


async def _configure_destination(ctx: CellContext) -> dict[str, Any]:
    return await configure(ctx.dst, ctx.dst_build,
                           side_caps(ctx.caps, "dst", ctx.cell.fault), ctx.params)


async def _warmup(ctx: CellContext) -> None:
    with ctx.phase("warmup"):
        try:
            await ctx.workload.warm_up(ctx.src, ctx.src_paths.ram, ctx.figures)
        except GuestProgressError as exc:
            raise CellFailure(str(exc), ERROR if exc.qemu_died else FAILED) from None


# --- cancel-retry ------------------------------------------------------------

async def _cancel_retry(ctx: CellContext) -> None:
    """First attempt of a cancel-retry cell: start migrating, cancel once RAM
    is on its way; the source must end 'cancelled' and run on.  The first
    destination saw its stream cut: end it, and migrate to a fresh one."""
    with ctx.phase("cancel-retry"):
        ctx.record(check_cancel_retry(await _cancel_first(ctx)))
        await ctx.dst.close()
        ctx.dst, ctx.dst_paths = await _prepare(ctx, "dst2", ctx.dst_build)
        ctx.stack.push_async_callback(ctx.dst.close)
        await ctx.dst.start()
        await _configure_destination(ctx)


async def _cancel_first(ctx: CellContext) -> CancelEvidence:
    """Migrate slowly, cancel once RAM is on its way, and put the cell's own
    ``max-bandwidth`` back for the retry.

    The cancel must land while the migration is ``active``.  At the cell's
    own rate (10G) the whole first attempt took 80-300 ms on a loaded host,
    so a harness stalled for one such moment saw it complete; at
    ``CANCEL_FIRST_BANDWIDTH`` (as the cancel-in-active scenario's ``SLOW``,
    harness.scenarios.rig) the 100 MiB region alone takes seconds to send."""
    cell, src = ctx.cell, ctx.src
    if cell.transport in SAVE_RESTORE:
        raise CellFailure(f"mode cancel-retry needs a live transport, not {cell.transport}",
                          ERROR)
    uri = await incoming_uri(cell.transport, ctx.dst, ctx.workdir, src, tcp_addr=_tcp_addr(ctx))
    own = (await src.execute("query-migrate-parameters"))["max-bandwidth"]
    await src.execute("migrate-set-parameters", {"max-bandwidth": CANCEL_FIRST_BANDWIDTH})
    log.info("first attempt: migrate to %s at %d MiB/s, to be cancelled", uri,
             CANCEL_FIRST_BANDWIDTH >> 20)
    since = await start(src, uri)
    info = await wait_info(src, lambda i: i.get("status") != "setup"
                           and i.get("ram", {}).get("transferred", 0) > 0,
                           CANCEL_AFTER_TIMEOUT, "first attempt under way",
                           interval=CANCEL_POLL_INTERVAL)
    sent = info.get("ram", {}).get("transferred", 0)
    outcome = await cancel(src, since)
    # The retry migrates at the cell's own rate (migrate-set-parameters is
    # accepted in any migration state: migration/options.c, 10.0;
    # migration/migration.c, 7.2).
    await src.execute("migrate-set-parameters", {"max-bandwidth": own})
    ctx.figures["cancel_first_max_bandwidth"] = CANCEL_FIRST_BANDWIDTH
    return CancelEvidence(status_at_cancel=info.get("status"), bytes_sent=sent, outcome=outcome,
                          source_status=await src.status(),
                          return_path=bool(ctx.caps.get("return-path")))


# --- migrate -----------------------------------------------------------------

async def _migrate(ctx: CellContext) -> MigrationRun | None:
    """The migration, then the hook for tests.  Returns the run when it
    completed with both sides settled, or None when it did not (its failed
    'converged' check is then in the evidence and the source runs on)."""
    with ctx.phase("migrate"):
        run = await _run_migration(ctx)
        if run is not None and ctx.hooks.after_migrate is not None:
            await ctx.hooks.after_migrate(ctx, run)
    return run


async def _run_migration(ctx: CellContext) -> MigrationRun | None:
    cell, src, dst, caps, workdir = ctx.cell, ctx.src, ctx.dst, ctx.caps, ctx.workdir
    restore = None
    try:
        if cell.transport in SAVE_RESTORE:
            uri, restore = save_restore_uris(cell.transport, workdir)
        else:
            uri = await incoming_uri(cell.transport, dst, workdir, src, tcp_addr=_tcp_addr(ctx))
    except (ValueError, RuntimeError) as exc:
        raise CellFailure(str(exc), ERROR) from exc
    ctx.figures["uri"] = uri
    log.info("migrate to %s%s", uri, f" (restore from {restore})" if restore else "")
    snapshot = workdir / "src-at-switchover.ram"
    held_copy: dict[str, int] = {}

    async def copy_source_ram() -> None:
        await asyncio.to_thread(shutil.copyfile, ctx.src_paths.ram, snapshot)
        held_copy["allocated"] = allocated_bytes(ctx.src_paths.ram)

    hold = None
    if caps.get("release-ram"):
        if not (caps.get("postcopy-ram") and caps.get("pause-before-switchover")):
            raise CellFailure("a release-ram cell needs postcopy-ram (RAM is only released "
                              "in postcopy) and pause-before-switchover (so the harness can "
                              "copy the source's RAM before it is released)", ERROR)
        hold = copy_source_ram
    # An autostarting destination runs the guest only if the source's did
    # (harness.checks.dststart): note which it was.
    src_runstate = await src.status() if ctx.autostart else ""
    t_start = time.monotonic()
    run = await run_migration(src, dst, uri, caps, cell.timeout, ctx.t0, restore,
                              postcopy_after=postcopy_after(cell.mode) or POSTCOPY_AFTER_SYNCS,
                              at_pre_switchover=hold, on_sample=lambda s: _on_sample(ctx, s),
                              dst_autostart=ctx.autostart,
                              stream_cap=stream_cap(cell.transport, caps, cell.target.memory))
    log.info("migration ended %s after %.1f s", run.status, time.monotonic() - t_start)
    if "allocated" in held_copy:
        run.ram_at_switchover = snapshot
        run.ram_allocated_at_switchover = held_copy["allocated"]
    if run.postcopy_after_syncs is not None:
        ctx.figures["postcopy_after_syncs"] = run.postcopy_after_syncs
    ctx.figures["source_states"] = run.source_states
    ctx.figures["samples"] = run.samples
    if ran_out_of_time(run):
        if not src.alive:
            raise CellFailure(f"source QEMU died during migration: {src.exit_reason()}", ERROR)
        ctx.figures.update(migration_figures(run.info))
        ctx.record(check_converged(run, cell.timeout))
        ctx.figures["cancel_outcome"] = await cancel(src)
        await _source_recovered(ctx)
        return None
    if not run.completed:
        # A destination that refused the stream exits (migration/migration.c,
        # process_incoming_migration_co): give it a moment, so its own error
        # (e.g. the UUID mismatch) is in the reason.
        await dst.wait_exit(2.0)
        ctx.record(check_converged(run, cell.timeout,
                                   None if dst.alive else dst.exit_reason()))
        if not src.alive:
            raise CellFailure(f"source QEMU died: {src.exit_reason()}", ERROR)
        await _source_recovered(ctx)
        return None
    ctx.record(check_converged(run, cell.timeout))
    ctx.figures["destination_states"] = run.destination_states
    await _settle_stopped(ctx, run)
    if ctx.autostart:
        ctx.record(check_autostart(AutostartEvidence(
            source_runstate=src_runstate, postcopy="postcopy-active" in run.states,
            t_resume=run.t_dst_resumed, t_completed=event_time(dst, "completed"),
            destination_runstate=ctx.figures["runstates"]["destination"])))
    return run


def _tcp_addr(ctx: CellContext) -> str:
    """Where a tcp destination listens: its host's address across hosts."""
    return tcp_address(ctx.sides) if ctx.sides is not None else "127.0.0.1"


def _on_sample(ctx: CellContext, sample: dict[str, Any]) -> None:
    ctx.report_sample(sample)
    if ctx.hooks.migrating is not None:
        ctx.hooks.migrating(ctx, sample)


async def _settle_stopped(ctx: CellContext, run: MigrationRun) -> None:
    """Both sides stopped, in the run states a completed migration leaves."""
    src, dst = ctx.src, ctx.dst
    if run.t_dst_resumed is not None and run.t_dst_stopped is None:
        # Postcopy: the destination guest has been running; stop it so its RAM
        # holds still for the checks.  (An autostarted one the driver stopped
        # already, on its 'completed'.)
        await dst.execute("stop")
        run.t_dst_stopped = time.monotonic()
    snapshot = bool(ctx.caps.get("background-snapshot"))
    if snapshot:
        # A background snapshot leaves the source running by design; stop it so
        # its RAM holds still for the comparison.
        ctx.record(check_background_snapshot(await src.status()))
        await src.execute("stop")
    dst_status = await settled_status(dst)
    # The source sends 'completed' before its run state leaves finish-migrate
    # (migration/migration.c: migration_iteration_finish sets postmigrate
    # after the state change), so a quick look can still see finish-migrate.
    src_status = await settled_status(src, leaving="finish-migrate")
    ctx.figures["runstates"] = {"source": src_status, "destination": dst_status}
    # A source that never ran (-S) hands over its 'prelaunch' state
    # (migration/global_state.c carries the run state across).
    src_expected = "paused" if snapshot else "postmigrate"
    if dst_status not in ("paused", "prelaunch") or src_status != src_expected:
        raise CellFailure(f"unexpected run states after migration: source {src_status}, "
                          f"destination {dst_status}")


async def _source_recovered(ctx: CellContext) -> None:
    """After a cancelled or failed migration the source must run on (QEMU puts
    it back to 'running': migration/migration.c, migrate_fd_cleanup)."""
    status = await ctx.src.status()
    ctx.figures["source_status_after"] = status
    if status != "running":
        raise CellFailure(f"source is '{status}' after the migration ended without success; "
                          "it should be running")


# --- verify, liveness and downtime, teardown ---------------------------------

async def _verify(ctx: CellContext, run: MigrationRun) -> None:
    with ctx.phase("verify"):
        await verify_paused(ctx, run)


async def _liveness_and_downtime(ctx: CellContext, run: MigrationRun) -> None:
    with ctx.phase("liveness"):
        t_resumed = await _resume(ctx, run)
        ctx.record(await ctx.workload.liveness(ctx.dst, ctx.dst_paths.ram))
    for check in _downtime(ctx, run, t_resumed):
        ctx.record(check)
    if ctx.workload.post_checks:
        with ctx.phase("guest-checks"):
            for check in await ctx.workload.after_liveness(ctx.dst, ctx.limit_ms):
                ctx.record(check)


async def _resume(ctx: CellContext, run: MigrationRun) -> float:
    """``cont`` the destination; return when the guest was let run (host
    time: the ``cont``, or postcopy's resume during the migration)."""
    dst, disk = ctx.dst, ctx.dst_paths.disk
    ctx.workload.before_cont(ctx.dst_paths.ram)
    if ctx.remote("dst"):
        # The image and its locks are on the destination's host.
        disk = None
    locked_before = image_locked(disk) if disk else None
    t_cont = time.monotonic()
    await dst.execute("cont")
    if run.t_dst_stopped is not None:
        # The guest ran before the checks (autostart, postcopy): this cont
        # ends the harness's own stop, which the guest's gap leaves out.
        ctx.workload.harness_stopped(run.t_dst_stopped, t_cont)
    if disk is not None:
        # Every disk cell records whether the destination held its image
        # active before cont: the late-block-activate check and its negative
        # control read it.
        locked_after = image_locked(disk)
        ctx.figures["dst_disk_locked"] = {"before_cont": locked_before,
                                          "after_cont": locked_after}
        if ctx.caps.get("late-block-activate") and ctx.autostart:
            # QEMU activates the disks when it starts the guest itself
            # (migration/migration.c, process_incoming_migration_bh): before
            # this cont, by design.
            ctx.figures["late_block_activate"] = ("not judged: an autostarting destination "
                                                  "activates its disks when QEMU starts it")
        elif ctx.caps.get("late-block-activate"):
            ctx.record(check_late_block_activate(bool(locked_before), locked_after))
    return run.t_dst_resumed or t_cont


def _downtime(ctx: CellContext, run: MigrationRun, t_resumed: float) -> list[CheckResult]:
    """QEMU's downtime and the guest's own gap, with the time the harness
    held the guest stopped (before ``cont``, and in pre-switchover) taken off;
    then whether QEMU's figure is plausible at all."""
    assert run.t_dst_ready is not None
    # From when the destination could first run to when it was let run; none
    # when QEMU started it itself (autostart: no cont to wait for).
    t_held = 0.0 if ctx.autostart else t_resumed - run.t_dst_ready
    qemu_ms = float(run.info.get("downtime", 0))
    seen = ctx.workload.guest_gap(t_held + run.source_held_s, run.t_source_done, qemu_ms,
                                  t_dst_ready=run.t_dst_ready, t_resumed=t_resumed,
                                  postcopy="postcopy-active" in run.states)
    resolution = seen.resolution_ms
    if ctx.sides is not None and resolution is not None:
        # Heartbeats reach this machine through SSH: the gap between them
        # carries the hosts' timing uncertainty (harness.migration.placed).
        extra = timing_uncertainty_ms(ctx.sides)
        ctx.figures["cross_host_timing_ms"] = round(extra, 2)
        resolution += extra
    # Save/restore: the guest is down while the stream is written and read
    # back, which is not a live-migration downtime.
    gap = None if ctx.cell.transport in SAVE_RESTORE else seen.gap_ms
    ctx.figures["harness_held_paused_ms"] = round(t_held * 1000, 2)
    if seen.parts:
        ctx.figures["guest_gap_parts"] = seen.parts
    ev = DowntimeEvidence(
        qemu_downtime_ms=qemu_ms, limit_ms=ctx.limit_ms,
        tolerance_ms=ctx.cell.downtime_tolerance_ms, guest_gap_ms=gap,
        heartbeat_interval_ms=resolution, harness_hold_ms=run.source_held_s * 1000,
        harness_hold_host_ms=(run.source_held_host_s * 1000 if run.source_held_host_s
                              else None),
        total_time_ms=(float(run.info["total-time"]) if run.info.get("total-time")
                       else None),
        postcopy="postcopy-active" in run.states, host_wait=run.host_wait,
        host_wait_unread=run.host_wait_unread,
        clock_window_ms=_clock_window_ms(ctx, run),
        stop_to_done_ms=None if run.stop_to_done_s is None else run.stop_to_done_s * 1000)
    checks = [check_downtime(ev), check_downtime_plausible(ev)]
    if ev.postcopy:
        checks.append(check_downtime_measures_stop(ev))
    return checks


def _clock_window_ms(ctx: CellContext, run: MigrationRun) -> tuple[float, float] | None:
    """This host's CLOCK_MONOTONIC (ms) from the source's completed to now
    (its ``query-migrate`` has been read): QEMU's QEMU_CLOCK_REALTIME is the
    same clock (include/qemu/timer.h, get_clock) when the source runs here."""
    if ctx.remote("src") or run.t_source_done is None:
        return None
    return run.t_source_done * 1000, time.monotonic() * 1000


async def _teardown(ctx: CellContext) -> None:
    """End both QEMUs (the exit stack ends them anyway when a phase fails)."""
    with ctx.phase("teardown"):
        await ctx.stack.aclose()
