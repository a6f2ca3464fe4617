"""The guest's side of a cell: one strategy class per workload kind.

The cell flow (harness.migration.flow) asks the same questions of every guest
and this module answers them per kind, so the flow never branches on what
runs inside:

- which arguments each side's QEMU needs (firmware, ``-bios``, a loader) and
  whether it boots from the dirtier disk;
- how to know the source guest is warmed up before migrating;
- what the paused destination's RAM must show (the guest check);
- how to tell, after ``cont``, that the guest runs on where it left off
  (its evidence; the verdict is harness.checks.liveness's);
- what the guest itself saw of the switchover, for the downtime check.

Kinds (``workload.kind`` in matrix.yaml, chosen by :func:`workload_for`):

- ``dirtier`` on x86 (:class:`X86Dirtier`): the boot-block dirtier
  (harness.guest.dirtier) with heartbeats on the serial port and the one-step
  invariant over its region;
- ``dirtier`` on e2k (:class:`E2kDirtier`): the ``-bios`` dirtier
  (harness.guest.e2k_dirtier), whose only output is a boots/passes marker in
  guest RAM;
- ``pattern`` (:class:`Pattern`): no guest code of ours; a seeded pattern is
  loaded into the source's RAM (harness.guest.pattern) while its firmware runs;
- ``pattern-paused`` (:class:`PatternPaused`): the same with a source that
  never runs a CPU (``-S``), so RAM is zero but for the pattern.
"""
from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from harness.cell import Cell
from harness.checks.guest import check_guest_invariant
from harness.checks.liveness import (LIVENESS_HEARTBEATS, LIVENESS_TIMEOUT, HeartbeatLiveness,
                                     MarkerLiveness, check_heartbeat_liveness,
                                     check_marker_liveness, check_still_running)
from harness.checks.modes import check_zero_pages
from harness.errors import HarnessError
from harness.guest.dirtier import HeartbeatParser, boot_args, read_region_bytes
from harness.guest.e2k_dirtier import DEFAULT_MARKER_ADDR, MARKER_SIZE, make_firmware, read_marker
from harness.guest.pattern import check_pattern, loader_args, make_pattern
from harness.migration.waits import wait_progress
from harness.qemu.cmdline import firmware_args
from harness.qemu.machine import Machine
from harness.results import CheckResult
from harness.units import PAGE
from harness.waiting import WaitAborted, WaitTimeout, poll_until

log = logging.getLogger(__name__)

#: How long the source guest may take to complete its warm-up passes.
WARMUP_TIMEOUT = 60.0
#: A pattern guest's firmware runs this long before migrating, and the
#: destination this long after ``cont`` before it is looked at.
PATTERN_RUN_BEFORE = 0.3
#: Where the e2k dirtier keeps its boots/passes marker (below its region).
MARKER_ADDR = DEFAULT_MARKER_ADDR

#: Receives the serial bytes a QEMU printed and the host time they arrived.
SerialSink = Callable[[bytes, float], None]


class GuestProgressError(HarnessError):
    """The guest did not get as far as the flow waits for (``qemu_died``: its
    QEMU exited, which is a harness-level error rather than a failed cell)."""

    def __init__(self, reason: str, qemu_died: bool) -> None:
        self.qemu_died = qemu_died
        super().__init__(reason)


@dataclass(frozen=True)
class GuestGap:
    """What the guest itself saw of the switchover (None: it cannot tell)."""

    #: Last source heartbeat to first destination heartbeat, less the time the
    #: harness held the guest stopped.
    gap_ms: float | None = None
    #: How coarse that figure is: the pass time around switchover, both sides.
    resolution_ms: float | None = None
    #: Where the gap went, in ms on the host clock (figures, so that a large
    #: gap can be explained): see :meth:`X86Dirtier.guest_gap`.
    parts: dict[str, float] = field(default_factory=dict)


