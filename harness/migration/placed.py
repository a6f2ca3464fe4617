"""The parts of the cell flow that differ when a side runs on another host.

A cell placed on hosts (``src-host``/``dst-host``, ``mharness run --hosts``;
:attr:`harness.cell.Cell.placed`) goes through the same phases as a local
one (harness.migration.flow).  What changes is only *where* things are:

- each side's QEMU starts on its host through :class:`harness.hosts.base.Host`
  (QMP and serial forwarded back over SSH, so the flow drives it as before),
  its command line's files copied to a per-cell folder there
  (harness.hosts.placement), removed when the cell ends;
- the destination listens on its host's address (tcp); TLS credentials name
  that address and are copied to both hosts;
- RAM stays on each host: the exact RAM check compares per-chunk hashes
  computed there (harness.hosts.ram), the guest invariant and liveness read
  the first byte of each region page on the destination's host;
- the guest gap is timed by this machine's clock as heartbeats arrive
  through SSH, so it carries the hosts' timing uncertainty (half the round
  trip of a clock reading, harness.hosts.ssh.SshHost.clock): see
  :func:`timing_uncertainty_ms`.

What a placed cell cannot do yet is refused up front by
:func:`placement_problem` with the reason.
"""
from __future__ import annotations

import asyncio
import logging
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.cell import Cell
from harness.hosts import LOCAL, HostSpec, host_for
from harness.hosts.base import ClockReading, Host, HostError
from harness.hosts.placement import place_argv
from harness.qemu.cmdline import MachinePaths
from harness.qemu.machine import Machine
from harness.units import PAGE

log = logging.getLogger(__name__)

#: Capabilities whose evidence is read from files on this machine (the RAM
#: file itself, a copy of it, the image's locks): not across hosts yet.
LOCAL_ONLY_CAPS = ("x-ignore-shared", "release-ram", "background-snapshot",
                   "late-block-activate", "mapped-ram")


def placement_problem(cell: Cell) -> str | None:
    """Why this placed cell cannot run across hosts (None: it can)."""
    if not cell.placed:
        return None
    where = f"cell on hosts {_name(cell.src_host)} -> {_name(cell.dst_host)}"
    if cell.transport != "tcp":
        return (f"{where}: transport {cell.transport} is for one machine; across hosts the "
                "destination listens on its host's address (tcp)")
    if cell.dst_host is None:
        return (f"{where}: a destination on this machine needs an address of it that host "
                f"'{_name(cell.src_host)}' reaches; not supported yet (put the destination "
                "on an inventory host)")
    if cell.target.workload.kind != "dirtier" or cell.target.arch not in ("x86_64", "i386"):
        return (f"{where}: workload {cell.target.workload.kind} on {cell.target.arch} reads "
                "guest RAM here; across hosts only the x86 dirtier runs yet")
    on = [c for c, v in cell.capabilities if v and c in LOCAL_ONLY_CAPS]
    if on:
        return (f"{where}: {', '.join(on)} is checked from files on this machine; not "
                "across hosts yet")
    return None


def _name(spec: HostSpec | None) -> str:
    return spec.name if spec is not None else LOCAL


@dataclass
class Sides:
    """The hosts of one cell and their per-cell folders."""

    src: Host
    dst: Host
    #: Host name -> this cell's folder there (remote hosts only).
    dirs: dict[str, str]
    #: Host name -> this cell's folder for guest RAM there (on tmpfs).
    ram_dirs: dict[str, str]
    #: Role ("source", "destination") -> the host's clock reading (remote only).
    clocks: dict[str, ClockReading]

    def host(self, role: str) -> Host:
        return self.src if role == "src" else self.dst

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.src.name, "destination": self.dst.name}
        for role, c in self.clocks.items():
            out[f"{role}_clock_offset_ms"] = round(c.offset * 1000, 2)
            out[f"{role}_clock_uncertainty_ms"] = round(c.uncertainty * 1000, 2)
        return out


