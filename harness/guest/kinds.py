"""Which workload strategy a cell gets, over every kind the harness has.

harness.guest.workload holds the strategy interface and the built-in guests
(dirtiers, pattern); kinds with modules of their own (``linux``:
harness.guest.linux, which builds on that interface) are added here, so the
interface module never imports its implementations.
"""
from __future__ import annotations

from pathlib import Path

from harness.cell import Cell
from harness.guest import workload
from harness.guest.linux import LinuxWorkload
from harness.guest.workload import Workload

__all__ = ["workload_for"]


def workload_for(cell: Cell, workdir: Path, logdir: Path | None = None) -> Workload:
    """The workload strategy for ``cell`` (its ``workload.kind``); ``logdir``
    is the cell's log folder (kinds with logs of their own write there)."""
    if cell.target.workload.kind == LinuxWorkload.kind:
        return LinuxWorkload(cell, workdir, logdir)
    return workload.workload_for(cell, workdir)
