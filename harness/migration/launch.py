"""One QEMU of a cell, ready to start: its files, its command line, its Machine.

Shared by the cell flow (harness.migration.flow) and the failure-path scenarios'
rig (harness.scenarios), which both run QEMUs in a private runtime folder with
RAM in a file there, so the same layout and command line serve both.  What the
guest needs on the command line comes from the caller (for the flow, the
workload strategy: harness.guest.workload).
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from harness.cell import TargetSpec
from harness.qemu.build import QemuBuild
from harness.qemu.cmdline import MachinePaths, machine_argv
from harness.qemu.machine import Machine
from harness.guest.dirtier import make_disk

if TYPE_CHECKING:
    from harness.hosts.base import Host

log = logging.getLogger(__name__)


def prepare_machine(name: str, build: QemuBuild, target: TargetSpec, workdir: Path,
                    logdir: Path, t0: float, *, incoming: bool, machine_type: str,
                    extra: tuple[str, ...] | list[str] = (), with_disk: bool = True,
                    ram: Path | None = None, prealloc: bool = True,
                    serial_sink: Callable[[bytes, float], None] | None = None,
                    start_paused: bool = True, host: "Host | None" = None
                    ) -> tuple[Machine, MachinePaths]:
    """A Machine named ``name`` (not started) and the files it uses.

    ``with_disk``: a per-machine copy of the dirtier boot disk for the
    target's region; ``ram``: another RAM file than ``<name>.ram`` (one RAM
    file shared by both sides, for x-ignore-shared); ``start_paused``: an
    incoming machine gets ``-S`` (False: ``dst-start: autostart``); ``host``:
    where it runs (None: here; its paths are then the caller's to place)."""
    wl = target.workload
    disk = make_disk(workdir / f"{name}.disk", wl.region_base, wl.region_size) \
        if with_disk else None
    paths = MachinePaths(qmp=workdir / f"{name}.qmp", serial=workdir / f"{name}.serial",
                         ram=ram or workdir / f"{name}.ram", disk=disk)
    argv = machine_argv(build, target, paths, incoming=incoming, machine_type=machine_type,
                        extra=tuple(extra), prealloc=prealloc, start_paused=start_paused)
    log.debug("%s: %s", name, shlex.join(argv))
    m = Machine(name, argv, build.env(), qmp_path=paths.qmp, serial_path=paths.serial,
                logdir=logdir, t0=t0, serial_sink=serial_sink, host=host)
    return m, paths