async def open_sides(cell: Cell, workdir: Path) -> Sides:
    """Connect to the cell's hosts (connections are shared per host), make
    its folder on each remote one, and read each remote clock."""
    specs = (cell.src_host or HostSpec(LOCAL), cell.dst_host or HostSpec(LOCAL))
    src, dst = await asyncio.gather(*(asyncio.to_thread(host_for, s) for s in specs))
    dirs: dict[str, str] = {}
    ram_dirs: dict[str, str] = {}
    clocks: dict[str, ClockReading] = {}

    async def folders(host: Host) -> None:
        dirs[host.name], ram_dirs[host.name] = await asyncio.gather(
            asyncio.to_thread(host.workdir, workdir.name),
            asyncio.to_thread(host.ram_dir, workdir.name))  # type: ignore[attr-defined]

    async def clock(role: str, host: Host) -> None:
        clocks[role] = await asyncio.to_thread(host.clock)
        log.info("%s on host %s: clock offset %+.1f ms +- %.1f ms", role, host.name,
                 clocks[role].offset * 1000, clocks[role].uncertainty * 1000)

    # Each step is an SSH round trip (a command on the host): all at once.
    remote = {h.name: h for h in (src, dst) if not h.is_local}
    await asyncio.gather(*(folders(h) for h in remote.values()),
                         *(clock(role, h) for role, h in (("source", src), ("destination", dst))
                           if not h.is_local))
    return Sides(src, dst, dirs, ram_dirs, clocks)


async def remove_dirs(sides: Sides) -> None:
    """The cell's folders on its hosts (RAM files: hundreds of MiB) go with it."""
    for host in {h.name: h for h in (sides.src, sides.dst)}.values():
        for path in (sides.dirs.get(host.name), sides.ram_dirs.get(host.name)):
            if path is None:
                continue
            try:
                await asyncio.to_thread(host.remove_tree, path)
            except HostError as exc:
                log.warning("cell folder %s left on host %s: %s", path, host.name, exc)


async def place_machine(host: Host, m: Machine, paths: MachinePaths, workdir: Path,
                        remote_dir: str, ram_dir: str) -> MachinePaths:
    """Move a prepared Machine's command line to ``host`` (its RAM file in
    ``ram_dir``, the rest in ``remote_dir``); the paths it now uses there."""
    ram = Path(posixpath.join(ram_dir, paths.ram.name))
    argv = [a.replace(f"mem-path={paths.ram},", f"mem-path={ram},") for a in m.argv]
    m.argv = await asyncio.to_thread(place_argv, host, argv, workdir, remote_dir,
                                     (paths.qmp, paths.serial))
    (m.logdir / f"{m.role}.argv").write_text(" ".join(m.argv) + "\n")

    def there(p: Path | None) -> Path | None:
        return None if p is None else Path(posixpath.join(remote_dir, p.name))
    return replace(paths, ram=ram, disk=there(paths.disk))


def tcp_address(sides: Sides) -> str:
    """Where the destination listens: its host's address (this machine's
    loopback when it runs here)."""
    spec = getattr(sides.dst, "spec", None)
    return spec.addr if spec is not None and not sides.dst.is_local else "127.0.0.1"


def region_reader(host: Host) -> Any:
    """``Workload.read_region`` for RAM on ``host``: one strided read there."""
    def read(path: Path, offset: int, pages: int) -> np.ndarray:
        data = host.read_strided(str(path), offset, pages, PAGE)
        return np.frombuffer(data, dtype=np.uint8).copy()
    return read


def region_mirror(host: Host, ram: Path, base: int, pages: int, mirror: Path) -> Path:
    """A local file holding, at the same offsets, the first byte of each
    region page of ``ram`` on ``host`` (all the guest check reads)."""
    values = region_reader(host)(ram, base, pages)
    mm = np.memmap(mirror, dtype=np.uint8, mode="w+", shape=(base + pages * PAGE,))
    mm[base::PAGE][:pages] = values
    mm.flush()
    del mm
    return mirror


def timing_uncertainty_ms(sides: Sides) -> float:
    """How far the guest gap, timed here from heartbeats forwarded over SSH,
    may be off: each heartbeat's trip from its host is at most a round trip
    of that host's connection, so the difference of the two trips is at most
    the longest round trip (twice the clock reading's uncertainty)."""
    return max((2 * c.uncertainty * 1000 for c in sides.clocks.values()), default=0.0)