class Workload(ABC):
    """What runs in one cell's guest; one instance per cell (it keeps the
    state it saw between the flow's phases)."""

    kind: ClassVar[str]
    #: Boots from the dirtier boot disk (harness.migration.launch makes one per side).
    needs_disk: ClassVar[bool] = False
    #: Rewrites its region while it runs: pages a running guest changed after
    #: the copy was taken (postcopy, background-snapshot) are explained.
    writes_region: ClassVar[bool] = False
    #: Runs an OS that may write anywhere in RAM once it runs (Linux): after
    #: the destination ran (postcopy), RAM cannot be compared with the source.
    writes_anywhere: ClassVar[bool] = False
    #: Has checks of its own after liveness (:meth:`after_liveness`).
    post_checks: ClassVar[bool] = False
    #: (stop, cont) host times of the harness stopping a destination that
    #: already ran (dst-start autostart, postcopy) for its checks; see
    #: :meth:`harness_stopped`.
    harness_stop: tuple[float, float] | None = None
    #: Reads the first byte of each of a region's pages from a side's RAM
    #: file (path, file offset, pages); the cell flow gives one that reads on
    #: the destination's host when that is another machine.
    read_region: Callable[[Path, int, int], np.ndarray] = staticmethod(read_region_bytes)

    def __init__(self, cell: Cell, workdir: Path) -> None:
        self.cell = cell
        self.spec = cell.target.workload
        self.workdir = workdir

    @property
    def region_pages(self) -> int:
        return self.spec.region_size // PAGE

    @abstractmethod
    def machine_args(self, role: str) -> list[str]:
        """QEMU arguments for the ``src`` or ``dst`` side."""

    def serial_sink(self, role: str) -> SerialSink | None:
        """Where the side's serial output goes (None: only to its log)."""
        return None

    @abstractmethod
    async def warm_up(self, src: Machine, src_ram: Path, figures: dict[str, Any]) -> None:
        """Return once the source guest is ready to be migrated; raise
        :class:`GuestProgressError` when it does not get there."""

    @abstractmethod
    def check_guest(self, dst_ram: Path) -> CheckResult:
        """The guest check on the paused destination's RAM (file or dump)."""

    def stream_checks(self, info: dict[str, Any]) -> list[CheckResult]:
        """Checks of what the migration sent that follow from this guest."""
        return []

    def before_cont(self, dst_ram: Path) -> None:
        """Note the paused destination's state just before ``cont``."""

    @abstractmethod
    async def liveness(self, dst: Machine, dst_ram: Path) -> CheckResult:
        """After ``cont``: watch the destination run on (the verdict is
        harness.checks.liveness's)."""

    async def after_liveness(self, dst: Machine, limit_ms: float) -> list[CheckResult]:
        """Checks that need the resumed guest for longer (Linux: its own
        verdict, its devices, a reboot); run after liveness and downtime.
        ``limit_ms``: the source's configured ``downtime-limit``."""
        return []

    async def close(self) -> None:
        """Free what the workload holds (listeners, tasks); the flow calls it
        when the cell ends, however it ends."""

    def guest_gap(self, held_s: float, t_source_done: float | None,
                  qemu_downtime_ms: float, t_dst_ready: float | None = None,
                  t_resumed: float | None = None, postcopy: bool = False) -> GuestGap:
        """What the guest saw of the switchover; ``held_s`` is how long the
        harness itself kept it stopped (taken off the gap).  Host times:
        ``t_source_done`` the source's terminal state, ``t_dst_ready`` when the
        destination could first run, ``t_resumed`` when it was let run (last,
        before its first output).  ``postcopy``: it ran while its RAM was
        still arriving."""
        return GuestGap()

    def harness_stopped(self, t_stop: float, t_cont: float) -> None:
        """The harness stopped the running destination at ``t_stop`` (for its
        checks) and let it run again at ``t_cont``: that pause is the
        harness's, not the switchover's (see :meth:`stopped_before`)."""
        self.harness_stop = (t_stop, t_cont)

    def stopped_before(self, t_first_output: float | None) -> float:
        """Seconds of the harness's own stop inside a gap that ends at the
        guest's first output on the destination (host time of its arrival).

        An autostarted destination is stopped moments after QEMU started it,
        often before its first heartbeat: the gap then spans the harness's
        checks, which are taken off.  Output that arrived while it was
        stopped was written before the stop, so then nothing is."""
        if self.harness_stop is None or t_first_output is None:
            return 0.0
        t_stop, t_cont = self.harness_stop
        return t_cont - t_stop if t_first_output > t_cont else 0.0


