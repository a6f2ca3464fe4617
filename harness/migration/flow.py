"""The steps of one migration cell, and nothing else.

boot source (guest dirtying) and destination (``-S -incoming defer``)
-> apply capabilities and parameters on both sides, read them back
-> wait for the guest's warm-up passes
-> migrate, following MIGRATION events (never taking ``setup`` for done)
-> with both sides stopped: exact RAM comparison and the guest invariant
-> ``cont`` the destination: liveness and the guest-observed downtime
-> judge, tear down.

Everything the checks need is collected into plain figures; the verdicts are
made by the functions in ``harness.checks``.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from qemu.qmp import ExecuteError

from harness.cell import Cell, TargetSpec
from harness.checks.downtime import DowntimeEvidence, check_downtime
from harness.checks.guest import check_guest_invariant
from harness.checks.cpustate import collect_cpu_state
from harness.checks.modes import (check_background_snapshot, check_mapped_ram, check_modes,
                                  check_shared_ram_not_sent, check_zero_pages)
from harness.checks.ram import Explained, RamRegion, check_ram, x86_layout
from harness.checks.vmstate_static import (
    FIGURE_KEY, builds_differ, cached_dump, static_beside_live, walk_devices,
)
from harness.state.coverage import coverage_report
from harness.errors import BuildError, HarnessError
from harness.qemu.build import QemuBuild, discover
from harness.qemu.cmdline import MachinePaths
from harness.checks.sides import (allocated_bytes, check_late_block_activate,
                                  check_release_ram, check_switchover_ack, check_validate_uuid,
                                  image_locked)
from harness.migration.driver import (BASE_CAPABILITIES, POSTCOPY_AFTER_SYNCS, TERMINAL, MigrationRun, cancel,
                                      configure, run_migration, settled_status)
from harness.migration.transports import SAVE_RESTORE, incoming_uri, save_restore_uris
from harness.migration.modes import CANCEL_RETRY, postcopy_after, side_args, side_caps
from harness.migration.launch import prepare_machine
from harness.qemu.machine import Machine
from harness.qemu.machines import common_machine_type
from harness.run.rundir import runtime_dir
from harness.migration.tls import creds_args
from harness.results import ERROR, FAILED, SKIPPED, CellResult, CheckResult, judge
from harness.qemu.cmdline import firmware_args
from harness.guest.dirtier import HeartbeatParser, read_region_bytes
from harness.guest.e2k_dirtier import (DEFAULT_MARKER_ADDR, MARKER_SIZE, make_firmware,
                                          read_marker)
from harness.guest.pattern import check_pattern, loader_args, make_pattern
from harness.units import PAGE

WARMUP_TIMEOUT = 60.0
LIVENESS_HEARTBEATS = 3
LIVENESS_TIMEOUT = 20.0

Progress = Callable[[str], None]


class CellFailure(HarnessError):
    """The cell failed for a stated reason (not a harness bug)."""

    def __init__(self, reason: str, verdict: str = FAILED) -> None:
        self.verdict = verdict
        super().__init__(reason)


@dataclass
class Evidence:
    """What the flow collected; the checks judge it."""

    phases: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)


def preflight(cell: Cell, src: QemuBuild, dst: QemuBuild) -> str | None:
    """A skip reason when this host or build cannot run the cell; raise on bad input."""
    wl = cell.target.workload
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
        unknown = [c for c, _ in cell.capabilities if c not in build.capabilities]
        if unknown:
            raise BuildError(build.name, f"{build.version_text} has no migration capability "
                             f"{', '.join(map(repr, unknown))} (cell {cell.id}, {cell.origin}); "
                             f"it supports: {', '.join(build.capabilities)}")
        unknown = [p for p, _ in cell.parameters if p not in build.parameters]
        if unknown:
            raise BuildError(build.name, f"{build.version_text} has no migration parameter "
                             f"{', '.join(map(repr, unknown))} (cell {cell.id}, {cell.origin}); "
                             f"it supports: {', '.join(sorted(build.parameters))}")
    return None


#: A fault injector for the harness's own tests: called with the source's and
#: destination's RAM files while both VMs are stopped, before the checks.
Inject = Callable[[Path, Path], None]


def run_cell(cell: Cell, logdir: Path, progress: Progress | None = None,
             inject: Inject | None = None) -> CellResult:
    """Synchronous facade: run one cell to a CellResult.  Never raises for a cell
    failure; only for interruption (KeyboardInterrupt / Interrupted)."""
    return asyncio.run(run_cell_async(cell, logdir, progress, inject))


async def run_cell_async(cell: Cell, logdir: Path, progress: Progress | None = None,
                         inject: Inject | None = None) -> CellResult:
    logdir.mkdir(parents=True, exist_ok=True)
    result = CellResult(id=cell.id, verdict=ERROR, inputs=cell.inputs(), logdir=str(logdir))
    t0 = time.monotonic()
    try:
        src_build = discover(cell.src_build)
        dst_build = discover(cell.dst_build)
        result.builds = {"source": _build_brief(src_build), "destination": _build_brief(dst_build)}
        skip = preflight(cell, src_build, dst_build)
        if skip:
            result.verdict, result.reason = SKIPPED, skip
            return result
        evidence = Evidence()
        try:
            await asyncio.wait_for(
                _flow(cell, src_build, dst_build, logdir, evidence,
                      progress or (lambda _: None), inject),
                cell.timeout * 2 + WARMUP_TIMEOUT + 60)
            result.verdict, result.reason = judge(evidence.checks)
        except asyncio.TimeoutError:
            result.verdict = ERROR
            result.reason = (f"cell watchdog expired after {time.monotonic() - t0:.0f} s "
                             f"(phases done: {', '.join(evidence.phases) or 'none'})")
        except CellFailure as exc:
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


def _build_brief(build: QemuBuild) -> dict[str, Any]:
    return {"name": build.name, "binary": build.spec.binary, "version": build.version_text,
            "package": build.package, "missing": build.missing}


class _BeatClock:
    """Feeds a HeartbeatParser and remembers when the last two chunks with
    heartbeats arrived.

    During a migration the dirtier's passes slow down a lot (every first write
    to a page after a dirty-log sync takes QEMU's slow path), so the heartbeat
    interval that bounds the guest-observed gap is the one at switchover, not
    the average rate.
    """

    def __init__(self, parser: HeartbeatParser) -> None:
        self.parser = parser
        self.prev: float | None = None
        self.last: float | None = None

    def feed(self, data: bytes, t: float) -> None:
        before = self.parser.heartbeats
        self.parser.feed(data, t)
        if self.parser.heartbeats > before:
            self.prev, self.last = self.last, t

    def last_interval(self) -> float | None:
        return None if self.prev is None or self.last is None else self.last - self.prev


class _Phase:
    """Times a phase into the evidence and names it in progress output."""

    def __init__(self, ev: Evidence, name: str, progress: Progress) -> None:
        self.ev, self.name, self.progress = ev, name, progress

    def __enter__(self) -> None:
        self.progress(self.name)
        self.t = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.ev.phases[self.name] = time.monotonic() - self.t


async def _flow(cell: Cell, src_build: QemuBuild, dst_build: QemuBuild, logdir: Path,
                ev: Evidence, progress: Progress, inject: Inject | None) -> None:
    wl = cell.target.workload
    workdir = runtime_dir()
    t0 = time.monotonic()
    # The destination's serial stream starts mid-run: no banner is expected
    # there, and one would mean the guest restarted from reset.
    src_hb, dst_hb = HeartbeatParser(), HeartbeatParser(expect_banner=False)
    src_clock, dst_clock = _BeatClock(src_hb), _BeatClock(dst_hb)
    machine_type = _common_machine_type(cell, src_build, dst_build)
    ev.figures["machine_type"] = machine_type
    # "pattern" workloads need no guest code: a seeded pattern preloaded into
    # the source's RAM (any architecture); "pattern-paused" never runs a CPU.
    pattern = wl.kind in ("pattern", "pattern-paused")
    # The e2k dirtier has no serial output: its progress is a boots/passes
    # marker in guest RAM (harness.guest.e2k_dirtier).
    marker = wl.kind == "dirtier" and cell.target.arch == "e2k"
    shared = dict(cell.capabilities).get("x-ignore-shared", False)
    caps = {**BASE_CAPABILITIES, **dict(cell.capabilities)}
    params = dict(cell.parameters)

    def side(name: str, build: QemuBuild, clock: _BeatClock) -> tuple[Machine, MachinePaths]:
        """One QEMU, not started yet.  ``name`` is src, dst, or dst2 (the
        destination of a retried migration)."""
        role = "src" if name == "src" else "dst"
        incoming = role == "dst"
        if marker:
            extra = ["-bios", str(make_firmware(workdir / "e2k-dirtier.bios", wl.region_base,
                                                wl.region_size, MARKER_ADDR,
                                                cell.target.memory))]
        else:
            extra = firmware_args(cell.target.arch, workdir)
        extra += side_args(caps, role, cell.seed, cell.fault)
        creds = params.get("tls-creds")
        if creds:
            extra += creds_args(str(creds), incoming, workdir)
        if pattern and not incoming:
            # Only the source gets the pattern: whatever the destination
            # holds there came through the migration stream.
            blob = make_pattern(workdir / "pattern.bin", wl.region_size, cell.seed)
            extra += loader_args(blob, wl.region_base)
            extra += ["-S"] if wl.kind == "pattern-paused" else []
        # x-ignore-shared: both sides map the source's RAM file, so RAM is not
        # sent at all (migration/ram.c, ramblock_is_ignored); the destination
        # must not prealloc it (touching pages rewrites them).
        return prepare_machine(name, build, cell.target, workdir, logdir, t0,
                               incoming=incoming, machine_type=machine_type, extra=extra,
                               with_disk=not (pattern or marker),
                               ram=workdir / "src.ram" if shared else None,
                               prealloc=not (shared and incoming), serial_sink=clock.feed)

    try:
        async with AsyncExitStack() as stack:
            with _Phase(ev, "launch", progress):
                sides = [side("src", src_build, src_clock), side("dst", dst_build, dst_clock)]
                # Register teardown before starting either, so a failure starting
                # the second still ends the first.
                for m, _ in sides:
                    stack.push_async_callback(m.close)
                await asyncio.gather(*(m.start() for m, _ in sides))
                (src, src_paths), (dst, dst_paths) = sides

            if builds_differ(src_build, dst_build):
                # For the static VMState check beside this cell: the devices these
                # VMs really have (~0.1 s of QMP while the guest boots anyway).
                with _Phase(ev, "devices", progress):
                    try:
                        walks = await asyncio.gather(walk_devices(src), walk_devices(dst))
                        ev.figures["vm_devices"] = {"source": list(walks[0].types),
                                                    "destination": list(walks[1].types)}
                    except HarnessError as exc:
                        ev.figures["vm_devices_error"] = str(exc)

            with _Phase(ev, "configure", progress):
                await asyncio.gather(configure(src, src_build, caps, params),
                                     configure(dst, dst_build,
                                               side_caps(caps, "dst", cell.fault), params))
                limit_ms = float((await src.execute("query-migrate-parameters"))["downtime-limit"])

            with _Phase(ev, "warmup", progress):
                if marker:
                    await _wait_marker(src, src_paths.ram, wl.warmup_passes, WARMUP_TIMEOUT)
                    ev.figures["warmup_passes"] = _read_marker(src_paths.ram)[1]
                elif not pattern:
                    await _wait_heartbeats(src, src_hb, wl.warmup_passes, WARMUP_TIMEOUT,
                                           "source warm-up")
                    ev.figures["warmup_passes"] = src_hb.heartbeats
                elif wl.kind == "pattern":
                    await asyncio.sleep(PATTERN_RUN_BEFORE)  # let the firmware run a little

            if cell.mode == CANCEL_RETRY:
                with _Phase(ev, "cancel-retry", progress):
                    ev.checks.append(_expect(cell, await _cancel_first(cell, src, dst, workdir)))
                    # The first destination saw its stream cut: end it, and
                    # migrate to a fresh one.
                    await dst.close()
                    dst, dst_paths = side("dst2", dst_build, dst_clock)
                    stack.push_async_callback(dst.close)
                    await dst.start()
                    await configure(dst, dst_build, side_caps(caps, "dst", cell.fault), params)

            with _Phase(ev, "migrate", progress):
                run = await _migrate(cell, src, dst, workdir, ev, caps, t0, src_paths.ram)
            if run is None:
                return
            info = run.info

            with _Phase(ev, "verify", progress):
                ev.figures.update(_migration_figures(info))
                ev.figures["query_migrate"] = info
                if inject is not None:
                    inject(src_paths.ram, dst_paths.ram)
                explained = None
                if run.t_dst_resumed is not None:
                    explained = Explained(
                        np.arange(wl.region_base, wl.region_base + wl.region_size, PAGE),
                        "the destination guest ran during postcopy and rewrote the first "
                        "byte of its region's pages; those bytes are judged by the guest "
                        "invariant")
                elif caps.get("background-snapshot") and not pattern:
                    explained = Explained(
                        np.arange(wl.region_base, wl.region_base + wl.region_size, PAGE),
                        "background-snapshot saves RAM as it was when the snapshot began "
                        "while the source guest runs on, rewriting the first byte of its "
                        "region's pages; those bytes are judged by the guest invariant on "
                        "the restored copy")
                layout = ram_layout(cell.target)
                src_ram, dst_ram = src_paths.ram, dst_paths.ram
                # What the source's RAM file still holds (release-ram gives
                # pages back; every other cell keeps them all).
                ev.figures["src_ram_allocated"] = allocated_bytes(src_paths.ram)
                if run.ram_at_switchover is not None:
                    # release-ram emptied the source's RAM file as postcopy sent
                    # it: compare with the copy taken while the source was held
                    # in pre-switchover (stopped, nothing sent in postcopy yet).
                    src_ram = run.ram_at_switchover
                    ev.checks.append(_expect(cell, check_release_ram(
                        run.ram_allocated_at_switchover, allocated_bytes(src_paths.ram),
                        _postcopy_bytes(run))))
                if os.environ.get(RAM_SOURCE_ENV) == "pmemsave":
                    # The fallback where the RAM files cannot be read directly:
                    # each QEMU writes its guest-physical memory out itself.
                    src_ram, dst_ram = await asyncio.gather(
                        pmemsave_ram(src, layout, workdir / "src.pmem"),
                        pmemsave_ram(dst, layout, workdir / "dst.pmem"))
                    ev.figures["ram_source"] = "pmemsave"
                if shared:
                    # One RAM file for both sides: there is nothing to compare;
                    # what must hold is that RAM was not sent.
                    ev.figures["ram"] = "one shared RAM file (x-ignore-shared): not compared"
                    ev.checks.append(_expect(cell, check_shared_ram_not_sent(
                        info, cell.target.memory)))
                else:
                    ev.checks.append(_expect(cell, check_ram(src_ram, dst_ram, layout,
                                                             explained)))
                if pattern:
                    guest = check_pattern(dst_ram, wl.region_base, wl.region_size,
                                          cell.seed, wl.region_base)
                else:
                    guest, before = check_guest_invariant(dst_ram, wl.region_base,
                                                          wl.region_size // PAGE, wl.region_base)
                ev.checks.append(_expect(cell, guest))
                ev.checks += [_expect(cell, c) for c in check_modes(run, params)]
                if caps.get("mapped-ram") and cell.transport == "file":
                    ev.checks.append(_expect(cell, check_mapped_ram(
                        workdir / "migration.stream", cell.target.memory)))
                if caps.get("switchover-ack"):
                    ev.checks.append(_expect(cell, check_switchover_ack(
                        logdir / f"{src.role}.stderr", logdir / f"{dst.role}.stderr")))
                if caps.get("validate-uuid"):
                    src_uuid, dst_uuid = await asyncio.gather(src.execute("query-uuid"),
                                                              dst.execute("query-uuid"))
                    ev.checks.append(_expect(cell, check_validate_uuid(
                        src_uuid["UUID"], dst_uuid["UUID"])))
                if wl.kind == "pattern-paused":
                    # A guest that never ran: RAM is zero but for the pattern.
                    ev.checks.append(_expect(cell, check_zero_pages(
                        info, cell.target.memory, wl.region_size)))
                if run.t_dst_resumed is not None:
                    ev.figures["cpu_state"] = "not compared: the destination ran during postcopy"
                elif caps.get("background-snapshot"):
                    ev.figures["cpu_state"] = ("not compared: the snapshot holds the CPU state "
                                               "of its start; the source ran on")
                else:
                    ev.checks.append(_expect(cell, await collect_cpu_state(
                        src, dst, cell.target.arch)))
                ev.checks.append(_expect(cell, await _coverage(src, src_build, machine_type,
                                                               cell, ev, workdir)))

            with _Phase(ev, "liveness", progress):
                marker_before = _read_marker(dst_paths.ram) if marker else None
                locked_before = image_locked(dst_paths.disk) if dst_paths.disk else None
                t_cont = time.monotonic()
                beats_before = dst_hb.heartbeats
                await dst.execute("cont")
                if dst_paths.disk is not None:
                    # Every disk cell records whether the destination held its
                    # image active before cont: the late-block-activate check
                    # and its negative control read it.
                    locked_after = image_locked(dst_paths.disk)
                    ev.figures["dst_disk_locked"] = {"before_cont": locked_before,
                                                     "after_cont": locked_after}
                    if caps.get("late-block-activate"):
                        ev.checks.append(_expect(cell, check_late_block_activate(
                            bool(locked_before), locked_after)))
                # Time the harness kept the guest from running: from when the
                # destination could first run to when it was told to.
                assert run.t_dst_ready is not None
                t_held = (run.t_dst_resumed or t_cont) - run.t_dst_ready
                if pattern:
                    live = await _still_running(dst)
                elif marker:
                    live = await _marker_liveness(dst, dst_paths.ram, marker_before)
                else:
                    live = await _liveness(dst, dst_hb, dst_paths.ram, wl.region_base,
                                           wl.region_size // PAGE, before, beats_before)
                ev.checks.append(_expect(cell, live))

            gap = None
            # Save/restore: the guest is down while the stream is written and
            # read back, which is not a live-migration downtime.
            if cell.transport not in SAVE_RESTORE and src_hb.last_heartbeat_t is not None \
                    and dst_hb.first_heartbeat_t is not None:
                gap = (dst_hb.first_heartbeat_t - src_hb.last_heartbeat_t - t_held
                       - run.source_held_s) * 1000
            # Resolution of the gap: a pass may have been under way on either
            # side.  On the source that is at least the last pass interval, and
            # when the guest was slowed (auto-converge throttling) the pass in
            # progress at the stop, which began at the last heartbeat and ended
            # when the source stopped (its completion minus QEMU's downtime).
            src_res = src_clock.last_interval() or 0.0
            if run.t_source_done is not None and src_hb.last_heartbeat_t is not None:
                stop = run.t_source_done - float(info.get("downtime", 0)) / 1000
                src_res = max(src_res, stop - src_hb.last_heartbeat_t)
            slack = src_res + (dst_clock.last_interval() or 0.0)
            ev.figures["harness_held_paused_ms"] = round(t_held * 1000, 2)
            ev.checks.append(_expect(cell, check_downtime(DowntimeEvidence(
                qemu_downtime_ms=float(info.get("downtime", 0)), limit_ms=limit_ms,
                tolerance_ms=cell.downtime_tolerance_ms, guest_gap_ms=gap,
                heartbeat_interval_ms=slack * 1000 if slack else None,
                harness_hold_ms=run.source_held_s * 1000))))
            with _Phase(ev, "teardown", progress):
                await stack.aclose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


PATTERN_RUN_BEFORE = 0.3
#: Set to "pmemsave" to read guest RAM through QMP instead of the RAM files.
RAM_SOURCE_ENV = "MHARNESS_RAM_SOURCE"


async def pmemsave_ram(m: Machine, layout: list[RamRegion], path: Path) -> Path:
    """Guest RAM written out by QEMU (``pmemsave``), laid out like the RAM file:
    region by region at their file offsets, so the same checks read it."""
    parts = []
    for i, region in enumerate(layout):
        part = path.with_name(f"{path.name}.{i}")
        await m.execute("pmemsave", {"val": region.gpa, "size": region.size,
                                     "filename": str(part)}, timeout=120)
        parts.append(part)
    with open(path, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
            part.unlink()
    return path


def ram_layout(target: TargetSpec) -> list[RamRegion]:
    """Where the RAM file's bytes sit in guest-physical space, per architecture."""
    if target.arch in ("x86_64", "i386"):
        return x86_layout(target.memory)
    return [RamRegion(0, 0, target.memory)]  # e2k: RAM at 0 (hw/e2k, the board's RAM map)


