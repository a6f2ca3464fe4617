"""The verify phase: evidence from the stopped pair, judged by harness.checks.

After a completed migration the source is in ``postmigrate`` and the
destination paused, so nothing moves.  This module decides which checks a
cell gets and collects what they judge:

- the exact RAM comparison of the two RAM files (or the copy release-ram
  needed, or ``pmemsave`` dumps with ``MHARNESS_RAM_SOURCE=pmemsave``; across
  hosts, per-chunk hashes computed on each host), with the pages a running
  guest legitimately rewrote explained;
- the workload's guest check on the destination's RAM;
- the behaviour checks the cell's capabilities and parameters call for;
- the CPU state of both sides and the machine's VMState coverage.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from harness.checks.converged import migration_figures
from harness.checks.cpustate import collect_cpu_state
from harness.checks.modes import check_mapped_ram, check_modes, check_shared_ram_not_sent
from harness.checks.ram import Explained, RamRegion, check_ram, ram_layout
from harness.checks.ram_hosts import check_ram_across_hosts
from harness.checks.sides import (allocated_bytes, check_release_ram, check_switchover_ack,
                                  check_validate_uuid)
from harness.checks.vmstate_static import cached_dump
from harness.migration.context import CellContext
from harness.hosts.ram import compare_ram
from harness.migration.driver import MigrationRun
from harness.migration.placed import region_mirror
from harness.migration.transports import SAVE_RESTORE
from harness.qemu.machine import Machine
from harness.results import CheckResult
from harness.state.coverage import coverage_report
from harness.units import PAGE

log = logging.getLogger(__name__)

#: Set to "pmemsave" to read guest RAM through QMP instead of the RAM files.
RAM_SOURCE_ENV = "MHARNESS_RAM_SOURCE"


async def verify_paused(ctx: CellContext, run: MigrationRun) -> None:
    """Every check of the stopped pair, recorded into ``ctx``'s evidence."""
    info = run.info
    ctx.figures.update(migration_figures(info))
    ctx.figures["query_migrate"] = info
    if ctx.hooks.inject is not None:
        ctx.hooks.inject(ctx.src_paths.ram, ctx.dst_paths.ram)
    dst_ram = await (_compare_ram_across_hosts(ctx, run) if ctx.sides is not None
                     else _compare_ram(ctx, run))
    ctx.record(ctx.workload.check_guest(dst_ram))
    for check in _behaviour_checks(ctx, run):
        ctx.record(check)
    if ctx.caps.get("validate-uuid"):
        src_uuid, dst_uuid = await asyncio.gather(ctx.src.execute("query-uuid"),
                                                  ctx.dst.execute("query-uuid"))
        ctx.record(check_validate_uuid(src_uuid["UUID"], dst_uuid["UUID"]))
    for check in ctx.workload.stream_checks(info):
        ctx.record(check)
    if run.t_dst_resumed is not None:
        ctx.figures["cpu_state"] = (f"not compared: {_how_destination_ran(ctx)}"
                                    if ctx.autostart else
                                    "not compared: the destination ran during postcopy")
    elif ctx.caps.get("background-snapshot"):
        ctx.figures["cpu_state"] = ("not compared: the snapshot holds the CPU state "
                                    "of its start; the source ran on")
    else:
        ctx.record(await collect_cpu_state(ctx.src, ctx.dst, ctx.cell.target.arch))
    ctx.record(await _coverage(ctx))


def _explained(ctx: CellContext, run: MigrationRun) -> Explained | None:
    """Bytes of the region a running guest rewrote after RAM was copied."""
    wl = ctx.cell.target.workload
    region = np.arange(wl.region_base, wl.region_base + wl.region_size, PAGE)
    if run.t_dst_resumed is not None:
        return Explained(region, f"{_how_destination_ran(ctx)} and rewrote the "
                         "first byte of its region's pages; those bytes are judged by the "
                         "guest invariant")
    if ctx.caps.get("background-snapshot") and ctx.workload.writes_region:
        return Explained(region, "background-snapshot saves RAM as it was when the snapshot "
                         "began while the source guest runs on, rewriting the first byte of "
                         "its region's pages; those bytes are judged by the guest invariant "
                         "on the restored copy")
    return None


def _how_destination_ran(ctx: CellContext) -> str:
    """Why the destination guest ran before the checks: postcopy (the harness
    resumed it at postcopy-active), or QEMU started it itself (dst-start
    autostart: it ran from switchover until the harness stopped it on
    'completed')."""
    if ctx.autostart:
        return ("the destination guest ran from switchover (dst-start autostart: QEMU "
                "started it) until the harness stopped it")
    return "the destination guest ran during postcopy"