async def wait_warm_up(m: Machine, progress: Callable[[], int], describe: Callable[[], str],
                       count: int, timeout: float = WARMUP_TIMEOUT,
                       what: str = "source warm-up") -> None:
    """Wait (harness.migration.waits.wait_progress) until the guest's
    progress (heartbeats, passes) reaches ``count``; when it does not,
    :class:`GuestProgressError` says how far it got (``describe``)."""
    try:
        await wait_progress(m, progress, count, timeout, what)
    except WaitAborted as exc:
        raise GuestProgressError(f"{what}: {exc.reason}", qemu_died=True) from None
    except WaitTimeout:
        raise GuestProgressError(f"{what}: {describe()} after {timeout:.0f} s",
                                 qemu_died=False) from None


class _BeatClock:
    """Feeds a HeartbeatParser and remembers when the last two chunks with
    heartbeats arrived.

    During a migration the dirtier's passes slow down a lot (every first write
    to a page after a dirty-log sync takes QEMU's slow path), so the heartbeat
    interval that bounds the guest-observed gap is the one at switchover, not
    the average rate.
    """

    def __init__(self, parser: HeartbeatParser) -> None:
        self.parser = parser
        self.prev: float | None = None
        self.last: float | None = None

    def feed(self, data: bytes, t: float) -> None:
        before = self.parser.heartbeats
        self.parser.feed(data, t)
        if self.parser.heartbeats > before:
            self.prev, self.last = self.last, t

    def last_interval(self) -> float | None:
        return None if self.prev is None or self.last is None else self.last - self.prev


class _Dirtier(Workload):
    """Both dirtiers: the one-step invariant over the region they increment."""

    writes_region = True

    def __init__(self, cell: Cell, workdir: Path) -> None:
        super().__init__(cell, workdir)
        #: The region's first bytes as the paused destination held them.
        self._region_before: np.ndarray | None = None

    def check_guest(self, dst_ram: Path) -> CheckResult:
        check, values = check_guest_invariant(dst_ram, self.spec.region_base,
                                              self.region_pages, self.spec.region_base)
        self._region_before = values
        return check


class X86Dirtier(_Dirtier):
    """The boot-block dirtier: a heartbeat byte per pass on COM1."""

    kind = "dirtier"
    needs_disk = True

    def __init__(self, cell: Cell, workdir: Path) -> None:
        super().__init__(cell, workdir)
        self.src = _BeatClock(HeartbeatParser())
        # The destination's serial stream starts mid-run: no banner is
        # expected there, and one would mean the guest restarted from reset.
        # A cancel-retry cell's second destination feeds the same clock.
        self.dst = _BeatClock(HeartbeatParser(expect_banner=False))
        self._beats_before = 0

    def machine_args(self, role: str) -> list[str]:
        target = self.cell.target
        return firmware_args(target.arch, self.workdir, target.firmware) + boot_args(
            target.firmware, self.workdir, self.spec.region_base, self.spec.region_size,
            target.memory)

    def serial_sink(self, role: str) -> SerialSink:
        return (self.src if role == "src" else self.dst).feed

    async def warm_up(self, src: Machine, src_ram: Path, figures: dict[str, Any]) -> None:
        hb, count = self.src.parser, self.spec.warmup_passes
        await wait_warm_up(src, lambda: hb.heartbeats, lambda: f"{hb.heartbeats}/{count} "
                           f"heartbeats (banner seen: {hb.banner_seen})", count)
        figures["warmup_passes"] = hb.heartbeats

    def before_cont(self, dst_ram: Path) -> None:
        self._beats_before = self.dst.parser.heartbeats

    async def liveness(self, dst: Machine, dst_ram: Path) -> CheckResult:
        hb = self.dst.parser
        try:
            await wait_progress(dst, lambda: hb.heartbeats,
                                self._beats_before + LIVENESS_HEARTBEATS, LIVENESS_TIMEOUT,
                                "destination heartbeats after cont")
        except (WaitTimeout, WaitAborted):
            pass  # the check says how far it got
        # The region must have moved on from what the paused check read.
        assert self._region_before is not None, "check_guest runs before liveness"
        after = self.read_region(dst_ram, self.spec.region_base, self.region_pages)
        return check_heartbeat_liveness(HeartbeatLiveness(
            alive=dst.alive, exit_reason="" if dst.alive else dst.exit_reason(),
            heartbeats=hb.heartbeats, beats_before=self._beats_before, restarts=hb.restarts,
            pages_changed=int((after != self._region_before).sum())))

    def guest_gap(self, held_s: float, t_source_done: float | None,
                  qemu_downtime_ms: float, t_dst_ready: float | None = None,
                  t_resumed: float | None = None, postcopy: bool = False) -> GuestGap:
        src, dst = self.src.parser, self.dst.parser
        stopped = self.stopped_before(dst.first_heartbeat_t)
        held_s += stopped
        if stopped and self.harness_stop is not None:
            # It was let run last, before its first heartbeat, by the cont
            # that ended the harness's stop.
            t_resumed = self.harness_stop[1]
        gap = None
        if src.last_heartbeat_t is not None and dst.first_heartbeat_t is not None:
            gap = (dst.first_heartbeat_t - src.last_heartbeat_t - held_s) * 1000
        parts = _gap_parts(src.last_heartbeat_t, t_source_done, t_dst_ready, t_resumed,
                           dst.first_heartbeat_t, self.dst.last_interval())
        # Resolution of the gap: a pass may have been under way on either
        # side.  On the source that is at least the last pass interval, and
        # when the guest was slowed (auto-converge throttling) the pass in
        # progress at the stop, which began at the last heartbeat and ended
        # when the source stopped (its completion minus QEMU's downtime).
        src_res = self.src.last_interval() or 0.0
        if t_source_done is not None and src.last_heartbeat_t is not None:
            stop = t_source_done - qemu_downtime_ms / 1000
            src_res = max(src_res, stop - src.last_heartbeat_t)
        # On the destination, the rest of the interrupted pass: from when it
        # was let run to its first heartbeat, which the harness measures.
        # After a completed migration that pass runs from RAM already in
        # place, yet under a CPU hog it outlasted a steady pass in 55 of 78
        # cells, by up to 25x (its vCPU thread scheduled anew, TCG's
        # translations and TLB cold: benchmarks/README.md, "After the fixes"),
        # so the steady interval alone under-allows it.  During
        # postcopy the pass waits for pages still on the source, which is
        # time the guest really was stopped: there only the steady interval.
        dst_res = self.dst.last_interval() or 0.0
        if not postcopy and t_resumed is not None and dst.first_heartbeat_t is not None:
            dst_res = max(dst_res, dst.first_heartbeat_t - t_resumed)
        slack = src_res + dst_res
        if stopped:
            parts["harness_stopped_after_start_ms"] = round(stopped * 1000, 2)
        return GuestGap(gap, slack * 1000 if slack else None, parts)