#: Where the e2k dirtier keeps its boots/passes marker (below its region).
MARKER_ADDR = DEFAULT_MARKER_ADDR


def _read_marker(ram: Path) -> tuple[int, int]:
    """(boots, passes) of the e2k dirtier, read straight from its RAM file."""
    with open(ram, "rb") as f:
        f.seek(MARKER_ADDR)
        return read_marker(f.read(MARKER_SIZE), 0)


async def _wait_marker(m: Machine, ram: Path, count: int, timeout: float) -> None:
    """Warm-up for a guest without serial output: its pass counter in RAM."""
    def progress() -> tuple[int, str]:
        boots, passes = _read_marker(ram)
        return passes, f"guest marker shows {passes}/{count} passes (boots {boots})"

    await _wait_progress(m, progress, count, timeout, "source warm-up")


async def _marker_liveness(dst: Machine, ram: Path, before: tuple[int, int] | None
                           ) -> CheckResult:
    """After ``cont`` the guest must go on counting passes where it left off.
    A boots counter that moves means the CPU started again from the reset PC
    with the migrated RAM: its state was not migrated."""
    assert before is not None
    deadline = time.monotonic() + LIVENESS_TIMEOUT
    boots, passes = before
    while time.monotonic() < deadline and dst.alive:
        boots, passes = _read_marker(ram)
        if boots != before[0] or passes >= before[1] + LIVENESS_HEARTBEATS:
            break
        await asyncio.sleep(0.01)
    figures = {"boots_before": before[0], "boots_after": boots, "passes_before": before[1],
               "passes_after": passes, "destination_alive": dst.alive}
    if not dst.alive:
        return CheckResult("liveness", False, f"destination died after cont: {dst.exit_reason()}",
                           figures)
    if boots != before[0]:
        return CheckResult("liveness", False,
                           f"guest restarted on the destination (boots counter {before[0]} -> "
                           f"{boots}, passes {before[1]} -> {passes}): CPU state not migrated",
                           figures)
    if passes < before[1] + LIVENESS_HEARTBEATS:
        return CheckResult("liveness", False, f"only {passes - before[1]} passes in "
                           f"{LIVENESS_TIMEOUT:.0f} s after cont", figures)
    return CheckResult("liveness", True, f"{passes - before[1]} passes after cont, no restart",
                       figures)


