"""Everything one running cell carries from phase to phase.

The flow's phases (harness.migration.flow) each take a :class:`CellContext`:
the cell and its builds, its folders and clock, the capabilities and
parameters it applies, its machines once launched, its workload strategy, and
the :class:`Evidence` being collected.  Checks enter the evidence through
:meth:`CellContext.record`, the one place where a cell's ``expect-fail``
marking is applied.

:class:`CellHooks` is the flow's documented extension point for the harness's
own tests: fault injectors that act at fixed points of a real cell.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from harness.cell import Cell
from harness.errors import HarnessError
from harness.guest.workload import Workload
from harness.migration.driver import BASE_CAPABILITIES, MigrationRun
from harness.migration.dst_start import AUTOSTART
from harness.migration.placed import Sides
from harness.progress import MigrationProgress, ProgressFn
from harness.qemu.build import QemuBuild
from harness.qemu.cmdline import MachinePaths
from harness.qemu.machine import Machine
from harness.results import FAILED, CheckResult

log = logging.getLogger(__name__)

#: Told the name of each phase as it starts, and each sample of the migration
#: under way (:class:`harness.progress.MigrationProgress`): the runner's
#: live progress.
Progress = ProgressFn

#: A fault injector for the harness's own tests: called with the source's and
#: destination's RAM files while both VMs are stopped, before the checks.
Inject = Callable[[Path, Path], None]

#: Called with each migration sample while the migration runs (the driver's
#: ``on_sample``): a test may act mid-migration (e.g. cut a host's SSH
#: connection).
Migrating = Callable[["CellContext", dict[str, Any]], None]

#: Called once the migration completed with both sides stopped (the source in
#: ``postmigrate``, the destination paused), before any check: it may act on
#: the machines (``ctx.src``, ``ctx.dst``) to plant a fault the checks must see.
AfterMigrate = Callable[["CellContext", MigrationRun], Awaitable[None]]


@dataclass(frozen=True)
class CellHooks:
    """Fixed points where the harness's own tests may act on a real cell.

    Production runs pass none; ``after_migrate`` and ``inject`` run exactly
    once per cell that gets that far (a cell whose migration did not complete
    runs neither); ``migrating`` runs for each sample of the migration."""

    #: See :data:`AfterMigrate`.
    after_migrate: AfterMigrate | None = None
    #: See :data:`Inject`.
    inject: Inject | None = None
    #: See :data:`Migrating`.
    migrating: Migrating | None = None


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


@dataclass
class CellContext:
    """One cell while it runs.  Machines are set by the launch phase (and the
    destination replaced by a cancel-retry cell's second attempt)."""

    cell: Cell
    src_build: QemuBuild
    dst_build: QemuBuild
    #: Private runtime folder (sockets, RAM files, disks); removed afterwards.
    workdir: Path
    #: The cell's log folder (QEMU stderr, serial, QMP transcript), kept.
    logdir: Path
    #: Host monotonic time the cell started; QEMU logs are stamped from it.
    t0: float
    workload: Workload
    progress: Progress = lambda _: None
    hooks: CellHooks = field(default_factory=CellHooks)
    evidence: Evidence = field(default_factory=Evidence)
    #: Ends every QEMU started for the cell, whatever happens.
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    caps: dict[str, bool] = field(init=False)
    params: dict[str, Any] = field(init=False)
    machine_type: str = ""
    #: The source's ``downtime-limit`` once configured (ms).
    limit_ms: float = 0.0
    src: Machine = field(init=False)
    src_paths: MachinePaths = field(init=False)
    dst: Machine = field(init=False)
    dst_paths: MachinePaths = field(init=False)
    #: The cell's hosts when it is placed on any (harness.migration.placed;
    #: None: both sides here, as every local cell).
    sides: Sides | None = None

    def __post_init__(self) -> None:
        self.caps = {**BASE_CAPABILITIES, **dict(self.cell.capabilities)}
        self.params = dict(self.cell.parameters)

    @property
    def figures(self) -> dict[str, Any]:
        return self.evidence.figures

    @property
    def autostart(self) -> bool:
        """``dst-start: autostart``: the destination has no ``-S`` and QEMU
        starts the guest itself (harness.migration.dst_start)."""
        return self.cell.dst_start == AUTOSTART

    @property
    def shared_ram(self) -> bool:
        """x-ignore-shared: both sides map the source's RAM file."""
        return bool(self.caps.get("x-ignore-shared", False))

    def remote(self, role: str) -> bool:
        """The ``src`` or ``dst`` side runs on another host."""
        return self.sides is not None and not self.sides.host(role).is_local

    def record(self, check: CheckResult) -> CheckResult:
        """Add a check to the evidence, marked when the cell declared it a
        negative control (``expect-fail``)."""
        check.expected_to_fail = check.name in self.cell.expect_fail
        self.evidence.checks.append(check)
        if check.as_expected:
            log.info("check %s %s%s: %s", check.name, "passed" if check.passed else "failed",
                     " (expected)" if check.expected_to_fail else "", check.summary)
        else:
            log.warning("check %s %s%s: %s", check.name, "passed" if check.passed else "failed",
                        " (expected to fail)" if check.expected_to_fail else "", check.summary)
        return check

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase into the evidence and name it in progress output."""
        self.progress(name)
        log.debug("phase %s: start", name)
        t = time.monotonic()
        try:
            yield
        finally:
            self.evidence.phases[name] = time.monotonic() - t
            log.debug("phase %s: done in %.3f s", name, self.evidence.phases[name])

    def report_sample(self, sample: dict[str, Any]) -> None:
        """Pass a migration sample (the driver's ``on_sample``) to progress
        output."""
        self.progress(MigrationProgress.from_sample(sample))