def _gap_parts(last_src_beat: float | None, t_source_done: float | None,
               t_dst_ready: float | None, t_resumed: float | None,
               first_dst_beat: float | None, dst_interval: float | None) -> dict[str, float]:
    """The guest gap cut where the host saw something happen (ms; a part is
    left out when either end is unknown).  Last source heartbeat ->
    ``source_done`` (the source's terminal state: the rest of its pass, QEMU's
    downtime and any pre-switchover hold) -> ``destination_ready`` (what the
    destination still loaded after the source was done) -> the harness's
    checks (taken off the gap) -> ``resumed`` (``cont``, or postcopy's resume)
    -> first destination heartbeat (the rest of the interrupted pass, run by
    the destination's vCPU).  The destination's steady pass interval is given
    beside the last part: the guest bound allows the larger of the two (the
    steady one only in postcopy)."""
    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 2)

    parts = {"last_source_beat_to_source_done_ms": ms(last_src_beat, t_source_done),
             "source_done_to_destination_ready_ms": ms(t_source_done, t_dst_ready),
             "resumed_to_first_destination_beat_ms": ms(t_resumed, first_dst_beat),
             "destination_pass_interval_ms": ms(0.0, dst_interval)}
    return {k: v for k, v in parts.items() if v is not None}


class E2kDirtier(_Dirtier):
    """The e2k ``-bios`` dirtier: no serial output; its progress is a
    (boots, passes) marker in guest RAM, read straight from the RAM file."""

    kind = "dirtier"

    def __init__(self, cell: Cell, workdir: Path) -> None:
        super().__init__(cell, workdir)
        self._firmware: Path | None = None
        self._marker_before: tuple[int, int] | None = None

    def machine_args(self, role: str) -> list[str]:
        if self._firmware is None:
            self._firmware = make_firmware(self.workdir / "e2k-dirtier.bios",
                                           self.spec.region_base, self.spec.region_size,
                                           MARKER_ADDR, self.cell.target.memory)
        return ["-bios", str(self._firmware)]

    async def warm_up(self, src: Machine, src_ram: Path, figures: dict[str, Any]) -> None:
        count = self.spec.warmup_passes

        def describe() -> str:
            boots, passes = read_ram_marker(src_ram)
            return f"guest marker shows {passes}/{count} passes (boots {boots})"

        await wait_warm_up(src, lambda: read_ram_marker(src_ram)[1], describe, count)
        figures["warmup_passes"] = read_ram_marker(src_ram)[1]

    def before_cont(self, dst_ram: Path) -> None:
        self._marker_before = read_ram_marker(dst_ram)

    async def liveness(self, dst: Machine, dst_ram: Path) -> CheckResult:
        assert self._marker_before is not None, "before_cont runs before liveness"
        boots0, passes0 = self._marker_before
        try:
            boots, passes = await poll_until(
                lambda: read_ram_marker(dst_ram),
                lambda m: m[0] != boots0 or m[1] >= passes0 + LIVENESS_HEARTBEATS,
                timeout=LIVENESS_TIMEOUT, what="destination marker after cont",
                abort=lambda: None if dst.alive else "destination QEMU died")
        except (WaitTimeout, WaitAborted) as exc:
            boots, passes = exc.last if isinstance(exc.last, tuple) else self._marker_before
        return check_marker_liveness(MarkerLiveness(
            alive=dst.alive, exit_reason="" if dst.alive else dst.exit_reason(),
            boots_before=boots0, passes_before=passes0, boots_after=boots, passes_after=passes))