async def _still_running(dst: Machine) -> CheckResult:
    """Liveness without a heartbeat: after cont the destination runs and stays up."""
    await asyncio.sleep(PATTERN_RUN_BEFORE)
    status = await dst.status() if dst.alive else "dead"
    ok = dst.alive and status == "running"
    return CheckResult("liveness", ok, f"destination {status} after cont" if ok else
                       f"destination {status} after cont: {dst.exit_reason()}",
                       {"status": status})


_coverage_cache: dict[tuple[str, str, str], dict[str, Any]] = {}


async def _coverage(src: Machine, build: QemuBuild, machine_type: str, cell: Cell,
                    ev: Evidence, workdir: Path | None = None) -> CheckResult:
    """Which devices of the machine have state in the migration stream.

    The answer depends only on the build, machine type and accelerator (the
    QOM tree is the same for every cell of them), so it is computed once per
    run and the VMState dump comes from the shared dump cache.  A cell whose
    transport saved the stream to a file (``exec``/``file``: ``migration.stream``
    in the cell's workdir, harness.migration.driver.save_restore_uris) adds the evidence
    of the stream itself, once per key: the first such cell's report replaces
    a cached one made without a stream."""
    key = (build.spec.binary, machine_type, cell.target.accel)
    stream = None
    if workdir is not None and cell.transport in SAVE_RESTORE:
        stream = workdir / "migration.stream"
        if not stream.is_file():
            stream = None
    cached = _coverage_cache.get(key)
    if cached is None or (stream is not None and "stream" not in cached):
        dump = await asyncio.to_thread(cached_dump, build, machine_type)
        _coverage_cache[key] = await coverage_report(src, build, machine_type, dump=dump.dump,
                                                     stream=stream)
    cov = _coverage_cache[key]
    ev.figures["coverage"] = cov
    figures = {k: cov[k] for k in ("covered", "not_covered", "not_covered_fine", "truncated")}
    if "stream" in cov:
        figures["stream"] = {k: cov["stream"][k] for k in (
            "decoded", "complete", "error", "not_in_stream", "unmatched_sections")}
    return CheckResult("coverage", cov["passed"], cov["summary"], figures)