async def _compare_ram(ctx: CellContext, run: MigrationRun) -> Path:
    """The RAM checks; returns where the destination's RAM was read from
    (the guest check reads the same bytes)."""
    layout = ram_layout(ctx.cell.target.arch, ctx.cell.target.memory)
    src_ram, dst_ram = ctx.src_paths.ram, ctx.dst_paths.ram
    # What the source's RAM file still holds (release-ram gives pages back;
    # every other cell keeps them all).
    ctx.figures["src_ram_allocated"] = src_allocated = allocated_bytes(src_ram)
    if run.ram_at_switchover is not None:
        # release-ram emptied the source's RAM file as postcopy sent it:
        # compare with the copy taken while the source was held in
        # pre-switchover (stopped, nothing sent in postcopy yet).
        src_ram = run.ram_at_switchover
        ctx.record(check_release_ram(run.ram_allocated_at_switchover, src_allocated,
                                     _postcopy_bytes(run)))
    if os.environ.get(RAM_SOURCE_ENV) == "pmemsave":
        # The fallback where the RAM files cannot be read directly: each
        # QEMU writes its guest-physical memory out itself.
        src_ram, dst_ram = await asyncio.gather(
            pmemsave_ram(ctx.src, layout, ctx.workdir / "src.pmem"),
            pmemsave_ram(ctx.dst, layout, ctx.workdir / "dst.pmem"))
        ctx.figures["ram_source"] = "pmemsave"
    if ctx.shared_ram:
        # One RAM file for both sides: there is nothing to compare; what
        # must hold is that RAM was not sent.
        ctx.figures["ram"] = "one shared RAM file (x-ignore-shared): not compared"
        ctx.record(check_shared_ram_not_sent(run.info, ctx.cell.target.memory))
    elif run.t_dst_resumed is not None and ctx.workload.writes_anywhere:
        # A real OS on the destination writes anywhere in RAM once it runs:
        # no byte can be explained, so the agent's records (the guest check
        # and guest-data) judge its memory instead.
        ctx.figures["ram"] = (f"not compared: {_how_destination_ran(ctx)}, and its OS "
                              "writes anywhere in RAM; the agent's records are checked "
                              "instead (guest, guest-data)")
    else:
        ctx.record(check_ram(src_ram, dst_ram, layout, _explained(ctx, run)))
    return dst_ram


async def _compare_ram_across_hosts(ctx: CellContext, run: MigrationRun) -> Path:
    """The exact RAM check of a placed cell: per-chunk hashes on each host
    (harness.hosts.ram); returns a local mirror of the destination region's
    first bytes for the guest check."""
    assert ctx.sides is not None
    wl, target = ctx.cell.target.workload, ctx.cell.target
    explained = _explained(ctx, run)
    mask = (wl.region_base, wl.region_base + wl.region_size) if explained else None
    diff = await asyncio.to_thread(compare_ram, ctx.sides.src, str(ctx.src_paths.ram),
                                   ctx.sides.dst, str(ctx.dst_paths.ram), target.memory,
                                   mask=mask)
    ctx.record(check_ram_across_hosts(diff, ram_layout(target.arch, target.memory),
                                      explained.reason if explained else None))
    return await asyncio.to_thread(region_mirror, ctx.sides.dst, ctx.dst_paths.ram,
                                   wl.region_base, wl.region_size // PAGE,
                                   ctx.workdir / "dst-region.mirror")


def _behaviour_checks(ctx: CellContext, run: MigrationRun) -> list[CheckResult]:
    """What the cell's capabilities and parameters promise, from the run's
    samples, the stream file and QEMU's trace output."""
    checks = check_modes(run, ctx.params)
    if ctx.caps.get("mapped-ram") and ctx.cell.transport == "file":
        checks.append(check_mapped_ram(ctx.workdir / "migration.stream",
                                       ctx.cell.target.memory))
    if ctx.caps.get("switchover-ack"):
        checks.append(check_switchover_ack(ctx.logdir / f"{ctx.src.role}.stderr",
                                           ctx.logdir / f"{ctx.dst.role}.stderr"))
    return checks


def _postcopy_bytes(run: MigrationRun) -> int:
    """Bytes sent after the switch to postcopy (from the samples and the end total)."""
    before = [s["transferred"] for s in run.samples
              if s.get("status") == "active" and s.get("transferred") is not None]
    total = run.info.get("ram", {}).get("transferred", 0)
    return max(0, total - (before[-1] if before else 0))


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


_coverage_cache: dict[tuple[str, str, str], dict[str, Any]] = {}


async def _coverage(ctx: CellContext) -> CheckResult:
    """Which devices of the machine have state in the migration stream.

    The answer depends only on the build, machine type and accelerator (the
    QOM tree is the same for every cell of them), so it is computed once per
    run and the VMState dump comes from the shared dump cache.  A cell whose
    transport saved the stream to a file (``exec``/``file``: ``migration.stream``
    in the cell's workdir, harness.migration.transports.save_restore_uris) adds
    the evidence of the stream itself, once per key: the first such cell's
    report replaces a cached one made without a stream."""
    build, cell = ctx.src_build, ctx.cell
    key = (build.spec.binary, ctx.machine_type, cell.target.accel)
    stream = None
    if cell.transport in SAVE_RESTORE:
        stream = ctx.workdir / "migration.stream"
        if not stream.is_file():
            stream = None
    cached = _coverage_cache.get(key)
    if cached is None or (stream is not None and "stream" not in cached):
        dump = await asyncio.to_thread(cached_dump, build, ctx.machine_type)
        _coverage_cache[key] = await coverage_report(ctx.src, build, ctx.machine_type,
                                                     dump=dump.dump, stream=stream)
    cov = _coverage_cache[key]
    ctx.figures["coverage"] = cov
    figures = {k: cov[k] for k in ("covered", "not_covered", "not_covered_fine", "truncated")}
    if "stream" in cov:
        figures["stream"] = {k: cov["stream"][k] for k in (
            "decoded", "complete", "error", "not_in_stream", "unmatched_sections")}
    return CheckResult("coverage", cov["passed"], cov["summary"], figures)
