"""A precopy cell whose source and destination run on two hosts.

The steps of the local cell flow, on :class:`~harness.qemu.machine.Machine`
with a ``host``: the guest disk is copied once per host (cached by content
hash), guest RAM lives in a file on each host, the destination listens on its
host's own address (``tcp:ADDR:0``, the port QEMU reports), and the exact RAM
check compares per-chunk sha256s computed on each host, fetching only
differing chunks to count and locate the differing pages.
"""
from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cell import TargetSpec
from harness.guest.dirtier import make_disk
from harness.hosts.base import HASH_CHUNK, Host
from harness.migration import driver
from harness.migration.transports import incoming_uri
from harness.qemu.build import QemuBuild
from harness.qemu.cmdline import MachinePaths, machine_argv
from harness.qemu.machine import Machine
from harness.units import PAGE
from harness.waiting import poll_until

log = logging.getLogger(__name__)


@dataclass
class RamDiff:
    """Exact RAM comparison across hosts."""

    chunks: int
    differing_chunks: list[int]
    differing_pages: int
    first_page: int | None


@dataclass
class RemoteCellResult:
    status: str
    ram: RamDiff | None = None
    dst_resumed: bool = False
    figures: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def compare_ram(src: Host, src_path: str, dst: Host, dst_path: str,
                chunk: int = HASH_CHUNK) -> RamDiff:
    # Both hosts hash at once: each is a python3 started over SSH, whose round
    # trip costs as much as the hashing (benchmarks/remote_cell.py).
    with ThreadPoolExecutor(1) as pool:
        theirs = pool.submit(dst.chunk_hashes, dst_path, chunk)
        a, b = src.chunk_hashes(src_path, chunk), theirs.result()
    differing = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    differing += list(range(min(len(a), len(b)), max(len(a), len(b))))
    pages, first = 0, None
    for i in differing:
        x = src.read_range(src_path, i * chunk, chunk)
        y = dst.read_range(dst_path, i * chunk, chunk)
        for off in range(0, max(len(x), len(y)), PAGE):
            if x[off:off + PAGE] != y[off:off + PAGE]:
                pages += 1
                if first is None:
                    first = i * chunk + off
    return RamDiff(len(a), differing, pages, first)


def _machine(role: str, host: Host, build: QemuBuild, target: TargetSpec, local: Path,
             disk: Path, logdir: Path, t0: float, incoming: bool) -> tuple[Machine, str]:
    rdir = host.workdir(role)
    paths = MachinePaths(qmp=local / f"{role}.qmp", serial=local / f"{role}.serial",
                         ram=Path(f"{rdir}/{role}.ram"), disk=Path(host.cached_copy(disk)))
    argv = machine_argv(build, target, paths, incoming=incoming, machine_type=target.machine)
    return Machine(role, argv, build.env(), qmp_path=paths.qmp, serial_path=paths.serial,
                   logdir=logdir, t0=t0, host=host), str(paths.ram)


async def run_remote_cell(build: QemuBuild, target: TargetSpec, src_host: Host, dst_host: Host,
                          dst_addr: str, logdir: Path, caps: dict[str, bool] | None = None,
                          params: dict[str, Any] | None = None, timeout: float = 60.0
                          ) -> RemoteCellResult:
    """Migrate ``target``'s guest from ``src_host`` to ``dst_host`` over tcp to
    ``dst_addr`` (an address of the destination host the source can reach).

    ``caps`` and ``params`` are all the cell gets beyond ``events``: pass the
    matrix's defaults as a local cell has them (its ``max-bandwidth``: at
    QEMU's own default, MAX_THROTTLE = 128 MiB/s in migration/migration.c
    (7.2) and migration/options.c (10.0), the dirtier outruns precopy on an
    idle machine)."""
    caps = {**driver.BASE_CAPABILITIES, **(caps or {})}
    params = params or {}
    t0 = time.monotonic()
    logdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mharness-remote-") as tmp:
        local = Path(tmp)
        wl = target.workload
        disk = make_disk(local / "guest.disk", wl.region_base, wl.region_size)
        src, src_ram = _machine("src", src_host, build, target, local, disk, logdir, t0, False)
        dst, dst_ram = _machine("dst", dst_host, build, target, local, disk, logdir, t0, True)
        async with src, dst:
            for m in (src, dst):
                await driver.configure(m, build, caps, params)
            uri = await incoming_uri("tcp", dst, local, tcp_addr=dst_addr)
            # the guest runs (its heartbeats reach us through the forwarded serial)
            await poll_until(lambda: src.serial.nbytes, lambda n: n > 64, timeout=60,
                             what="source guest heartbeats", interval=0.05)
            run = await driver.run_migration(src, dst, uri, caps, timeout, t0)
            result = RemoteCellResult(status=run.status, figures={
                k: run.info.get(k) for k in ("total-time", "downtime", "setup-time")})
            if run.status != "completed":
                result.error = f"migration ended {run.status}"
                return result
            result.ram = await asyncio.to_thread(compare_ram, src_host, src_ram, dst_host, dst_ram)
            await dst.execute("cont")
            result.dst_resumed = await dst.status() == "running"
            return result