def _expect(cell: Cell, check: CheckResult) -> CheckResult:
    """Mark a check the cell declared as a negative control."""
    check.expected_to_fail = check.name in cell.expect_fail
    return check


async def _source_recovered(src: Machine, ev: Evidence) -> None:
    """After a cancelled or failed migration the source must run on (QEMU puts
    it back to 'running': migration/migration.c, migrate_fd_cleanup)."""
    status = await src.status()
    ev.figures["source_status_after"] = status
    if status != "running":
        raise CellFailure(f"source is '{status}' after the migration ended without success; "
                          "it should be running")


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


async def _wait_heartbeats(m: Machine, hb: HeartbeatParser, count: int, timeout: float,
                           what: str) -> None:
    await _wait_progress(m, lambda: (hb.heartbeats, f"{hb.heartbeats}/{count} heartbeats "
                                     f"(banner seen: {hb.banner_seen})"), count, timeout, what)


async def _wait_progress(m: Machine, progress: Callable[[], tuple[int, str]], count: int,
                         timeout: float, what: str) -> None:
    """Wait until the guest's progress (heartbeats, passes) reaches ``count``;
    a dead QEMU or the timeout is a cell failure saying how far it got."""
    deadline = time.monotonic() + timeout
    while True:
        done, said = progress()
        if done >= count:
            return
        if not m.alive:
            raise CellFailure(f"{what}: {m.role} QEMU died: {m.exit_reason()}", ERROR)
        if time.monotonic() > deadline:
            raise CellFailure(f"{what}: {said} after {timeout:.0f} s")
        await asyncio.sleep(0.01)


