"""The scenario registry: a stable id per scenario, what it is about, where it
applies, and one entry point that runs it and returns a verdict.

Theme modules register their scenarios with :func:`scenario`; the package
(:mod:`harness.scenarios`) imports them all and exposes the registry.  An
entry is plain data plus its body, so a tier can list and select scenarios by
id exactly like matrix cells: ``Scenario.result_id`` is the result's id,
``Scenario.applies_to`` says why a build cannot run it (a skip with a reason,
never a silent pass), and ``Scenario.run`` returns a
:class:`~harness.results.CellResult` (verdict, reason, checks with their
figures) like a cell.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
import traceback
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from qemu.qmp import ExecuteError

from harness.errors import HarnessError
from harness.failpaths import SCENARIO_TIMEOUT, result_id
from harness.logs import cell_logging
from harness.migration.driver import BASE_CAPABILITIES
from harness.qemu.build import QemuBuild
from harness.results import ERROR, SKIPPED, CellResult, judge
from harness.run.rundir import runtime_dir
from harness.scenarios.catalogue import CHECKED_ON
from harness.scenarios.rig import TARGET, Rig

log = logging.getLogger(__name__)

#: Guest RAM of the QEMUs a rig keeps alive at once: the source, a destination
#: that failed or was abandoned, and the fresh one of the second migration
#: (all end with the scenario's exit stack).  What the runner budgets.
RIG_PEAK_MEMORY = 3 * TARGET.memory

Body = Callable[[Rig], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """One failure scenario: stable id, one-line description, where it applies."""

    id: str
    description: str
    #: The module that holds it (cancel, destination, mismatch, refusals, postcopy).
    theme: str
    body: Body = dataclasses.field(compare=False, repr=False)
    #: Oldest QEMU (major, minor) it is claimed for: its expected errors and
    #: states were checked on ``CHECKED_ON`` only.
    min_version: tuple[int, int] = (7, 2)
    #: Newest QEMU it applies to (None: no known end).
    max_version: tuple[int, int] | None = None
    #: Migration capabilities the build must offer (``events`` always).
    capabilities: tuple[str, ...] = ()
    #: Machine types the rig starts (aliases the build must resolve).
    machines: tuple[str, ...] = (TARGET.machine,)
    #: Guest RAM of all the QEMUs it has alive at once (the runner's budget).
    peak_memory: int = RIG_PEAK_MEMORY

    @property
    def doc(self) -> str:
        """The body's docstring: what goes wrong and what is asserted."""
        return (self.body.__doc__ or "").strip()

    def applies_to(self, build: QemuBuild) -> str | None:
        """None when ``build`` can run this scenario (both sides), else why not."""
        if build.missing:
            return f"build '{build.name}' missing: {build.missing}"
        if build.arch and build.arch != TARGET.arch:
            return f"the rig's guest is {TARGET.arch}; build '{build.name}' is {build.arch}"
        version = build.version[:2]
        if version < self.min_version or (self.max_version and version > self.max_version):
            return (f"QEMU {build.version_text} is outside {self.versions_text()} for "
                    f"scenario {self.id}")
        lacking = [c for c in (*BASE_CAPABILITIES, *self.capabilities)
                   if c not in build.capabilities]
        if lacking:
            return f"QEMU {build.version_text} lacks capabilities {lacking}"
        no_machine = [m for m in self.machines if build.resolve_machine(m) is None]
        if no_machine:
            return f"build '{build.name}' has no machine {no_machine}"
        return None

    def versions_text(self) -> str:
        low = ".".join(map(str, self.min_version))
        return f"{low}-{'.'.join(map(str, self.max_version))}" if self.max_version \
            else f">= {low}"

    def result_id(self, build_label: str) -> str:
        """The result's id for a build (``failpath-<id>-<label>``)."""
        return result_id(self.id, build_label)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly entry for listings."""
        return {"id": self.id, "description": self.description, "theme": self.theme,
                "versions": self.versions_text(), "checked_on": list(CHECKED_ON),
                "capabilities": list(self.capabilities), "machines": list(self.machines)}

    async def run_async(self, build: QemuBuild, logdir: Path,
                        result_id: str | None = None) -> CellResult:
        """Run on ``build`` (both sides); never raises for a failure: a QEMU
        or harness problem is an ``error`` result with the reason."""
        rid = result_id or self.result_id(build.name)
        logdir.mkdir(parents=True, exist_ok=True)
        result = CellResult(id=rid, verdict=ERROR,
                            inputs={"scenario": self.id, "theme": self.theme,
                                    "description": self.description, "build": build.name,
                                    "version": build.version_text,
                                    "target": dataclasses.asdict(TARGET)},
                            logdir=str(logdir),
                            builds={"source": build.brief(), "destination": build.brief()})
        why_not = self.applies_to(build)
        if why_not:
            result.verdict, result.reason = SKIPPED, why_not
            return result
        # cell_logging is re-entrant: run as a matrix cell (harness.run.cellrun
        # already logs this id to this folder), records are written once.
        with cell_logging(rid, logdir):
            await self._run(build, logdir, result)
        return result

    async def _run(self, build: QemuBuild, logdir: Path, result: CellResult) -> None:
        log.info("scenario %s on %s (QEMU %s)", self.id, build.name, build.version_text)
        t0 = time.monotonic()
        workdir = runtime_dir()
        rig: Rig | None = None
        try:
            async with AsyncExitStack() as stack:
                rig = Rig(build, logdir, workdir, stack)
                await asyncio.wait_for(self.body(rig), SCENARIO_TIMEOUT)
            result.verdict, result.reason = judge(rig.checks)
            if not rig.checks:
                result.verdict, result.reason = ERROR, "scenario made no checks"
        except asyncio.TimeoutError:
            result.reason = f"scenario watchdog expired after {SCENARIO_TIMEOUT:.0f} s"
        except (HarnessError, ExecuteError) as exc:
            result.reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a harness bug is an error result, not a crash
            result.reason = f"harness error {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            result.duration = round(time.monotonic() - t0, 3)
            if rig is not None:
                result.checks = rig.checks
                result.figures = rig.figures
        log.info("scenario %s: %s%s", self.id, result.verdict,
                 f" ({result.reason})" if result.reason else "")

    def run(self, build: QemuBuild, logdir: Path, result_id: str | None = None) -> CellResult:
        """Synchronous facade for pytest and scripts."""
        return asyncio.run(self.run_async(build, logdir, result_id))


#: Every registered scenario by id, in registration order.
SCENARIOS: dict[str, Scenario] = {}


def scenario(id: str, description: str, *, min_version: tuple[int, int] = (7, 2),
             max_version: tuple[int, int] | None = None, capabilities: tuple[str, ...] = (),
             machines: tuple[str, ...] = (TARGET.machine,),
             peak_memory: int = RIG_PEAK_MEMORY) -> Callable[[Body], Body]:
    """Register the decorated body under ``id`` (stable: test and result ids
    are built from it)."""
    def register(body: Body) -> Body:
        if id in SCENARIOS:
            raise ValueError(f"scenario id '{id}' registered twice")
        SCENARIOS[id] = Scenario(id, description, body.__module__.rpartition(".")[2], body,
                                 min_version, max_version, capabilities, machines,
                                 peak_memory)
        return body
    return register
