"""The rig every failure scenario runs on: one small guest, QEMUs of one build.

A :class:`Rig` starts the source and as many destinations as a scenario needs
(all ended by the scenario's exit stack), applies capabilities and parameters
through the driver (read back, like a matrix cell), and holds the checks and
figures the scenario produces.  Its helpers are the checks a user relies on
after a failure: the source runs again and its guest heartbeats, its RAM is
intact (a fresh migration through the driver completes with the exact RAM
check and the guest invariant), QEMU's error is the expected one.
"""
from __future__ import annotations

import logging
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from harness.cell import TargetSpec
from harness.checks.guest import check_guest_invariant
from harness.checks.ram import check_ram, x86_layout
from harness.errors import HarnessError
# The guest every scenario migrates: defined with the scenario ids, which the
# matrix reads without importing QEMU code.
from harness.failpaths import TARGET
from harness.guest.dirtier import HeartbeatParser
from harness.migration.driver import (BASE_CAPABILITIES, MigrationRun, configure,
                                      run_migration, settle_destination, start_until)
from harness.migration.launch import prepare_machine
from harness.migration.proxy import Proxy
from harness.migration.waits import STATE_TIMEOUT, wait_progress
from harness.qemu.build import QemuBuild
from harness.qemu.cmdline import MachinePaths
from harness.qemu.machine import Machine
from harness.results import CheckResult
from harness.scenarios.catalogue import ERRORS
from harness.scenarios.verdicts import judge_error, judge_running, judge_state
from harness.units import PAGE, MiB
from harness.waiting import WaitAborted, WaitTimeout

log = logging.getLogger(__name__)

#: Fast enough that 16 MiB of dirtying converges in well under a second.
FAST = 10 * 1024 ** 3
#: Slow enough that a 16 MiB region being rewritten never converges (the
#: expected downtime stays above the default 300 ms limit): the migration
#: stays ``active`` until the scenario acts on it.
SLOW = 32 * MiB
#: How long a source may take to boot and make its warm-up passes.
WARMUP_TIMEOUT = 30.0