def read_ram_marker(ram: Path) -> tuple[int, int]:
    """(boots, passes) of the e2k dirtier, read straight from its RAM file."""
    with open(ram, "rb") as f:
        f.seek(MARKER_ADDR)
        return read_marker(f.read(MARKER_SIZE), 0)


class Pattern(Workload):
    """A seeded pattern preloaded into the source's RAM; the firmware runs.

    Only the source gets the pattern: whatever the destination holds there
    came through the migration stream."""

    kind = "pattern"
    #: ``-S`` on the source: no CPU ever runs.
    paused_source: ClassVar[bool] = False

    def machine_args(self, role: str) -> list[str]:
        args = firmware_args(self.cell.target.arch, self.workdir)
        if role == "src":
            blob = make_pattern(self.workdir / "pattern.bin", self.spec.region_size,
                                self.cell.seed)
            args += loader_args(blob, self.spec.region_base)
            args += ["-S"] if self.paused_source else []
        return args

    async def warm_up(self, src: Machine, src_ram: Path, figures: dict[str, Any]) -> None:
        await asyncio.sleep(PATTERN_RUN_BEFORE)  # let the firmware run a little

    def check_guest(self, dst_ram: Path) -> CheckResult:
        return check_pattern(dst_ram, self.spec.region_base, self.spec.region_size,
                             self.cell.seed, self.spec.region_base)

    async def liveness(self, dst: Machine, dst_ram: Path) -> CheckResult:
        await asyncio.sleep(PATTERN_RUN_BEFORE)  # give a broken guest time to fall over
        status = await dst.status() if dst.alive else "dead"
        return check_still_running(dst.alive, status, dst.exit_reason())


class PatternPaused(Pattern):
    """The pattern with a source that never runs: RAM is zero but for it."""

    kind = "pattern-paused"
    paused_source = True

    async def warm_up(self, src: Machine, src_ram: Path, figures: dict[str, Any]) -> None:
        return None  # nothing runs

    def stream_checks(self, info: dict[str, Any]) -> list[CheckResult]:
        # A guest that never ran: zero pages must not travel as data.
        return [check_zero_pages(info, self.cell.target.memory, self.spec.region_size)]


def workload_for(cell: Cell, workdir: Path) -> Workload:
    """The workload strategy for ``cell`` (its ``workload.kind`` and, for the
    dirtier, its architecture)."""
    kind = cell.target.workload.kind
    if kind == Pattern.kind:
        return Pattern(cell, workdir)
    if kind == PatternPaused.kind:
        return PatternPaused(cell, workdir)
    # Any other kind is the dirtier (matrix.yaml's default), as it always was.
    if cell.target.arch == "e2k":
        return E2kDirtier(cell, workdir)
    return X86Dirtier(cell, workdir)