async def _migrate(cell: Cell, src: Machine, dst: Machine, workdir: Path, ev: Evidence,
                   caps: dict[str, bool], t0: float, src_ram: Path) -> MigrationRun | None:
    """Run the migration; return the run when it completed with both sides
    settled, or None when it did not converge in time (a failed 'converged'
    check with the figures is then in the evidence, the migration has been
    cancelled and the source must have resumed)."""
    restore = None
    try:
        if cell.transport in SAVE_RESTORE:
            uri, restore = save_restore_uris(cell.transport, workdir)
        else:
            uri = await incoming_uri(cell.transport, dst, workdir, src)
    except (ValueError, RuntimeError) as exc:
        raise CellFailure(str(exc), ERROR) from exc
    ev.figures["uri"] = uri
    snapshot = workdir / "src-at-switchover.ram"
    run_extra: dict[str, int] = {}

    async def copy_source_ram() -> None:
        await asyncio.to_thread(shutil.copyfile, src_ram, snapshot)
        run_extra["allocated"] = allocated_bytes(src_ram)

    hold = None
    if caps.get("release-ram"):
        if not (caps.get("postcopy-ram") and caps.get("pause-before-switchover")):
            raise CellFailure("a release-ram cell needs postcopy-ram (RAM is only released "
                              "in postcopy) and pause-before-switchover (so the harness can "
                              "copy the source's RAM before it is released)", ERROR)
        hold = copy_source_ram
    after = postcopy_after(cell.mode)
    run = await run_migration(src, dst, uri, caps, cell.timeout, t0, restore,
                              postcopy_after=after or POSTCOPY_AFTER_SYNCS,
                              at_pre_switchover=hold)
    if "allocated" in run_extra:
        run.ram_at_switchover = snapshot
        run.ram_allocated_at_switchover = run_extra["allocated"]
    if run.postcopy_after_syncs is not None:
        ev.figures["postcopy_after_syncs"] = run.postcopy_after_syncs
    ev.figures["source_states"] = run.source_states
    ev.figures["samples"] = run.samples
    if run.status not in TERMINAL and run.status != "destination-failed":
        if not src.alive:
            raise CellFailure(f"source QEMU died during migration: {src.exit_reason()}", ERROR)
        ev.figures.update(_migration_figures(run.info))
        ram = run.info.get("ram", {})
        ev.checks.append(_expect(cell, CheckResult("converged", False,
            f"did not complete within {cell.timeout:.0f} s: state {run.status}, "
            f"{ram.get('transferred', 0) >> 20} MiB sent, {ram.get('remaining', 0) >> 20} MiB "
            f"remaining, dirtying {ram.get('dirty-pages-rate', 0)} pages/s, expected downtime "
            f"{run.info.get('expected-downtime', '?')} ms", _migration_figures(run.info))))
        ev.figures["cancel_outcome"] = await cancel(src)
        await _source_recovered(src, ev)
        return None
    if not run.completed:
        # A refused migration (e.g. a TLS peer that must not be trusted) is a
        # failed 'converged' check, so a cell can declare it expected; either
        # way the source must run on.  A destination that refused the stream
        # exits (migration/migration.c, process_incoming_migration_co): give it
        # a moment, so its own error (e.g. the UUID mismatch) is in the reason.
        await dst.wait_exit(2.0)
        reason = f"migration {run.status}: {run.error}" + (
            "" if dst.alive else f"; destination {dst.exit_reason()}")
        ev.checks.append(_expect(cell, CheckResult("converged", False, reason,
                                                   {"source_states": run.source_states})))
        if src.alive:
            await _source_recovered(src, ev)
        else:
            raise CellFailure(f"source QEMU died: {src.exit_reason()}", ERROR)
        return None
    ev.checks.append(_expect(cell, CheckResult("converged", True, "migration completed",
                                               {"source_states": run.source_states})))
    ev.figures["destination_states"] = run.destination_states
    if run.t_dst_resumed is not None:
        # Postcopy: the destination guest has been running; stop it so its RAM
        # holds still for the checks.
        await dst.execute("stop")
    if caps.get("background-snapshot"):
        # A background snapshot leaves the source running by design; stop it so
        # its RAM holds still for the comparison.
        ev.checks.append(_expect(cell, check_background_snapshot(await src.status())))
        await src.execute("stop")
    dst_status = await settled_status(dst)
    # The source sends 'completed' before its run state leaves finish-migrate
    # (migration/migration.c: migration_iteration_finish sets postmigrate
    # after the state change), so a quick look can still see finish-migrate.
    src_status = await settled_status(src, leaving="finish-migrate")
    ev.figures["runstates"] = {"source": src_status, "destination": dst_status}
    # A source that never ran (-S) hands over its 'prelaunch' state
    # (migration/global_state.c carries the run state across).
    src_expected = "paused" if caps.get("background-snapshot") else "postmigrate"
    if dst_status not in ("paused", "prelaunch") or src_status != src_expected:
        raise CellFailure(f"unexpected run states after migration: source {src_status}, "
                          f"destination {dst_status}")
    return run


