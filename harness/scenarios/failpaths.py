"""Failure-path migrations: what a user relies on when a migration goes wrong.

Each scenario runs against real QEMU with the dirtier guest, makes one thing go
wrong (a bad destination, a cancel in a given state, a killed destination, a
configuration the destination refuses, a QMP command QEMU must refuse, the
migration channel cut during postcopy by the harness's proxy) and asserts what
a user depends on afterwards:

* the migration ends in the right state with the right error (a message
  pattern per error, tolerant to wording drift between 7.2 and 10.0, with the
  QEMU function that raises it cited next to it);
* the source VM is ``running`` again and its guest keeps heartbeating;
* its RAM is intact: a second migration, to a fresh destination, completes
  and passes the exact RAM comparison and the guest invariant (or, where no
  migration is needed, the guest invariant holds on the stopped source).

Postcopy recovery is the exception to "the source runs again": once postcopy
has started the destination owns the guest, so ``postcopy-recover`` asserts
that both sides pause, resume over a new channel and complete, that the RAM
is exact but for the bytes the running destination guest rewrote, and that the
destination guest runs on.

A scenario returns a :class:`~harness.results.CellResult` (checks with their
figures, the error texts QEMU gave, the states seen), like a matrix cell.
The verdict functions (``judge_*``) are pure so tests can show each can fail.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import socket
import time
import traceback
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from qemu.qmp import ExecuteError

from harness.cell import MiB, TargetSpec, WorkloadSpec
from harness.checks.guest import check_guest_invariant
from harness.checks.ram import Explained, check_ram, x86_layout
from harness.migration.driver import POSTCOPY_AFTER_SYNCS
from harness.errors import HarnessError
from harness.migration.driver import settled_status
from harness.migration.driver import BASE_CAPABILITIES, configure
from harness.run.rundir import runtime_dir
from harness.qemu.build import QemuBuild
from harness.migration.launch import prepare_machine
from harness.qemu.cmdline import MachinePaths
from harness.migration.proxy import Proxy
from harness.qemu.machine import Machine
from harness.results import ERROR, SKIPPED, CellResult, CheckResult, judge
from harness.guest.dirtier import HeartbeatParser
from harness.units import PAGE

TERMINAL = ("completed", "failed", "cancelled")
#: util/yank.c yank_register_instance (7.2, 10.0): "duplicate yank instance".
YANK_BUSY = r"(?i)duplicate yank instance"
#: migration/migration.c migrate_prepare (7.2, 10.0): QERR_MIGRATION_ACTIVE.
BUSY = r"(?i)migration process in progress"
#: Fast enough that 16 MiB of dirtying converges in well under a second.
FAST = 10 * 1024 ** 3
#: Slow enough that a 16 MiB region being rewritten never converges (the
#: expected downtime stays above the default 300 ms limit): the migration
#: stays ``active`` until the scenario acts on it.
SLOW = 32 * MiB
SCENARIO_TIMEOUT = 90.0
STATE_TIMEOUT = 20.0

#: The guest every scenario migrates: small so a cell takes about a second.
TARGET = TargetSpec(name="x86_64-q35-tcg-failpath", machine="q35", accel="tcg",
                    memory=128 * MiB,
                    workload=WorkloadSpec(region_base=2 * MiB, region_size=16 * MiB,
                                          warmup_passes=2))


# --------------------------------------------------------------------------
# Expected errors, from QEMU's source (7.2 = Debian 7.2+dfsg, 10.0 = 10.0.2).
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """An error QEMU must give: QMP error class (None: not a QMP error, e.g. an
    ``error-desc`` or a stderr line) and a regex on the text."""

    error_class: str | None
    pattern: str
    source: str

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


ERRORS: dict[str, Expect] = {
    # util/qemu-sockets.c inet_connect_saddr (7.2, 10.0): "Failed to connect to
    # '<host>:<port>'" + strerror, reported through migrate_fd_error into the
    # source's error-desc.
    "tcp-refused": Expect(None, r"(?i)connect.*127\.0\.0\.1.*Connection refused",
                          "util/qemu-sockets.c inet_connect_saddr"),
    # util/qemu-sockets.c unix_connect_saddr (7.2, 10.0): "Failed to connect to
    # '<path>'" + strerror(ENOENT).
    "unix-missing": Expect(None, r"(?i)connect.*No such file or directory",
                           "util/qemu-sockets.c unix_connect_saddr"),
    # migration/savevm.c vmstate_uuid_post_load (7.2, 10.0): error_report of
    # "UUID received is <src> and local is <dst>" on the destination's stderr.
    "uuid-mismatch": Expect(None, r"UUID received is (?P<src>[0-9a-f-]{36}) and local is "
                                  r"(?P<dst>[0-9a-f-]{36})",
                            "migration/savevm.c vmstate_uuid_post_load"),
    # migration/savevm.c vmstate_uuid_post_load (7.2, 10.0): only a warning
    # when the destination has no -uuid; the load goes on.
    "uuid-unset-warning": Expect(None, r"UUID is received [0-9a-f-]{36}, but local uuid "
                                       r"isn't set",
                                 "migration/savevm.c vmstate_uuid_post_load"),
    # softmmu/physmem.c (7.2) / system/physmem.c (10.0) qemu_ram_resize, called
    # from migration/ram.c ram_load_precopy for RAM_SAVE_FLAG_MEM_SIZE: a
    # non-resizable block of another size is "Size mismatch: <id>: <in> != <local>".
    "ram-size": Expect(None, r"Size mismatch: \S*ram0\S*: 0x0*8000000 != 0x0*10000000",
                       "physmem.c qemu_ram_resize via migration/ram.c ram_load_precopy"),
    # migration/savevm.c configuration_post_load (7.2, 10.0).
    "machine-type": Expect(None, r"Machine type received is '(?P<src>[^']+)' and local is "
                                 r"'(?P<dst>[^']+)'",
                           "migration/savevm.c configuration_post_load"),
    # 7.2: migration/migration.c qmp_migrate_set_capabilities, QERR_MIGRATION_ACTIVE;
    # 10.0: migration/options.c qmp_migrate_set_capabilities (same text).
    "caps-while-active": Expect("GenericError", r"(?i)migration process in progress",
                                "migration.c (7.2) / options.c (10.0) "
                                "qmp_migrate_set_capabilities"),
    # migration/migration.c migrate_prepare (7.2, 10.0): QERR_MIGRATION_ACTIVE.
    "migrate-while-active": Expect("GenericError", r"(?i)migration process in progress",
                                   "migration/migration.c migrate_prepare"),
    # migration/migration.c migrate_prepare (7.2, 10.0): runstate INMIGRATE.
    "migrate-from-inmigrate": Expect("GenericError",
                                     r"(?i)waiting for an incoming migration",
                                     "migration/migration.c migrate_prepare"),
    # migration/migration.c migrate_prepare (7.2, 10.0): runstate POSTMIGRATE.
    "migrate-from-postmigrate": Expect("GenericError",
                                       r"(?i)paused due to previous migration",
                                       "migration/migration.c migrate_prepare"),
    # migration/migration.c qmp_migrate_start_postcopy (7.2, 10.0): the
    # capability test comes before the "not started" test.
    "postcopy-disabled": Expect("GenericError", r"(?i)enable postcopy with "
                                                r"migrate.set.capability",
                                "migration/migration.c qmp_migrate_start_postcopy"),
    # migration/migration.c qmp_migrate_incoming (7.2, 10.0): a static 'once'.
    "incoming-twice": Expect("GenericError", r"(?i)incoming migration has already been "
                                             r"started",
                             "migration/migration.c qmp_migrate_incoming"),
    # 7.2: migration/migration.c qmp_migrate, QERR_INVALID_PARAMETER_VALUE
    # ("Parameter 'uri' expects a valid migration protocol"); 10.0:
    # migration/migration.c migrate_uri_parse ("unknown migration protocol: <uri>").
    "migrate-bad-scheme": Expect("GenericError", r"(?i)(uri.*expects a valid migration "
                                                 r"protocol|unknown migration protocol)",
                                 "migration/migration.c qmp_migrate (7.2) / "
                                 "migrate_uri_parse (10.0)"),
    # migration/migration.c qemu_start_incoming_migration (7.2, 10.0).
    "incoming-bad-scheme": Expect("GenericError", r"(?i)unknown migration protocol",
                                  "migration/migration.c qemu_start_incoming_migration"),
}


# --------------------------------------------------------------------------
# Pure verdicts (unit-testable: each must be able to fail).
# --------------------------------------------------------------------------

def judge_error(name: str, expect: Expect, error_class: str | None,
                text: str | None) -> CheckResult:
    """Did QEMU give the expected error?  ``text`` None means no error at all."""
    figures = {"error_class": error_class, "text": text, "expected_class": expect.error_class,
               "expected_pattern": expect.pattern, "qemu_source": expect.source}
    if text is None:
        return CheckResult(name, False, "no error reported; expected one matching "
                           f"/{expect.pattern}/ ({expect.source})", figures)
    if expect.error_class is not None and error_class != expect.error_class:
        return CheckResult(name, False, f"error class {error_class}, expected "
                           f"{expect.error_class}: {text}", figures)
    if not expect.matches(text):
        return CheckResult(name, False, f"error '{text}' does not match /{expect.pattern}/ "
                           f"({expect.source})", figures)
    return CheckResult(name, True, f"{error_class or 'error'}: {text}", figures)


def judge_state(name: str, got: str | None, want: str, states: list[str]) -> CheckResult:
    figures = {"status": got, "expected": want, "states": states}
    if got != want:
        return CheckResult(name, False, f"migration ended '{got}', expected '{want}' "
                           f"(states {states})", figures)
    return CheckResult(name, True, f"migration {want} (states {' -> '.join(states)})", figures)


def judge_running(status: str, beats_before: int, beats_after: int, needed: int,
                  waited: float) -> CheckResult:
    """The source must be ``running`` and its guest must keep heartbeating."""
    figures = {"status": status, "heartbeats_before": beats_before,
               "heartbeats_after": beats_after, "needed": needed, "waited_s": round(waited, 3)}
    if status != "running":
        return CheckResult("source-running", False, f"source is '{status}', not running",
                           figures)
    if beats_after - beats_before < needed:
        return CheckResult("source-running", False,
                           f"source guest stalled: {beats_after - beats_before} heartbeats in "
                           f"{waited:.1f} s (needed {needed})", figures)
    return CheckResult("source-running", True, f"running, {beats_after - beats_before} new "
                       "heartbeats", figures)


# --------------------------------------------------------------------------
# The rig: machines of one scenario.
# --------------------------------------------------------------------------

@dataclass
class Side:
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
        return check

    def machine_type(self, target: TargetSpec) -> str:
        mt = self.build.resolve_machine(target.machine)
        if mt is None:
            raise HarnessError(f"{self.build.name} has no machine '{target.machine}'")
        return mt

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
        return Side(m, paths, hb, target)

    async def source(self, **kw: Any) -> Side:
        src = await self.launch("src", incoming=False, **kw)
        await wait_beats(src, src.target.workload.warmup_passes)
        return src

    async def destination(self, **kw: Any) -> Side:
        self._n += 1
        return await self.launch(f"dst{self._n}", incoming=True, **kw)

    async def listen(self, dst: Side) -> str:
        uri = f"unix:{self.workdir / (dst.m.role + '.mig')}"
        await dst.m.execute("migrate-incoming", {"uri": uri})
        return uri

    async def proxy(self, host: str, port: int) -> Proxy:
        """A breakable loopback proxy to ``host:port``, closed with the scenario."""
        proxy = Proxy(host, port)
        await proxy.start()
        self.stack.push_async_callback(proxy.close)
        return proxy

    # -- QMP errors ---------------------------------------------------------
    async def expect_refusal(self, name: str, m: Machine, cmd: str,
                             args: dict[str, Any] | None = None) -> CheckResult:
        """Run a command QEMU must refuse; record and judge the error."""
        try:
            await m.execute(cmd, args)
        except ExecuteError as exc:
            cls, text = exc.error_class, _desc(exc)
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

    # -- the checks a user relies on ------------------------------------------
    async def source_running(self, src: Side, beats: int = 2, timeout: float = 10.0
                             ) -> CheckResult:
        return self.add(await source_running(src, beats, timeout))

    async def source_invariant(self, src: Side) -> CheckResult:
        """Stop the source, check the guest invariant on its RAM file, resume it."""
        await src.m.execute("stop")
        wl = src.target.workload
        check, _ = check_guest_invariant(src.paths.ram, wl.region_base, wl.region_size // PAGE,
                                         wl.region_base)
        check.name = "source-guest"
        await src.m.execute("cont")
        return self.add(check)

    async def migrate_ok(self, src: Side, *, dst_kw: dict[str, Any] | None = None,
                         label: str = "second-migration",
                         refusals: list[dict[str, Any]] | None = None) -> Side:
        """Migrate to a fresh destination: it must complete, the RAM must be
        identical and the guest invariant must hold on the paused destination."""
        await src.m.execute("migrate-set-parameters", {"max-bandwidth": FAST})
        dst = await self.destination(**(dst_kw or {}))
        uri = await self.listen(dst)
        status, info, states = await migrate(src, uri, refusals=refusals)
        self.add(judge_state(label, status, "completed", states))
        if status != "completed":
            self.figures[label] = {"error-desc": info.get("error-desc"),
                                   "dst_stderr": dst.stderr()[-500:]}
            return dst
        await settle(dst)
        ram = check_ram(src.paths.ram, dst.paths.ram, x86_layout(src.target.memory))
        ram.name = f"{label}-ram"
        self.add(ram)
        wl = src.target.workload
        guest, _ = check_guest_invariant(dst.paths.ram, wl.region_base,
                                         wl.region_size // PAGE, wl.region_base)
        guest.name = f"{label}-guest"
        self.add(guest)
        return dst


async def judge_completed(rig: "Rig", src: Side, dst: Side, status: str,
                          states: list[str]) -> None:
    """The migration must have completed; then the paused destination's RAM
    must equal the source's."""
    rig.add(judge_state("migration", status, "completed", states))
    if status == "completed":
        await settle(dst)
        rig.add(check_ram(src.paths.ram, dst.paths.ram, x86_layout(src.target.memory)))


