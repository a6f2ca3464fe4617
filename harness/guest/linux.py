"""The Linux workload: Debian's kernel with the project's agent, and devices.

One instance per cell (harness.guest.workload.workload_for picks it for
``workload: {kind: linux}``).  It answers the cell flow's questions:

- arguments: direct kernel boot of the cached guest (harness.guest.linux_image:
  ``-kernel``/``-initrd``/``-append``, console on ttyS0), a virtio-serial port
  ``mh.agent`` (the agent's protocol, to a unix socket of the harness per
  QEMU), virtio-blk on a per-cell qcow2 overlay both sides share, and
  virtio-net on a user netdev (``restrict=on``) whose guestfwd address
  forwards the agent's TCP stream to the harness's peer on 127.0.0.1;
- warm-up: the agent says READY and has made its passes over its buffer;
  a kernel panic, a QEMU exit or an agent that never reports ends the cell
  as ``error`` at once with the reason and the console's last lines;
- the guest check (paused destination): every agent record in the
  destination's RAM, checked by the host (harness.guest.linux_ram), and the
  pages that differ from the source named by owner (kernel image pages by
  symbol, the kernel's page tables by level and address:
  harness.guest.linux_symbols, linux_pagetables);
- liveness: heartbeats resume on the destination in the same boot;
- after liveness: the agent's own verdict (``verify``), a reboot on the
  destination, ``quiesce``, then the disk image and the network stream read
  by the host: the ``guest-data``, ``guest-downtime``, ``clock``, ``reboot``,
  ``disk`` and ``net`` checks (harness.checks.linux).

Faults (``cell.fault``, negative controls of the harness's error paths):
``linux-kernel-panic`` (the kernel finds no init and panics),
``linux-agent-silent`` (the agent never starts), ``linux-guest-panic`` (the
guest panics during warm-up).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, ClassVar

import numpy as np

from harness.cell import Cell
from harness.checks.linux import (AgentVerdict, HeartbeatEvidence, RebootEvidence,
                                  check_clock, check_disk, check_guest_data,
                                  check_guest_downtime, check_net, check_reboot)
from harness.checks.liveness import (LIVENESS_HEARTBEATS, LIVENESS_TIMEOUT, HeartbeatLiveness,
                                     check_heartbeat_liveness)
from harness.checks.ram import RamRegion, ram_layout
from harness.errors import HarnessError
from harness.guest.linux_disk import DiskReport, check_image, make_overlay
from harness.guest.linux_image import LinuxGuest, linux_guest
from harness.guest.linux_kvm import kvm_boot_problem
from harness.guest.linux_net import NetPeer
from harness.guest.linux_options import KIND, LinuxOptions
from harness.guest.linux_pagetables import page_tables_of
from harness.guest.linux_proto import AgentStream, Boot, ConsoleWatch
from harness.guest.linux_ram import (SHOW_PAGES, PageOwners, check_records, differing_pages,
                                     first_differences, kernel_symbols, owner_table,
                                     read_agent_pages)
from harness.guest.workload import GuestGap, GuestProgressError, SerialSink, Workload
from harness.migration.context import CellFailure
from harness.qemu.machine import Machine
from harness.results import SKIPPED, CheckResult
from harness.waiting import WaitAborted, WaitTimeout, poll_until

__all__ = ["LinuxWorkload", "FAULTS", "GUEST_FWD"]

log = logging.getLogger(__name__)

#: The guestfwd address the agent connects to (inside slirp's 10.0.2.0/24;
#: it never leaves QEMU: the user netdev runs with restrict=on).
GUEST_FWD = "10.0.2.100:5000"
#: Kernel command line before the agent's own parameters.  ``nokaslr``: the
#: kernel's image sits at the same guest-physical place on every boot, so
#: pages can be named by section; ``panic=0``: a panicked guest stays put
#: (the harness sees it on the console) instead of rebooting out of sight.
CMDLINE = "console=ttyS0,115200 nokaslr panic=0"
#: Guest agent commands wait this long for their answer (a full verification
#: of the buffer and the disk takes well under a second under TCG).
COMMAND_TIMEOUT = 20.0
#: After quiesce, how long the peer may take to receive the last records.
NET_DRAIN_TIMEOUT = 5.0
#: Fixed MAC, the same on both sides (the guest sees it).
MAC = "52:54:00:12:34:56"

FAULTS: dict[str, str] = {
    "linux-kernel-panic": "the kernel finds no init in its initramfs (rdinit= names no "
                          "file), has no root disk to fall back on and panics: the cell "
                          "must end error with the panic and the console's tail",
    "linux-agent-silent": "the guest boots without its agent (mh.agent=off): the cell must "
                          "end error when the agent has not reported within the timeout",
    "linux-guest-panic": "the agent crashes the kernel (sysrq c) once ready: the cell must "
                         "end error with the panic",
}


class GuestBootError(GuestProgressError):
    """The guest did not come up (or crashed): the cell could not run, so it
    ends ``error`` (hence ``qemu_died=True``: the flow's flag for that)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, qemu_died=True)


@dataclass
class _Side:
    """One QEMU of the cell, in launch order (0: the source)."""

    index: int
    role: str
    console: ConsoleWatch
    agent_sock: socket.socket
    log: IO[str]
    t0: float
    writer: asyncio.StreamWriter | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, data: bytes, t: float) -> None:
        """The agent's bytes into this side's log, stamped like the serial log."""
        if not self.log.closed:
            for line in data.decode("ascii", "replace").splitlines():
                self.log.write(f"{t - self.t0:12.6f} {line}\n")