#: How long the first attempt of a cancel-retry cell may take to get going.
CANCEL_AFTER_TIMEOUT = 30.0


async def _cancel_first(cell: Cell, src: Machine, dst: Machine, workdir: Path) -> CheckResult:
    """First attempt of a cancel-retry cell: start migrating, cancel once RAM
    is on its way, and require the source to end 'cancelled' and run on."""
    if cell.transport in SAVE_RESTORE:
        raise CellFailure(f"mode cancel-retry needs a live transport, not {cell.transport}",
                          ERROR)
    uri = await incoming_uri(cell.transport, dst, workdir, src)
    await src.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + CANCEL_AFTER_TIMEOUT
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = await src.execute("query-migrate")
        if info.get("status") != "setup" and info.get("ram", {}).get("transferred", 0) > 0:
            break
        if info.get("status") in TERMINAL:
            break
        await asyncio.sleep(0.02)
    sent = info.get("ram", {}).get("transferred", 0)
    status_at_cancel = info.get("status")
    outcome = await cancel(src)
    run_state = await src.status()
    figures = {"status_at_cancel": status_at_cancel, "bytes_sent_before_cancel": sent,
               "outcome": outcome, "source_status": run_state}
    ok = outcome == "cancelled" and run_state == "running" and status_at_cancel == "active"
    why = ""
    if outcome == "failed" and dict(cell.capabilities).get("return-path"):
        # Seen on 10.0: migration_cancel (migration/migration.c) shuts the
        # return path down before it sets 'cancelling'; on a shared socket
        # that fails the outgoing stream first, and the migration ends failed.
        why = (" (with return-path QEMU shuts the return path down before entering "
               "'cancelling', so the stream can fail first)")
    return CheckResult("cancel-retry", ok,
                       f"cancelled after {sent >> 20} MiB; the source ran on" if ok else
                       f"first attempt: state {status_at_cancel} at cancel, ended "
                       f"{outcome}, source {run_state}{why}", figures)