def _desc(exc: ExecuteError) -> str:
    return str(exc)  # qemu.qmp: the error's "desc"


async def wait_beats(side: Side, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while side.hb.heartbeats < count:
        if not side.m.alive:
            raise HarnessError(f"{side.m.role} QEMU died: {side.m.exit_reason()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{side.m.role}: {side.hb.heartbeats}/{count} heartbeats in "
                               f"{timeout:.0f} s")
        await asyncio.sleep(0.01)


async def source_running(src: Side, beats: int = 2, timeout: float = 10.0) -> CheckResult:
    """The live check: query-status and new heartbeats within ``timeout``."""
    status = await src.m.status()
    before = src.hb.heartbeats
    t = time.monotonic()
    while (src.hb.heartbeats - before < beats and time.monotonic() - t < timeout
           and status == "running"):
        await asyncio.sleep(0.01)
    return judge_running(status, before, src.hb.heartbeats, beats, time.monotonic() - t)


def _is_state(states: tuple[str, ...]) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == "MIGRATION" and e["data"]["status"] in states


async def wait_state(m: Machine, states: tuple[str, ...], since: int,
                     timeout: float = STATE_TIMEOUT) -> str | None:
    got = await m.wait_event(_is_state(states), timeout, since)
    return None if got is None else str(got[1]["data"]["status"])


async def start_until(src: Side, uri: str, state: str) -> tuple[int, str | None]:
    """``migrate`` and wait until the source reaches ``state`` (or ends).
    Returns the event index the migration started at and the state reached."""
    since = len(src.m.events)
    await src.m.execute("migrate", {"uri": uri})
    return since, await wait_state(src.m, (state,) + TERMINAL, since)


async def migrate(src: Side, uri: str, timeout: float = STATE_TIMEOUT,
                  refusals: list[dict[str, Any]] | None = None
                  ) -> tuple[str | None, dict[str, Any], list[str]]:
    """``migrate`` and follow it to a terminal state: (status, query-migrate, states).

    With ``refusals`` (a list to record them in), a ``migrate`` refused with
    "duplicate yank instance" is retried for up to ``timeout``: QEMU 10.0
    reports a migration cancelled in ``setup`` as ``cancelled`` while its
    connection attempt is still pending, and the migration's yank instance
    (util/yank.c yank_register_instance, called from qmp_migrate) is only
    released when that attempt ends; the refused ``migrate`` leaves the state
    ``setup`` (so the next one is refused as "in progress") until the stale
    attempt ends and cancels it.
    """
    t = time.monotonic()
    while True:
        since = len(src.m.events)
        try:
            await src.m.execute("migrate", {"uri": uri})
            break
        except ExecuteError as exc:
            if (refusals is None or not any(re.search(p, str(exc)) for p in (YANK_BUSY, BUSY))
                    or time.monotonic() - t > timeout):
                raise
            state = (await src.m.execute("query-migrate")).get("status")
            refusals.append({"after_s": round(time.monotonic() - t, 3), "class": exc.error_class,
                             "text": str(exc), "state_after": state})
            # The refused migrate can leave the state 'setup' until the stale
            # connection attempt ends and cancels it: wait for that first.
            while (state not in TERMINAL + (None, "none")
                   and time.monotonic() - t < timeout):
                await asyncio.sleep(0.05)
                state = (await src.m.execute("query-migrate")).get("status")
    status = await wait_state(src.m, TERMINAL, since, timeout)
    info = await src.m.execute("query-migrate")
    return status, info, _states_since(src.m, since)


def _states_since(m: Machine, since: int) -> list[str]:
    return [e["data"]["status"] for _, e in m.events[since:] if e.get("event") == "MIGRATION"]


async def settle(dst: Side, timeout: float = STATE_TIMEOUT) -> str:
    """Wait for the destination to finish loading and sit paused (-S)."""
    await dst.m.wait_event(_is_state(TERMINAL), timeout)
    return await settled_status(dst.m, timeout)


async def wait_exit(side: Side, timeout: float = 10.0) -> int | None:
    """Wait for a QEMU to exit on its own (a destination after a failed load)."""
    return await side.m.wait_exit(timeout)


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

Scenario = Callable[[Rig], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn
    return register


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _failed_migration(rig: Rig, src: Side, uri: str, name: str) -> None:
    """``migrate`` to a bad URI: either refused at once or ``failed`` with an error-desc."""
    since = len(src.m.events)
    try:
        await src.m.execute("migrate", {"uri": uri})
    except ExecuteError as exc:  # refused synchronously: the error is the reply
        rig.expect_text(name, _desc(exc))
        rig.add(CheckResult("migration-failed", True, f"migrate refused: {_desc(exc)}"))
        return
    status = await wait_state(src.m, TERMINAL, since)
    info = await src.m.execute("query-migrate")
    rig.add(judge_state("migration-failed", status, "failed", _states_since(src.m, since)))
    rig.figures["query_migrate_status"] = info.get("status")
    rig.expect_text(name, info.get("error-desc"))


@scenario("bad-destination-tcp-refused")
async def bad_destination_tcp(rig: Rig) -> None:
    """``migrate`` to a loopback port nothing listens on."""
    src = await rig.source()
    await _failed_migration(rig, src, f"tcp:127.0.0.1:{_free_port()}", "tcp-refused")
    await rig.source_running(src)
    await rig.migrate_ok(src)


@scenario("bad-destination-unix-missing")
async def bad_destination_unix(rig: Rig) -> None:
    """``migrate`` to a unix socket path that does not exist."""
    src = await rig.source()
    await _failed_migration(rig, src, f"unix:{rig.workdir / 'no-such.sock'}", "unix-missing")
    await rig.source_running(src)
    await rig.migrate_ok(src)


def _stuck_listener() -> tuple[list[socket.socket], int]:
    """A loopback port whose accept queue is full: a connect() to it stays
    pending (the kernel drops the SYNs and the client retransmits), which
    holds a migration in ``setup``."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = int(lst.getsockname()[1])
    fillers = []
    for _ in range(2):  # backlog 0 still admits one; two make sure
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    return [lst, *fillers], port


async def _cancel_and_recover(rig: Rig, src: Side, since: int) -> None:
    await src.m.execute("migrate_cancel")
    status = await wait_state(src.m, ("cancelled", "failed", "completed"), since)
    rig.add(judge_state("cancelled", status, "cancelled", _states_since(src.m, since)))


@scenario("cancel-in-setup")
async def cancel_setup(rig: Rig) -> None:
    """``migrate_cancel`` while the source is still in ``setup`` (connecting)."""
    src = await rig.source()
    socks, port = _stuck_listener()
    try:
        since = len(src.m.events)
        await src.m.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        info = await src.m.execute("query-migrate")
        rig.figures["state_at_cancel"] = info.get("status")
        rig.add(CheckResult("in-setup", info.get("status") == "setup",
                            f"state before cancel: {info.get('status')}"))
        await src.m.execute("migrate_cancel")
        # The connection attempt is still pending; close the listener so it
        # ends (RST on the next SYN retransmission) whatever QEMU waits for.
        early = await wait_state(src.m, ("cancelled", "failed"), since, 1.0)
        rig.figures["terminal_before_listener_closed"] = early
    finally:
        for s in socks:
            s.close()
    status = early or await wait_state(src.m, ("cancelled", "failed", "completed"), since)
    rig.figures["states"] = _states_since(src.m, since)
    rig.add(judge_state("cancelled", status, "cancelled", _states_since(src.m, since)))
    await rig.source_running(src)
    # QEMU 10.0 may refuse the next migrate for a moment ("duplicate yank
    # instance", see migrate()); recorded as a figure, retried.
    refusals: list[dict[str, Any]] = []
    rig.figures["next_migrate_refusals"] = refusals
    await rig.migrate_ok(src, refusals=refusals)


@scenario("cancel-in-active")
async def cancel_active(rig: Rig) -> None:
    """``migrate_cancel`` while RAM is being sent (throttled so it stays active)."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    dst = await rig.destination()
    uri = await rig.listen(dst)
    since, state = await start_until(src, uri, "active")
    rig.add(CheckResult("in-active", state == "active", f"state before cancel: {state}"))
    await _cancel_and_recover(rig, src, since)
    # The destination sees the stream end and gives up (it exits by default).
    rig.figures["destination_after_cancel"] = {"exit": await wait_exit(dst, 5.0),
                                               "stderr": dst.stderr()[-300:]}
    await rig.source_running(src)
    await rig.migrate_ok(src)


@scenario("cancel-in-pre-switchover")
async def cancel_pre_switchover(rig: Rig) -> None:
    """``pause-before-switchover`` on both sides; cancel while the source waits
    in ``pre-switchover`` with the guest stopped."""
    caps = {"pause-before-switchover": True}
    src = await rig.source(caps=caps)
    dst = await rig.destination(caps=caps)
    uri = await rig.listen(dst)
    since, state = await start_until(src, uri, "pre-switchover")
    rig.add(CheckResult("in-pre-switchover", state == "pre-switchover",
                        f"state before cancel: {state}"))
    paused = await src.m.status()
    rig.figures["source_status_in_pre_switchover"] = paused
    rig.add(CheckResult("source-stopped-in-pre-switchover", paused != "running",
                        f"source run state in pre-switchover: {paused}"))
    await _cancel_and_recover(rig, src, since)
    await wait_exit(dst, 5.0)
    await rig.source_running(src)
    await src.m.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": False}]})
    await rig.migrate_ok(src)


@scenario("destination-killed")
async def destination_killed(rig: Rig) -> None:
    """SIGKILL the destination (by its PID) while RAM is being sent."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    dst = await rig.destination()
    uri = await rig.listen(dst)
    since, state = await start_until(src, uri, "active")
    rig.add(CheckResult("in-active", state == "active", f"state before the kill: {state}"))
    assert dst.m.proc is not None
    os.kill(dst.m.proc.pid, signal.SIGKILL)
    status = await wait_state(src.m, TERMINAL, since)
    info = await src.m.execute("query-migrate")
    rig.add(judge_state("migration-failed", status, "failed", _states_since(src.m, since)))
    desc = info.get("error-desc")
    rig.figures["errors"]["destination-killed"] = {"text": desc}
    rig.add(CheckResult("error-reported", bool(desc), f"error-desc: {desc}"))
    await rig.source_running(src)
    await rig.migrate_ok(src)


UUID_A = "6f1a3c52-7d0e-4b8a-9c11-2e5f4a6b7c8d"
UUID_B = "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"
#: return-path lets the source hear the destination's verdict.  Without it the
#: source learns of a refused stream only from a broken pipe once the
#: destination has exited (seen here on 7.2 and 10.0 for these 128 MiB
#: guests: 'failed', "Unable to write to socket: Broken pipe"), which a stream
#: small enough to fit the socket buffers could outrun.
RP = {"return-path": True}


async def _refused_by_destination(rig: Rig, src: Side, dst: Side, error: str) -> None:
    """The destination refuses the stream: it fails to load (and exits, QEMU's
    default), the error on its stderr; the source ends 'failed' and runs on."""
    uri = await rig.listen(dst)
    status, info, states = await migrate(src, uri)
    rig.add(judge_state("migration-failed", status, "failed", states))
    rig.figures["source_error_desc"] = info.get("error-desc")
    code = await wait_exit(dst)
    rig.figures["destination_exit"] = code
    rig.expect_text(error, dst.stderr())
    await rig.source_running(src)


@scenario("uuid-mismatch")
async def uuid_mismatch(rig: Rig) -> None:
    """``validate-uuid`` with a different ``-uuid`` on each side: refused; the
    same uuid then succeeds."""
    caps = {"validate-uuid": True, **RP}
    src = await rig.source(caps=caps, extra=("-uuid", UUID_A))
    dst = await rig.destination(caps=caps, extra=("-uuid", UUID_B))
    await _refused_by_destination(rig, src, dst, "uuid-mismatch")
    got = ERRORS["uuid-mismatch"]
    m = re.search(got.pattern, rig.figures["errors"]["uuid-mismatch"]["text"] or "")
    rig.add(CheckResult("uuid-mismatch-names-both", bool(m and m["src"] == UUID_A and
                                                         m["dst"] == UUID_B),
                        f"received/local uuids in the error: {m.groups() if m else None}"))
    await rig.migrate_ok(src, dst_kw={"caps": caps, "extra": ("-uuid", UUID_A)},
                         label="same-uuid-migration")


@scenario("uuid-source-only")
async def uuid_source_only(rig: Rig) -> None:
    """``validate-uuid`` with ``-uuid`` on the source only: the destination warns
    and loads (savevm.c vmstate_uuid_post_load returns 0 when no local uuid)."""
    caps = {"validate-uuid": True, **RP}
    src = await rig.source(caps=caps, extra=("-uuid", UUID_A))
    dst = await rig.migrate_ok(src, dst_kw={"caps": caps}, label="migration")
    rig.expect_text("uuid-unset-warning", dst.stderr())
    # A source left in postmigrate may not migrate again (migrate_prepare).
    await rig.expect_refusal("migrate-from-postmigrate", src.m, "migrate",
                             {"uri": f"unix:{rig.workdir / 'x.sock'}"})


@scenario("uuid-destination-only")
async def uuid_destination_only(rig: Rig) -> None:
    """``validate-uuid`` with ``-uuid`` on the destination only: nothing to
    compare is sent (savevm.c vmstate_uuid_needed is false without a source
    uuid), so the migration succeeds without a warning."""
    caps = {"validate-uuid": True, **RP}
    src = await rig.source(caps=caps)
    dst = await rig.migrate_ok(src, dst_kw={"caps": caps, "extra": ("-uuid", UUID_B)},
                               label="migration")
    err = dst.stderr()
    rig.add(CheckResult("no-uuid-message", "UUID" not in err,
                        f"destination stderr: {err.strip()[-200:] or '(empty)'}"))


@scenario("ram-size-mismatch")
async def ram_size_mismatch(rig: Rig) -> None:
    """Destination with 256 MiB of RAM, source 128 MiB: the RAM block's size check."""
    src = await rig.source(caps=RP)
    dst = await rig.destination(caps=RP,
                                target=dataclasses.replace(TARGET, memory=256 * MiB))
    await _refused_by_destination(rig, src, dst, "ram-size")
    await rig.migrate_ok(src, dst_kw={"caps": RP})


@scenario("machine-type-mismatch")
async def machine_mismatch(rig: Rig) -> None:
    """Destination ``pc``, source ``q35``: the configuration section's check."""
    src = await rig.source(caps=RP)
    dst = await rig.destination(caps=RP, target=dataclasses.replace(TARGET, machine="pc"))
    await _refused_by_destination(rig, src, dst, "machine-type")
    m = re.search(ERRORS["machine-type"].pattern, rig.figures["errors"]["machine-type"]["text"]
                  or "")
    want = (rig.machine_type(TARGET), rig.machine_type(dataclasses.replace(TARGET,
                                                                           machine="pc")))
    rig.add(CheckResult("machine-type-names-both", bool(m) and m.groups() == want,
                        f"received/local in the error: {m.groups() if m else None}, "
                        f"expected {want}"))
    await rig.migrate_ok(src, dst_kw={"caps": RP})


@scenario("refused-while-active")
async def refused_while_active(rig: Rig) -> None:
    """During an active migration ``migrate-set-capabilities`` and a second
    ``migrate`` are refused and change nothing; the migration then completes."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    dst = await rig.destination()
    uri = await rig.listen(dst)
    before = await src.m.execute("query-migrate-capabilities")
    since, state = await start_until(src, uri, "active")
    rig.add(CheckResult("in-active", state == "active", f"state: {state}"))
    await rig.expect_refusal("caps-while-active", src.m, "migrate-set-capabilities",
                             {"capabilities": [{"capability": "xbzrle", "state": True}]})
    await rig.expect_refusal("migrate-while-active", src.m, "migrate",
                             {"uri": f"unix:{rig.workdir / 'other.sock'}"})
    after = await src.m.execute("query-migrate-capabilities")
    rig.add(CheckResult("capabilities-unchanged", before == after,
                        "capabilities unchanged" if before == after else
                        f"capabilities changed: {before} -> {after}"))
    # migrate-set-parameters is allowed while active: let it converge.
    await src.m.execute("migrate-set-parameters", {"max-bandwidth": FAST})
    status = await wait_state(src.m, TERMINAL, since)
    await judge_completed(rig, src, dst, status, _states_since(src.m, since))


@scenario("postcopy-without-capability")
async def postcopy_without_cap(rig: Rig) -> None:
    """``migrate-start-postcopy`` with postcopy-ram off, idle and during a migration."""
    src = await rig.source(params={"max-bandwidth": SLOW})
    await rig.expect_refusal("postcopy-disabled", src.m, "migrate-start-postcopy")
    dst = await rig.destination()
    uri = await rig.listen(dst)
    since, _ = await start_until(src, uri, "active")
    check = await rig.expect_refusal("postcopy-disabled", src.m, "migrate-start-postcopy")
    check.name = "postcopy-disabled-while-active"
    await src.m.execute("migrate-set-parameters", {"max-bandwidth": FAST})
    status = await wait_state(src.m, TERMINAL, since)
    await judge_completed(rig, src, dst, status, _states_since(src.m, since))


@scenario("destination-refusals")
async def destination_refusals(rig: Rig) -> None:
    """On a destination: ``migrate-incoming`` twice, and ``migrate`` from a VM in
    ``inmigrate``; the first ``migrate-incoming`` still works afterwards."""
    src = await rig.source()
    dst = await rig.destination()
    uri = await rig.listen(dst)
    await rig.expect_refusal("incoming-twice", dst.m, "migrate-incoming",
                             {"uri": f"unix:{rig.workdir / 'second.sock'}"})
    await rig.expect_refusal("migrate-from-inmigrate", dst.m, "migrate",
                             {"uri": f"unix:{rig.workdir / 'back.sock'}"})
    status, _, states = await migrate(src, uri)
    await judge_completed(rig, src, dst, status, states)


@scenario("unknown-uri-scheme")
async def unknown_scheme(rig: Rig) -> None:
    """``migrate`` and ``migrate-incoming`` with a scheme QEMU does not know."""
    src = await rig.source()
    await rig.expect_refusal("migrate-bad-scheme", src.m, "migrate", {"uri": "bogus:1234"})
    info = await src.m.execute("query-migrate")
    rig.figures["query_migrate_after_bad_scheme"] = info.get("status")
    dst = await rig.destination()
    await rig.expect_refusal("incoming-bad-scheme", dst.m, "migrate-incoming",
                             {"uri": "bogus:1234"})
    await rig.source_running(src)
    await rig.source_invariant(src)
    await rig.migrate_ok(src)


# --------------------------------------------------------------------------
# Postcopy recovery: the migration channel breaks during postcopy
# --------------------------------------------------------------------------
#
# QEMU's requirements (7.2 = Debian 7.2+dfsg, 10.0 = 10.0.2):
# * only ``postcopy-ram`` on both sides; ``return-path`` is not needed: the
#   source opens the return path whenever postcopy-ram is on
#   (migration/migration.c migrate_fd_connect (7.2) / migration_connect (10.0):
#   ``if (migrate_postcopy_ram() || migrate_use_return_path())``);
# * ``release-ram`` must be off (migration.c migrate_prepare refuses a resume
#   with it);
# * the destination pauses instead of failing only once it runs the guest
#   (migration/savevm.c qemu_loadvm_state_main: ``postcopy_state_get() ==
#   POSTCOPY_INCOMING_RUNNING`` -> postcopy_pause_incoming); a break while it
#   is still ``postcopy-active`` but only LISTENING (device state not yet
#   loaded) fails the migration instead.  So the scenario breaks the channel
#   only once the destination reports ``running``;
# * the source pauses from ``postcopy-active`` (migration.c postcopy_pause,
#   via migration_detect_error);
# * ``migrate-recover`` is accepted only in ``postcopy-paused`` (migration.c
#   qmp_migrate_recover); it frees the old listener's address list
#   (migration_incoming_transport_cleanup) and listens anew, so a ``:0`` port
#   is reported by ``query-migrate`` socket-address as for the first listen;
# * ``migrate`` with ``resume: true`` is accepted only in ``postcopy-paused``
#   (migration.c migrate_prepare); 10.0 then passes through
#   ``postcopy-recover-setup`` (added in 9.1) before ``postcopy-recover``; the
#   resumed channel runs at ``max-postcopy-bandwidth`` (migrate_fd_connect /
#   migration_connect), not ``max-bandwidth``.

POSTCOPY = {"postcopy-ram": True}
#: Precopy at a modest rate; postcopy (rate ``max-postcopy-bandwidth``, whose
#: default 0 means unlimited) slow enough that the 16 MiB region the guest
#: keeps dirty takes about 2 s to arrive, so the break lands in postcopy.
POSTCOPY_PARAMS = {"max-bandwidth": SLOW, "max-postcopy-bandwidth": 8 * MiB}
#: How long the paused migration is left alone before recovery (and, in the
#: negative control, how long it must stay paused without recovery).
PAUSE_HOLD = 1.0
UNRECOVERED_HOLD = 3.0


def _port_of(info: dict[str, Any]) -> int | None:
    for addr in info.get("socket-address", []) or []:
        if addr.get("type") == "inet":
            return int(addr["port"])
    return None


def _event_time(m: Machine, state: str, since: int = 0) -> float | None:
    for t, e in m.events[since:]:
        if e.get("event") == "MIGRATION" and e["data"]["status"] == state:
            return t
    return None


def judge_sequence(name: str, states: list[str], want: list[str]) -> CheckResult:
    """``want`` must appear in ``states`` in that order (others may come between)."""
    it = iter(states)
    missing = [w for w in want if w not in it]
    figures = {"states": states, "expected_in_order": want}
    if missing:
        return CheckResult(name, False, f"states {' -> '.join(states) or '(none)'} lack "
                           f"{missing[0]} in the order {' -> '.join(want)}", figures)
    return CheckResult(name, True, " -> ".join(states), figures)


async def _postcopy_broken(rig: Rig) -> tuple[Side, Side, Proxy, int, int]:
    """Source -> proxy -> destination (tcp port 0), postcopy started after
    ``POSTCOPY_AFTER_SYNCS`` dirty syncs, the destination resumed on its
    ``postcopy-active`` and running; then ``proxy.break_()`` and both sides
    must report ``postcopy-paused``.  Returns (src, dst, proxy, src_since,
    dst_since)."""
    src = await rig.source(caps=POSTCOPY, params=POSTCOPY_PARAMS)
    dst = await rig.destination(caps=POSTCOPY, params=POSTCOPY_PARAMS)
    await dst.m.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    port = _port_of(await dst.m.execute("query-migrate"))
    if port is None:
        raise HarnessError("destination did not report its listening port")
    proxy = await rig.proxy("127.0.0.1", port)
    src_since, dst_since = len(src.m.events), len(dst.m.events)
    t_migrate = time.monotonic()
    await src.m.execute("migrate", {"uri": proxy.uri})
    # migrate-start-postcopy once precopy has made enough dirty syncs.
    deadline = time.monotonic() + STATE_TIMEOUT
    while True:
        info = await src.m.execute("query-migrate")
        status = info.get("status")
        syncs = info.get("ram", {}).get("dirty-sync-count", 0)
        if status == "active" and syncs >= POSTCOPY_AFTER_SYNCS:
            break
        if status in TERMINAL or time.monotonic() > deadline:
            raise HarnessError(f"source never made {POSTCOPY_AFTER_SYNCS} dirty syncs in "
                               f"'active' (status {status}, syncs {syncs}, "
                               f"{info.get('error-desc', '')})")
        await asyncio.sleep(0.05)
    rig.figures["syncs_at_postcopy_start"] = syncs
    t_start = time.monotonic()
    await src.m.execute("migrate-start-postcopy")
    got = await dst.m.wait_event(_is_state(("postcopy-active",) + TERMINAL), STATE_TIMEOUT,
                                 dst_since)
    if got is None or got[1]["data"]["status"] != "postcopy-active":
        raise HarnessError(f"destination never reached postcopy-active "
                           f"(states {_states_since(dst.m, dst_since)})")
    await dst.m.execute("cont")
    beats_at_cont = dst.hb.heartbeats
    # The destination pauses (rather than fails) only once it runs the guest.
    t = time.monotonic()
    while (status := await dst.m.status()) != "running":
        if time.monotonic() - t > STATE_TIMEOUT:
            raise HarnessError(f"destination did not run after cont (status {status})")
        await asyncio.sleep(0.01)
    t_running = time.monotonic()
    # Break at once: the running guest touches every page of its region, so
    # it faults the rest of RAM in from the source within a pass or two, and
    # a pause here let postcopy finish before the break (seen on 7.2 in CI).
    before = await src.m.execute("query-migrate")
    rig.figures["before_break"] = {
        "source_status": before.get("status"),
        "postcopy_requests": before.get("ram", {}).get("postcopy-requests"),
        "remaining": before.get("ram", {}).get("remaining"),
        "proxy_bytes_up": proxy.up, "proxy_bytes_down": proxy.down,
        "destination_heartbeats_since_cont": dst.hb.heartbeats - beats_at_cont}
    rig.add(CheckResult("broken-in-postcopy", before.get("status") == "postcopy-active",
                        f"source state when the channel was broken: {before.get('status')} "
                        f"({before.get('ram', {}).get('remaining')} bytes remaining)"))
    t_break = time.monotonic()
    broken = proxy.break_()
    rig.figures["connections_broken"] = broken
    rig.figures["timings_s"] = {"migrate_to_postcopy_start": round(t_start - t_migrate, 3),
                                "postcopy_start_to_dst_running": round(t_running - t_start, 3),
                                "dst_running_to_break": round(t_break - t_running, 3)}
    rig.figures["t_break"] = t_break
    for side, since in ((src, src_since), (dst, dst_since)):
        got = await side.m.wait_event(_is_state(("postcopy-paused",) + TERMINAL),
                                      STATE_TIMEOUT, since)
        state = None if got is None else got[1]["data"]["status"]
        who = "source" if side is src else "destination"
        rig.add(CheckResult(f"{who}-postcopy-paused", state == "postcopy-paused",
                            f"{who} after the break: {state} "
                            f"(states {_states_since(side.m, since)})"))
        if got is not None:
            rig.figures["timings_s"][f"break_to_{who}_paused"] = round(got[0] - t_break, 3)
    return src, dst, proxy, src_since, dst_since


async def _still_paused(rig: Rig, src: Side, dst: Side, hold: float, name: str) -> bool:
    """After ``hold`` seconds without recovery both sides are still paused."""
    await asyncio.sleep(hold)
    states = {}
    for who, side in (("source", src), ("destination", dst)):
        states[who] = (await side.m.execute("query-migrate")).get("status")
    ok = states == {"source": "postcopy-paused", "destination": "postcopy-paused"}
    rig.add(CheckResult(name, ok, f"after {hold:.1f} s without recovery: source "
                        f"{states['source']}, destination {states['destination']}",
                        {"hold_s": hold, **states}))
    return ok


@scenario("postcopy-recover")
async def postcopy_recover(rig: Rig) -> None:
    """Break the migration channel (the harness's proxy) during postcopy: both
    sides pause; ``migrate-recover`` on a new destination port and ``migrate``
    with ``resume`` (through a fresh proxy) complete it; RAM exact (but the
    bytes the running destination guest rewrote) and the destination guest
    runs on."""
    src, dst, proxy, src_since, dst_since = await _postcopy_broken(rig)
    t_break = rig.figures.pop("t_break")
    if not all(c.passed for c in rig.checks):
        rig.figures["states"] = {"source": _states_since(src.m, src_since),
                                 "destination": _states_since(dst.m, dst_since)}
        return
    await _still_paused(rig, src, dst, PAUSE_HOLD, "paused-without-recovery")
    beats_paused = dst.hb.heartbeats
    # The destination listens again (port 0: read it back like the first time).
    await dst.m.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    info = await dst.m.execute("query-migrate")
    port = _port_of(info)
    # 7.2 sends a MIGRATION 'setup' event here (qemu_start_incoming_migration
    # emits it unconditionally) while the state stays postcopy-paused.
    rig.figures["destination_after_migrate_recover"] = {"status": info.get("status"),
                                                        "port_reported": port is not None}
    if port is None:  # not reported: fall back to a port chosen here
        port = _free_port()
        await dst.m.execute("migrate-recover", {"uri": f"tcp:127.0.0.1:{port}"})
    proxy2 = await rig.proxy("127.0.0.1", port)
    # The resumed channel runs at max-postcopy-bandwidth: let it finish quickly.
    await src.m.execute("migrate-set-parameters", {"max-postcopy-bandwidth": FAST})
    t_resume = time.monotonic()
    await src.m.execute("migrate", {"uri": proxy2.uri, "resume": True})
    status = await wait_state(src.m, TERMINAL, src_since)
    dst_status = await wait_state(dst.m, TERMINAL, dst_since)
    t_done = time.monotonic()
    src_states, dst_states = _states_since(src.m, src_since), _states_since(dst.m, dst_since)
    rig.figures["states"] = {"source": src_states, "destination": dst_states}
    rig.add(judge_state("source-completed", status, "completed", src_states))
    rig.add(judge_state("destination-completed", dst_status, "completed", dst_states))
    rig.add(judge_sequence("source-recovered", src_states,
                           ["postcopy-active", "postcopy-paused", "postcopy-recover",
                            "postcopy-active", "completed"]))
    rig.add(judge_sequence("destination-recovered", dst_states,
                           ["postcopy-active", "postcopy-paused", "postcopy-recover",
                            "postcopy-active", "completed"]))
    timings = rig.figures["timings_s"]
    for who, side, since in (("source", src, src_since), ("destination", dst, dst_since)):
        paused = _event_time(side.m, "postcopy-paused", since)
        # The first state after postcopy-paused ends the pause.
        after = [t for t, e in side.m.events[since:] if e.get("event") == "MIGRATION"
                 and paused is not None and t > paused
                 and e["data"]["status"] != "postcopy-paused"]
        if paused is not None and after:
            timings[f"{who}_paused"] = round(after[0] - paused, 3)
    timings["resume_to_completed"] = round(t_done - t_resume, 3)
    timings["break_to_completed"] = round(t_done - t_break, 3)
    rig.figures["proxies"] = {"broken": proxy.figures(), "recovery": proxy2.figures()}
    rig.figures["stderr"] = {"src": src.stderr()[-300:], "dst": dst.stderr()[-300:]}
    rig.add(CheckResult("recovery-channel-used", proxy2.up > 0,
                        f"{proxy2.up} bytes source->destination and {proxy2.down} back over "
                        "the recovery channel"))
    if status != "completed" or dst_status != "completed":
        return
    info = await src.m.execute("query-migrate")
    rig.figures["postcopy_requests"] = info.get("ram", {}).get("postcopy-requests")
    rig.figures["destination_heartbeats"] = {"while_paused": beats_paused,
                                             "at_completion": dst.hb.heartbeats}
    # The destination guest was resumed during postcopy and must run on.
    alive = await source_running(dst)
    alive.name = "destination-running"
    alive.summary = alive.summary.replace("source", "destination")
    rig.add(alive)
    await dst.m.execute("stop")
    wl = dst.target.workload
    explained = Explained(np.arange(wl.region_base, wl.region_base + wl.region_size, PAGE),
                          "the destination guest ran during postcopy and rewrote the first "
                          "byte of its region's pages; those bytes are judged by the guest "
                          "invariant")
    rig.add(check_ram(src.paths.ram, dst.paths.ram, x86_layout(TARGET.memory), explained))
    guest, _ = check_guest_invariant(dst.paths.ram, wl.region_base, wl.region_size // PAGE,
                                     wl.region_base)
    guest.name = "destination-guest"
    rig.add(guest)


@scenario("postcopy-break-unrecovered")
async def postcopy_unrecovered(rig: Rig) -> None:
    """Negative control of postcopy-recover: the channel is broken during
    postcopy and NOT recovered; both sides stay ``postcopy-paused``, the
    destination never completes (bounded wait), and the completion verdict
    used by postcopy-recover fails on it."""
    src, dst, _, src_since, dst_since = await _postcopy_broken(rig)
    rig.figures.pop("t_break")
    if not all(c.passed for c in rig.checks):
        return
    await _still_paused(rig, src, dst, UNRECOVERED_HOLD, "still-paused")
    dst_status = await wait_state(dst.m, TERMINAL, dst_since, 0.1)
    src_states, dst_states = _states_since(src.m, src_since), _states_since(dst.m, dst_since)
    rig.figures["states"] = {"source": src_states, "destination": dst_states}
    verdict = judge_state("destination-completed", dst_status, "completed", dst_states)
    rig.add(CheckResult("not-completed-without-recovery", not verdict.passed,
                        f"completion verdict without recovery: {verdict.summary}",
                        verdict.figures))
    rig.add(CheckResult("no-terminal-state", not any(s in TERMINAL
                                                     for s in src_states + dst_states),
                        f"source {src_states}, destination {dst_states}"))
    rig.figures["stderr"] = {"src": src.stderr()[-300:], "dst": dst.stderr()[-300:]}
    # A destination paused in postcopy does not answer 'quit' (its vCPUs wait
    # on missing pages): end it by its PID rather than wait out Machine.close.
    assert dst.m.proc is not None
    os.kill(dst.m.proc.pid, signal.SIGKILL)
    rig.figures["destination_exit"] = await wait_exit(dst, 5.0)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

async def run_scenario_async(name: str, build: QemuBuild, logdir: Path) -> CellResult:
    """Run one scenario on ``build`` (both sides); never raises for a failure."""
    fn = SCENARIOS[name]
    logdir.mkdir(parents=True, exist_ok=True)
    result = CellResult(id=f"failpath-{name}-{build.name}", verdict=ERROR,
                        inputs={"scenario": name, "build": build.name,
                                "version": build.version_text,
                                "target": dataclasses.asdict(TARGET)},
                        logdir=str(logdir))
    if build.missing:
        result.verdict, result.reason = SKIPPED, f"build '{build.name}' missing: {build.missing}"
        return result
    t0 = time.monotonic()
    workdir = runtime_dir()
    rig: Rig | None = None
    try:
        async with AsyncExitStack() as stack:
            rig = Rig(build, logdir, workdir, stack)
            await asyncio.wait_for(fn(rig), SCENARIO_TIMEOUT)
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
    return result


def run_scenario(name: str, build: QemuBuild, logdir: Path) -> CellResult:
    """Synchronous facade for pytest and scripts."""
    return asyncio.run(run_scenario_async(name, build, logdir))