class LinuxWorkload(Workload):
    """A Linux guest with the agent and its devices (see the module doc)."""

    kind: ClassVar[str] = KIND
    writes_anywhere: ClassVar[bool] = True
    post_checks: ClassVar[bool] = True

    def __init__(self, cell: Cell, workdir: Path, logdir: Path | None = None) -> None:
        super().__init__(cell, workdir)
        #: Where ``<role><n>.agent.log`` (the agent's lines, host-timestamped) go.
        self.logdir = logdir or workdir
        self.opts = LinuxOptions.of(self.spec)
        self.stream = AgentStream()
        self.peer = NetPeer()
        self.sides: list[_Side] = []
        self.guest: LinuxGuest | None = None
        self.overlay: Path | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._t_launch: float | None = None
        #: The flow makes the workload when the cell's clock starts: the agent
        #: logs count from here like the QEMU logs.
        self._t0 = time.monotonic()
        self._beats_before = 0
        self._pages_before: np.ndarray | None = None
        self._gap: dict[str, Any] = {}
        #: For the harness's own tests (a negative control of the disk
        #: check): after cont, undo one acknowledged write on the
        #: destination's image (:meth:`_lose_write`).
        self.lose_disk_write = False
        self.fault_figures: dict[str, Any] = {}
        #: Whether differing kernel pages were named by symbol, and why not.
        self._symbols_figures: dict[str, Any] = {}

    # -- command line --------------------------------------------------------
    def machine_args(self, role: str) -> list[str]:
        if self.guest is None:
            self.guest = linux_guest()
            self._t_launch = time.monotonic()
            if self.cell.target.accel == "kvm":
                self._kvm_or_skip(self.guest)
        if self.overlay is None and self.opts.disk:
            self.overlay = make_overlay(self.workdir, self.opts.disk)
        side = self._new_side(role)
        append = [CMDLINE] + self._fault_args() + self.opts.kernel_args(
            GUEST_FWD if self.opts.net else None)
        args = ["-kernel", str(self.guest.kernel(self.opts.boot)),
                "-initrd", str(self.guest.initrd), "-append", " ".join(append)]
        if self.opts.port == "virtio":
            args += ["-device", "virtio-serial-pci,id=vser0",
                     "-chardev", f"socket,id=mhagent,path={self._agent_path(side.index)}",
                     "-device", "virtserialport,bus=vser0.0,chardev=mhagent,name=mh.agent,"
                                "id=mhport"]
        if self.overlay is not None:
            # A named BlockBackend (-drive if=none,id=): the lost-write
            # control reaches it by name with HMP qemu-io.
            args += ["-drive", f"if=none,id=disk0,file={self.overlay},format=qcow2",
                     "-device", "virtio-blk-pci,drive=disk0,id=vblk0"]
        netdev = "user,id=net0,restrict=on"
        if self.opts.net:
            host, _, port = GUEST_FWD.partition(":")
            netdev += f",guestfwd=tcp:{host}:{port}-tcp:127.0.0.1:{self.peer.listen()}"
        args += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,id=vnet0,mac={MAC}"]
        return args

    def _kvm_or_skip(self, guest: LinuxGuest) -> None:
        """A skip with the reason where this host's KVM cannot boot Linux
        (harness.guest.linux_kvm asks once per host and build)."""
        for spec in dict.fromkeys((self.cell.src_build, self.cell.dst_build)):
            problem = kvm_boot_problem(spec, guest.kernel(self.opts.boot), guest.initrd,
                                       self.cell.target.cpu)
            if problem:
                raise CellFailure(f"{spec.name}: {problem}", SKIPPED)

    def _fault_args(self) -> list[str]:
        if self.cell.fault == "linux-kernel-panic":
            return ["rdinit=/mh-no-such-init"]
        if self.cell.fault == "linux-agent-silent":
            return ["mh.agent=off"]
        return []

    def _agent_path(self, index: int) -> Path:
        return self.workdir / f"agent{index}.sock"

    def _new_side(self, role: str) -> _Side:
        """A listening socket for this QEMU's agent port, made now (QEMU
        connects while it starts) and served once the event loop runs."""
        index = len(self.sides)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self._agent_path(index)))
        sock.listen(1)
        sock.setblocking(False)
        name = role if index < 2 else f"{role}{index}"
        log_file = open(self.logdir / f"{name}.agent.log", "w", encoding="ascii",
                        errors="replace")
        side = _Side(index, role, ConsoleWatch(), sock, log_file, self._t0)
        self.sides.append(side)
        self._spawn(self._serve_agent(side))
        return side

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_agent(self, side: _Side) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            side.writer = writer
            side.connected.set()
            try:
                while data := await reader.read(65536):
                    t = time.monotonic()
                    self.stream.feed(side.index, data, t)
                    side.note(data, t)
            except (asyncio.CancelledError, ConnectionError):
                pass
        self._servers.append(await asyncio.start_unix_server(handle, sock=side.agent_sock))

    def serial_sink(self, role: str) -> SerialSink:
        side = self.sides[-1]
        console_mode = self.opts.port == "console"

        def feed(data: bytes, t: float) -> None:
            side.console.feed(data, t)
            if console_mode:
                self.stream.feed(side.index, data, t)
        return feed

    # -- talking to the agent ------------------------------------------------
    async def _send(self, side: _Side, command: str) -> None:
        if self.opts.port == "console":
            raise HarnessError("commands to the agent need its virtio-serial port "
                               "(port: console only reports)")
        if side.writer is None:
            raise HarnessError(f"the {side.role} QEMU never connected the agent's port")
        log.info("agent command on %s: %s", side.role, command)
        side.writer.write(command.encode() + b"\n")
        await side.writer.drain()

    async def _until(self, m: Machine, side: _Side, done: Callable[[], bool], what: str,
                     timeout: float) -> bool:
        """Wait for ``done``; False on timeout, panic or a dead QEMU (the
        caller's check says which)."""
        def abort() -> str | None:
            if not m.alive:
                return f"{m.role} QEMU died: {m.exit_reason()}"
            if side.console.panic:
                return f"kernel panic: {side.console.panic}"
            return None
        try:
            await poll_until(done, bool, timeout=timeout, what=what, abort=abort)
            return True
        except (WaitTimeout, WaitAborted) as exc:
            log.warning("%s", exc)
            return False

    def _boot_failure(self, side: _Side, m: Machine, what: str) -> GuestBootError:
        if not m.alive:
            why = f"{m.role} QEMU died: {m.exit_reason()}"
        elif side.console.panic:
            why = f"kernel panic on the {side.role}: {side.console.panic}"
        else:
            boot = self.stream.boot
            said = ("the agent never reported (no MH HELLO)" if boot is None else
                    f"the agent said hello but got no further (ready: "
                    f"{boot.t_ready is not None}, passes {boot.mem_passes}/"
                    f"{self.opts.warmup_passes}, errors: {boot.errors[:2]})")
            why = f"{said} within {self.cell.timeout:.0f} s"
        return GuestBootError(f"{what}: {why}; console tail:\n{side.console.tail_text()}")

    # -- warm-up -------------------------------------------------------------
    async def warm_up(self, src: Machine, src_ram: Path, figures: dict[str, Any]) -> None:
        side = self.sides[0]

        def ready() -> bool:
            boot = self.stream.boot
            return boot is not None and boot.t_ready is not None

        if not await self._until(src, side, ready, "Linux guest boot", self.cell.timeout):
            raise self._boot_failure(side, src, "source guest did not boot")
        boot = self.stream.boot
        assert boot is not None and boot.t_ready is not None
        if self.cell.fault == "linux-guest-panic":
            await self._send(side, "panic")

        def warm() -> bool:
            b = self.stream.boot
            return (b is boot and b.mem_passes >= self.opts.warmup_passes
                    and (not self.opts.net or b.net_connected)
                    and (not self.opts.disk or (b.last is not None and b.last.disk_acked > 0)))

        if not await self._until(src, side, warm, "Linux guest warm-up", self.cell.timeout):
            raise self._boot_failure(side, src, "source guest did not warm up")
        t0 = self._t_launch or boot.t_hello
        figures["linux"] = {
            "kernel": self.guest.kernel_release if self.guest else "",
            "packages": self.guest.manifest.get("packages") if self.guest else None,
            "boot": self.opts.boot, "boot_s": round(boot.t_hello - t0, 3),
            "ready_s": round(boot.t_ready - t0, 3), "clocksource": boot.hello.get("clocksource"),
            "agent_port": boot.hello.get("port"), "agent_pages": boot.agent_pages,
            "warmup_passes": boot.mem_passes}
        figures["warmup_passes"] = boot.mem_passes

    # -- the paused destination ----------------------------------------------
    def _src_ram(self, dst_ram: Path) -> Path | None:
        for candidate in (dst_ram.with_name("src" + dst_ram.suffix),
                          self.workdir / "src.ram"):
            if candidate.is_file() and candidate != dst_ram:
                return candidate
        return None

    def check_guest(self, dst_ram: Path) -> CheckResult:
        """The agent's records in the paused destination's RAM, checked by
        the host; pages that differ from the source named by owner."""
        boot = self.stream.boot
        layout = ram_layout(self.cell.target.arch, self.cell.target.memory)
        if boot is None or not boot.map_runs:
            return CheckResult("guest", False, "the agent never reported its buffer's map")
        rep = check_records(dst_ram, boot, layout)
        words, _, _ = read_agent_pages(dst_ram, boot, layout)
        self._pages_before = words.reshape(-1, 512)
        figures: dict[str, Any] = {"agent_records": rep.figures()}
        src_ram = self._src_ram(dst_ram)
        diff_text = ""
        if src_ram is not None:
            pages = differing_pages(src_ram, dst_ram, layout)
            if pages:
                named = self._owners(boot, src_ram, layout).describe(
                    pages, first_differences(src_ram, dst_ram, layout, pages[:SHOW_PAGES]))
                figures["pages_differing_from_source"] = {"count": len(pages), **named}
                figures["kernel_symbols"] = self._symbols_figures
                diff_text = (f"; {len(pages)} pages differ from the source: " + ", ".join(
                    f"{n} {k}" for k, n in named["by_owner"].items()) +
                    f" (first {PageOwners.text(named['pages'][0])})")
        if not rep.ok:
            first = rep.first_bad[0] if rep.first_bad else {}
            return CheckResult("guest", False,
                               f"{rep.bad} of {rep.records} agent records wrong in the paused "
                               f"destination's RAM (first: {first}){diff_text}", figures)
        return CheckResult("guest", True, f"{rep.records} agent records intact on the paused "
                           f"destination (generation {rep.generation}, cursor {rep.cursor})"
                           f"{diff_text}", figures)

    def _owners(self, boot: Boot, ram: Path, layout: list[RamRegion]) -> PageOwners:
        """Who owns a page of this boot, kernel image pages by symbol where
        the image's symbol map fits this boot (checked on ``ram``, the
        source's: harness.guest.linux_ram.kernel_symbols), and the kernel's
        page tables as the source's RAM holds them."""
        smap = self.guest.symbol_map() if self.guest is not None else None
        kernel, self._symbols_figures = kernel_symbols(boot, smap, ram, layout)
        if kernel is None:
            return owner_table(boot)
        tables, self._symbols_figures["page_tables"] = page_tables_of(ram, layout, kernel)
        return owner_table(boot, kernel, tables)

    def before_cont(self, dst_ram: Path) -> None:
        boot = self.stream.boot
        self._beats_before = boot.beats if boot else 0

    # -- after cont ----------------------------------------------------------
    async def liveness(self, dst: Machine, dst_ram: Path) -> CheckResult:
        """Heartbeats in the same boot and the agent's buffer changing in the
        destination's RAM.  Both are needed: the first heartbeats after
        ``cont`` may be ones the guest wrote before the switchover that the
        destination delivers only now (virtio-serial's pending element is
        migrated state)."""
        side = self.sides[-1]
        boot = self.stream.boot
        boots_before = len(self.stream.boots)
        want = self._beats_before + LIVENESS_HEARTBEATS
        layout = ram_layout(self.cell.target.arch, self.cell.target.memory)

        def changed_pages() -> int:
            if boot is None or self._pages_before is None:
                return 0
            after, _, _ = read_agent_pages(dst_ram, boot, layout)
            after = after.reshape(-1, 512)
            n = min(len(after), len(self._pages_before))
            return int((after[:n] != self._pages_before[:n]).any(axis=1).sum())

        async def probe() -> tuple[int, int]:
            # Reading the buffer takes a while: off the event loop, which must
            # keep reading the agent's port (heartbeats are timed on arrival).
            changed = await asyncio.to_thread(changed_pages)
            return (boot.beats if boot else 0), changed

        def abort() -> str | None:
            if not dst.alive:
                return "destination QEMU died"
            return "kernel panic" if side.console.panic else None
        try:
            beats, changed = await poll_until(
                probe, lambda got: got[0] >= want and got[1] > 0, timeout=LIVENESS_TIMEOUT,
                interval=0.2, what="destination heartbeats and agent writes after cont",
                abort=abort)
        except (WaitTimeout, WaitAborted) as exc:
            beats, changed = exc.last if isinstance(exc.last, tuple) else (0, 0)
        if side.console.panic:
            return CheckResult("liveness", False,
                               f"kernel panic on the destination: {side.console.panic}",
                               {"console_tail": side.console.tail_text()})
        return check_heartbeat_liveness(HeartbeatLiveness(
            alive=dst.alive, exit_reason="" if dst.alive else dst.exit_reason(),
            heartbeats=beats, beats_before=self._beats_before,
            restarts=len(self.stream.boots) - boots_before, pages_changed=changed))

    def guest_gap(self, held_s: float, t_source_done: float | None, qemu_downtime_ms: float,
                  t_dst_ready: float | None = None, t_resumed: float | None = None,
                  **more: Any) -> GuestGap:
        """Last source heartbeat to first destination heartbeat (host arrival),
        less the harness's hold; the heartbeat period on each side bounds it."""
        edge = self.stream.switchover(0, len(self.sides) - 1) if len(self.sides) > 1 else None
        self._gap = {"held_s": held_s, "qemu_downtime_ms": qemu_downtime_ms, "edge": edge}
        if edge is None:
            return GuestGap()
        before, after = edge
        gap = (after.t - before.t - held_s) * 1000
        parts = {"guest_clock_step_ms": round((after.mono_ns - before.mono_ns) / 1e6, 3)}
        if t_source_done is not None:
            parts["last_source_beat_to_source_done_ms"] = round(
                (t_source_done - before.t) * 1000, 2)
        return GuestGap(gap, 2.0 * self.opts.heartbeat_ms, parts)

    async def after_liveness(self, dst: Machine, limit_ms: float) -> list[CheckResult]:
        """The agent's verdict, a reboot, quiesce; then the checks of data,
        heartbeats, clocks, disk, network and reboot."""
        side = self.sides[-1]
        boot = self.stream.boot
        if boot is None or not dst.alive or side.console.panic:
            why = ("destination QEMU died" if not dst.alive else
                   f"kernel panic: {side.console.panic}" if side.console.panic else
                   "no agent")
            return [CheckResult(name, False, f"not checked: {why}") for name in
                    ("guest-data", "guest-downtime", "clock", "disk", "net", "reboot")]
        if self.lose_disk_write:
            await self._lose_write(dst, boot)
        first = await self._verify(dst, side, boot)
        checks = [check_guest_data(first), self._downtime_check(boot, limit_ms),
                  check_clock(first, self._guest_step(), self._host_gap())]
        reboot_ev = RebootEvidence(requested=False)
        if self.opts.reboot and self.opts.port == "virtio":
            reboot_ev = await self._reboot(dst, side, boot)
        last = self.stream.boot
        assert last is not None
        quiesced = await self._quiesce(dst, side, last)
        disk = await self._disk_check(quiesced, first, last)
        if self.fault_figures:
            disk.figures["fault"] = self.fault_figures
        checks.append(disk)
        checks.append(await self._net_check(quiesced, first))
        checks.append(check_reboot(reboot_ev))
        return checks

    async def _lose_write(self, dst: Machine, boot: Boot) -> None:
        """Zero one block the guest saw acknowledged before the migration,
        through the destination's own BlockBackend (HMP ``qemu-io``,
        block/monitor/block-hmp-cmds.c hmp_qemu_io): as if that write had never
        reached the image."""
        edge = self._gap.get("edge")
        acked = edge[0].disk_acked if edge else 0
        blocks = int((boot.diskscan or {}).get("blocks", 0))
        if acked < 2 or not blocks:
            raise HarnessError(f"no acknowledged write to lose (acked {acked}, "
                               f"{blocks} blocks)")
        seq = acked // 2
        offset = (seq % blocks) * 4096
        out = await dst.hmp(f'qemu-io disk0 "write -z {offset} 4096"')
        if "error" in out.lower():
            raise HarnessError(f"qemu-io on the destination: {out.strip()}")
        self.fault_figures = {"lost_write": seq, "block": seq % blocks, "qemu_io": out.strip()}
        log.info("fault: zeroed block %d (write %d) on the destination: %s", seq % blocks,
                 seq, out.strip())

    async def _verify(self, dst: Machine, side: _Side, boot: Boot) -> AgentVerdict:
        if self.opts.port != "virtio":
            return AgentVerdict(None)
        n = len(boot.verdicts)
        await self._send(side, "verify")
        await self._until(dst, side, lambda: len(boot.verdicts) > n, "agent verdict",
                          COMMAND_TIMEOUT)
        fields = boot.verdicts[n][1] if len(boot.verdicts) > n else None
        return AgentVerdict(fields, tuple(boot.errors), boot.error_count)

    async def _reboot(self, dst: Machine, side: _Side, boot: Boot) -> RebootEvidence:
        old = boot.boot_id
        await self._send(side, "reboot")
        t = time.monotonic()
        came_back = await self._until(
            dst, side, lambda: (self.stream.boot is not boot and
                                self.stream.boot.t_ready is not None),
            "guest back after reboot", self.cell.timeout)
        new = self.stream.boot
        acked = int((boot.quiesced or {}).get("disk_acked", 0))
        if not came_back or new is boot or new is None:
            return RebootEvidence(requested=True, bye=boot.bye == "reboot", old_boot=old,
                                  timeout_s=self.cell.timeout, acked_before=acked,
                                  panic=side.console.panic, alive=dst.alive,
                                  exit_reason="" if dst.alive else dst.exit_reason())
        assert new.t_ready is not None
        verdict = await self._verify(dst, side, new)
        return RebootEvidence(requested=True, bye=boot.bye == "reboot", new_boot=new.boot_id,
                              old_boot=old, ready_s=round(new.t_ready - t, 3),
                              timeout_s=self.cell.timeout, diskscan=new.diskscan,
                              acked_before=acked, verdict=verdict, panic=side.console.panic,
                              alive=dst.alive)

    async def _quiesce(self, dst: Machine, side: _Side, boot: Boot) -> dict[str, str] | None:
        if self.opts.port != "virtio":
            return None
        await self._send(side, "quiesce")
        await self._until(dst, side, lambda: boot.quiesced is not None, "agent quiesce",
                          COMMAND_TIMEOUT)
        return boot.quiesced

    async def _disk_check(self, quiesced: dict[str, str] | None, verdict: AgentVerdict,
                          last: Boot) -> CheckResult:
        if not self.opts.disk or self.overlay is None:
            return check_disk(None, AgentVerdict({"disk": "off"}))
        if quiesced is None:
            return check_disk(None, verdict, "the agent did not stop writing (no QUIESCED)")
        blocks = int((last.diskscan or {}).get("blocks", 0))
        try:
            rep: DiskReport = await asyncio.to_thread(
                check_image, self.overlay, blocks, int(quiesced.get("disk_acked", 0)),
                self.workdir)
        except HarnessError as exc:
            return check_disk(None, verdict, str(exc))
        return check_disk(rep.figures(), verdict)

    async def _net_check(self, quiesced: dict[str, str] | None,
                         verdict: AgentVerdict) -> CheckResult:
        if not self.opts.net:
            return check_net(None, AgentVerdict({"net": "off"}), False)
        # What every boot's agent said it sent must have arrived.
        want = {b.boot_id[-8:]: int((b.quiesced or {}).get("net_sent", 0))
                for b in self.stream.boots if b.quiesced}

        def drained() -> bool:
            streams = self.peer.report().streams
            return all(streams.get(k, (0, 0, 0))[1] >= n for k, n in want.items())
        with contextlib.suppress(WaitTimeout):
            await poll_until(drained, bool, timeout=NET_DRAIN_TIMEOUT, what="network drain")
        report = self.peer.report()
        missing = {k: n - report.streams.get(k, (0, 0, 0))[1] for k, n in want.items()
                   if report.streams.get(k, (0, 0, 0))[1] < n}
        report.lost += sum(missing.values())
        figures = report.figures()
        figures["sent_per_boot"] = want
        if missing:
            figures["problems"].append(f"records the agent sent never arrived: {missing}")
        if report.switchover_gap_ms is not None:
            # The harness held the destination paused for its checks: not
            # the stream's stall.
            held_ms = self._gap.get("held_s", 0.0) * 1000
            figures["harness_held_ms"] = round(held_ms, 2)
            figures["switchover_stall_ms"] = round(report.switchover_gap_ms - held_ms, 2)
        return check_net(figures, verdict, switched=len(self.sides) > 1)

    def _downtime_check(self, boot: Boot, limit_ms: float) -> CheckResult:
        """The guest's silence against the source's configured downtime-limit
        (read back from QEMU by the flow's configure phase: the matrix's value,
        or QEMU's default where the cell sets none)."""
        edge = self._gap.get("edge")
        return check_guest_downtime(HeartbeatEvidence(
            period_ms=float(self.opts.heartbeat_ms), heartbeats=boot.beats, lost=boot.lost,
            duplicated=boot.duplicated,
            src_last=None if edge is None else (edge[0].seq, edge[0].t, edge[0].mono_ns),
            dst_first=None if edge is None else (edge[1].seq, edge[1].t, edge[1].mono_ns),
            held_ms=self._gap.get("held_s", 0.0) * 1000,
            qemu_downtime_ms=float(self._gap.get("qemu_downtime_ms", 0.0)), limit_ms=limit_ms,
            tolerance_ms=self.cell.downtime_tolerance_ms,
            carried_lines=self.stream.carried_partial))

    def _guest_step(self) -> float | None:
        edge = self._gap.get("edge")
        return None if edge is None else round((edge[1].mono_ns - edge[0].mono_ns) / 1e6, 3)

    def _host_gap(self) -> float | None:
        edge = self._gap.get("edge")
        return None if edge is None else round((edge[1].t - edge[0].t) * 1000, 2)

    async def close(self) -> None:
        """Stop serving the agent ports and the peer (the flow's teardown)."""
        for server in self._servers:
            server.close()
        for side in self.sides:
            if side.writer is not None:
                side.writer.close()
            side.agent_sock.close()
            side.log.close()
        for task in list(self._tasks):
            task.cancel()
        await self.peer.close()

    def figures(self) -> dict[str, Any]:
        """The agent stream's summary, for results.json."""
        return self.stream.summary()