def _postcopy_bytes(run: MigrationRun) -> int:
    """Bytes sent after the switch to postcopy (from the samples and the end total)."""
    before = [s["transferred"] for s in run.samples
              if s.get("status") == "active" and s.get("transferred") is not None]
    total = run.info.get("ram", {}).get("transferred", 0)
    return max(0, total - (before[-1] if before else 0))


def _migration_figures(info: dict[str, Any]) -> dict[str, Any]:
    ram = info.get("ram", {})
    return {
        "status": info.get("status"),
        "total_time_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_time_ms": info.get("setup-time"),
        "expected_downtime_ms": info.get("expected-downtime"),
        "ram_transferred": ram.get("transferred"),
        "ram_total": ram.get("total"),
        "ram_duplicate_pages": ram.get("duplicate"),
        "ram_normal_pages": ram.get("normal"),
        "dirty_sync_count": ram.get("dirty-sync-count"),
        "mbps": ram.get("mbps"),
    }


async def _liveness(dst: Machine, hb: HeartbeatParser, ram: Path, offset: int, pages: int,
                    before: Any, beats_before: int = 0) -> CheckResult:
    """After ``cont`` the guest must keep running where it left off: heartbeats
    resume, no banner (a banner would mean it restarted from reset), and the
    region keeps changing."""
    deadline = time.monotonic() + LIVENESS_TIMEOUT
    want = beats_before + LIVENESS_HEARTBEATS
    while hb.heartbeats < want and time.monotonic() < deadline and dst.alive:
        await asyncio.sleep(0.01)
    after = read_region_bytes(ram, offset, pages)
    changed = int((after != before).sum())
    figures = {"heartbeats": hb.heartbeats, "restarts": hb.restarts, "pages_changed": changed,
               "destination_alive": dst.alive}
    if not dst.alive:
        return CheckResult("liveness", False, f"destination died after cont: {dst.exit_reason()}",
                           figures)
    if hb.restarts:
        return CheckResult("liveness", False,
                           "guest restarted on the destination (banner printed again): "
                           "CPU state not migrated", figures)
    if hb.heartbeats < want:
        return CheckResult("liveness", False, f"only {hb.heartbeats - beats_before} heartbeats in "
                           f"{LIVENESS_TIMEOUT:.0f} s after cont", figures)
    if changed == 0:
        return CheckResult("liveness", False, "heartbeats but the region did not change", figures)
    return CheckResult("liveness", True, f"{hb.heartbeats - beats_before} heartbeats, {changed} pages changed",
                       figures)