@dataclass
class Side:
    """One QEMU of a scenario, with its files and its guest's heartbeats."""

    machine: Machine
    paths: MachinePaths
    hb: HeartbeatParser
    target: TargetSpec

    @property
    def m(self) -> Machine:
        return self.machine

    def stderr(self) -> str:
        path = self.machine.logdir / f"{self.machine.role}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def invariant(self) -> CheckResult:
        """The guest invariant on this side's RAM file (the VM must be stopped)."""
        wl = self.target.workload
        check, _ = check_guest_invariant(self.paths.ram, wl.region_base,
                                         wl.region_size // PAGE, wl.region_base)
        return check


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def source_running(side: Side, beats: int = 2, timeout: float = 10.0) -> CheckResult:
    """The live check: ``query-status`` says running and the guest sends
    ``beats`` new heartbeats within ``timeout``."""
    status = await side.m.status()
    before = side.hb.heartbeats
    t = time.monotonic()
    if status == "running":
        try:
            await wait_progress(side.m, lambda: side.hb.heartbeats, before + beats, timeout,
                                f"{side.m.role} heartbeats")
        except (WaitTimeout, WaitAborted) as exc:
            log.warning("%s", exc)
    return judge_running(status, before, side.hb.heartbeats, beats, time.monotonic() - t)


class Rig:
    """Starts and owns the QEMUs of one scenario (all ended by ``stack``)."""

    def __init__(self, build: QemuBuild, logdir: Path, workdir: Path, stack: AsyncExitStack,
                 target: TargetSpec = TARGET) -> None:
        self.build = build
        self.logdir = logdir
        self.workdir = workdir
        self.stack = stack
        self.target = target
        self.t0 = time.monotonic()
        self.checks: list[CheckResult] = []
        self.figures: dict[str, Any] = {"errors": {}}
        self._n = 0

    def add(self, check: CheckResult) -> CheckResult:
        self.checks.append(check)
        if check.passed:
            log.debug("check %s passed: %s", check.name, check.summary)
        else:
            log.warning("check %s failed: %s", check.name, check.summary)
        return check

    def machine_type(self, target: TargetSpec) -> str:
        mt = self.build.resolve_machine(target.machine)
        if mt is None:
            raise HarnessError(f"{self.build.name} has no machine '{target.machine}'")
        return mt

    # -- machines -------------------------------------------------------------
    async def launch(self, role: str, *, incoming: bool, target: TargetSpec | None = None,
                     extra: tuple[str, ...] = (), caps: dict[str, bool] | None = None,
                     params: dict[str, Any] | None = None) -> Side:
        target = target or self.target
        hb = HeartbeatParser(expect_banner=not incoming)
        m, paths = prepare_machine(role, self.build, target, self.workdir, self.logdir, self.t0,
                                   incoming=incoming, machine_type=self.machine_type(target),
                                   extra=extra, serial_sink=hb.feed)
        self.stack.push_async_callback(m.close)
        await m.start()
        await configure(m, self.build, {**BASE_CAPABILITIES, **(caps or {})},
                        {"max-bandwidth": FAST, **(params or {})})
        log.info("%s started (%s, %s MiB%s)", role, target.machine, target.memory // MiB,
                 ", incoming" if incoming else "")
        return Side(m, paths, hb, target)

    async def source(self, **kw: Any) -> Side:
        """The source, once its guest has made its warm-up passes."""
        src = await self.launch("src", incoming=False, **kw)
        try:
            await wait_progress(src.m, lambda: src.hb.heartbeats,
                                src.target.workload.warmup_passes, WARMUP_TIMEOUT,
                                "source warm-up heartbeats")
        except (WaitTimeout, WaitAborted) as exc:
            raise HarnessError(str(exc)) from exc
        return src

    async def destination(self, **kw: Any) -> Side:
        self._n += 1
        return await self.launch(f"dst{self._n}", incoming=True, **kw)

    async def listen(self, dst: Side) -> str:
        uri = f"unix:{self.workdir / (dst.m.role + '.mig')}"
        await dst.m.execute("migrate-incoming", {"uri": uri})
        return uri

    async def migrate_until(self, src: Side, dst: Side, state: str, when: str = "") -> int:
        """Start migrating ``src`` to ``dst`` (listening from now) and return,
        with the event index the migration started at, once the source is in
        ``state``: the scenario acts on the migration there.  The ``in-<state>``
        check records whether it got there (summary ``state<when>: <state>``)."""
        since, got = await start_until(src.m, await self.listen(dst), state)
        self.add(CheckResult(f"in-{state}", got == state, f"state{when}: {got}"))
        return since

    async def proxy(self, host: str, port: int) -> Proxy:
        """A breakable loopback proxy to ``host:port``, closed with the scenario."""
        proxy = Proxy(host, port)
        await proxy.start()
        self.stack.push_async_callback(proxy.close)
        return proxy

    # -- QEMU's errors --------------------------------------------------------
    async def expect_refusal(self, name: str, m: Machine, cmd: str,
                             args: dict[str, Any] | None = None) -> CheckResult:
        """Run a command QEMU must refuse; record and judge the error."""
        try:
            await m.execute(cmd, args)
        except ExecuteError as exc:
            cls, text = exc.error_class, str(exc)  # qemu.qmp: str() is the error's "desc"
        else:
            cls, text = None, None
        self.figures["errors"][name] = {"class": cls, "text": text}
        return self.add(judge_error(name, ERRORS[name], cls, text))

    def expect_text(self, name: str, text: str | None, key: str | None = None) -> CheckResult:
        """Judge an error that is not a QMP reply (error-desc, stderr)."""
        expect = ERRORS[key or name]
        found = None
        if text is not None:
            for line in text.splitlines():
                if expect.matches(line):
                    found = line.strip()
                    break
        self.figures["errors"][name] = {"text": found if found else text}
        return self.add(judge_error(name, expect, None, found if found else
                                    (text.strip()[-300:] or "(empty)") if text else None))

    # -- what a user relies on afterwards ---------------------------------------
    async def source_running(self, src: Side, beats: int = 2, timeout: float = 10.0
                             ) -> CheckResult:
        return self.add(await source_running(src, beats, timeout))

    async def source_invariant(self, src: Side) -> CheckResult:
        """Stop the source, check the guest invariant on its RAM file, resume it."""
        await src.m.execute("stop")
        check = src.invariant()
        check.name = "source-guest"
        await src.m.execute("cont")
        return self.add(check)

    async def migrate(self, src: Side, dst: Side, uri: str,
                      refusals: list[dict[str, Any]] | None = None) -> MigrationRun:
        """One whole migration through the driver (with the source's current
        capabilities, so e.g. pause-before-switchover is honoured)."""
        caps = {c["capability"]: c["state"]
                for c in await src.m.execute("query-migrate-capabilities")}
        return await run_migration(src.m, dst.m, uri, caps, STATE_TIMEOUT, self.t0,
                                   refusals=refusals)

    async def judge_completed(self, src: Side, dst: Side, status: str | None,
                              states: list[str]) -> None:
        """The migration must have completed; then the destination, once
        settled and paused, must hold exactly the source's RAM."""
        self.add(judge_state("migration", status, "completed", states))
        if status == "completed":
            await settle_destination(dst.m)
            self.add(check_ram(src.paths.ram, dst.paths.ram, x86_layout(src.target.memory)))

    async def migrate_ok(self, src: Side, *, dst_kw: dict[str, Any] | None = None,
                         label: str = "second-migration",
                         refusals: list[dict[str, Any]] | None = None) -> Side:
        """Migrate to a fresh destination with the driver: it must complete,
        the RAM must be identical and the guest invariant must hold on the
        paused destination.  ``refusals``: see :func:`harness.migration.driver.start`."""
        await src.m.execute("migrate-set-parameters", {"max-bandwidth": FAST})
        dst = await self.destination(**(dst_kw or {}))
        run = await self.migrate(src, dst, await self.listen(dst), refusals=refusals)
        self.add(judge_state(label, run.status, "completed", run.states))
        if not run.completed:
            self.figures[label] = {"error-desc": run.info.get("error-desc"),
                                   "error": run.error, "dst_stderr": dst.stderr()[-500:]}
            return dst
        await settle_destination(dst.m)
        ram = check_ram(src.paths.ram, dst.paths.ram, x86_layout(src.target.memory))
        ram.name = f"{label}-ram"
        self.add(ram)
        guest = dst.invariant()
        guest.name = f"{label}-guest"
        self.add(guest)
        return dst
