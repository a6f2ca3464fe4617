"""The host's reading of the Linux guest's agent (images/linux/agent).

The agent writes text lines starting with ``MH `` (images/linux/README.md has
the list) on a virtio-serial port; each QEMU of a cell connects that port to
a socket of the harness.  This module turns the bytes into facts, without any
I/O of its own:

- :class:`AgentStream` - one logical stream fed by every QEMU of the cell in
  turn (source, then destination): the guest's line protocol does not restart
  at switchover, and virtio-serial may hand a line half-written on the source
  to the destination (the port's pending element is part of its migrated
  state), so a source's unfinished line is carried over to the next QEMU's
  bytes.  Heartbeats are counted per boot: sequence gaps (lost), repeats
  (duplicated), the largest host-time gap and where it fell;
- :class:`ConsoleWatch` - the serial console: the last lines for error
  messages, and a kernel panic the moment it is printed.
"""
from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Heartbeat", "Boot", "AgentStream", "ConsoleWatch", "parse_kv", "PANIC_RE"]

log = logging.getLogger(__name__)

#: What the kernel prints when it panics (kernel/panic.c, panic()).
PANIC_RE = re.compile(r"Kernel panic - not syncing: ?(.*)")
#: Lines kept for error messages.
TAIL_LINES = 25
#: ``MH ERR`` lines kept per boot (the agent limits its own, too).
MAX_ERRORS = 64


def parse_kv(words: list[str]) -> dict[str, str]:
    """``key=value`` words into a dict (words without ``=`` are skipped)."""
    out = {}
    for w in words:
        k, sep, v = w.partition("=")
        if sep:
            out[k] = v
    return out


@dataclass(frozen=True)
class Heartbeat:
    """One ``MH HB`` line and when the host received it."""

    seq: int
    mono_ns: int
    real_ns: int
    mem_passes: int
    mem_errors: int
    disk_acked: int
    net_sent: int
    t: float            # host monotonic time of arrival
    source: int         # which QEMU delivered it (0 = the first, the source)


@dataclass
class Boot:
    """What one boot of the guest said (a reboot starts a new one)."""

    boot_id: str
    hello: dict[str, str]
    t_hello: float
    source: int
    t_ready: float | None = None
    iomem: list[tuple[int, int, str]] = field(default_factory=list)
    #: (vaddr, paddr, pages) runs of the agent's buffer.
    map_runs: list[tuple[int, int, int]] = field(default_factory=list)
    map_end: dict[str, str] | None = None
    diskscan: dict[str, str] | None = None
    net_connected: bool = False
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    verdicts: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    quiesced: dict[str, str] | None = None
    bye: str | None = None
    # heartbeats
    beats: int = 0
    first: Heartbeat | None = None
    last: Heartbeat | None = None
    lost: int = 0
    duplicated: int = 0
    #: (gap seconds, heartbeat before, heartbeat after) of the largest gap.
    max_gap: tuple[float, Heartbeat, Heartbeat] | None = None
    #: First and last heartbeat delivered by each QEMU.
    per_source: dict[int, tuple[Heartbeat, Heartbeat]] = field(default_factory=dict)

    @property
    def mem_passes(self) -> int:
        return self.last.mem_passes if self.last else 0

    @property
    def agent_pages(self) -> int:
        return sum(n for _, _, n in self.map_runs)

    def agent_ranges(self) -> list[tuple[int, int]]:
        """The buffer's guest-physical pages as [start, end) byte ranges."""
        return [(p, p + n * 4096) for _, p, n in self.map_runs]


class AgentStream:
    """The agent's lines, from every QEMU of the cell, in order."""

    def __init__(self) -> None:
        self.boots: list[Boot] = []
        self.pongs: list[tuple[float, str]] = []
        self.other: list[str] = []             # unknown MH lines (first 20)
        self.carried_partial = 0               # lines completed by a later QEMU
        self.bytes = 0
        self._buf: dict[int, bytearray] = {}
        self._current: int | None = None

    # -- feeding -----------------------------------------------------------
    def feed(self, source: int, data: bytes, t: float) -> None:
        """Bytes QEMU number ``source`` delivered at host time ``t``."""
        if not data:
            return
        self.bytes += len(data)
        if source not in self._buf:
            self._buf[source] = bytearray()
            prev = self._current
            if prev is not None and prev != source and self._buf.get(prev):
                # The previous QEMU's last line was cut at switchover: its
                # rest comes from this one.
                self._buf[source] += self._buf[prev]
                self._buf[prev].clear()
                self.carried_partial += 1
        self._current = source
        buf = self._buf[source]
        buf += data
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl]).rstrip(b"\r").decode("ascii", "replace")
            del buf[:nl + 1]
            self._line(line, t, source)

    def _line(self, line: str, t: float, source: int) -> None:
        i = line.find("MH ")
        if i < 0:
            return
        words = line[i + 3:].split()
        if not words:
            return
        kind, args = words[0], words[1:]
        if kind == "HELLO":
            kv = parse_kv(args)
            self.boots.append(Boot(kv.get("boot", "?"), kv, t, source))
            return
        boot = self.boots[-1] if self.boots else None
        if boot is None:
            return  # nothing before the first HELLO belongs to a boot
        try:
            if kind == "HB":
                self._beat(boot, Heartbeat(*(int(a) for a in args[:7]), t=t, source=source))
            elif kind == "MAP":
                boot.map_runs.append((int(args[0], 16), int(args[1], 16), int(args[2])))
            elif kind == "MAPEND":
                boot.map_end = parse_kv(args)
            elif kind == "IOMEM":
                boot.iomem.append((int(args[0], 16), int(args[1], 16), " ".join(args[2:])))
            elif kind == "READY":
                boot.t_ready = t
            elif kind == "DISKSCAN":
                boot.diskscan = parse_kv(args)
            elif kind == "NET":
                boot.net_connected = bool(args) and args[0] == "connected"
            elif kind == "ERR":
                boot.error_count += 1
                if len(boot.errors) < MAX_ERRORS:
                    boot.errors.append(" ".join(args))
            elif kind == "VERDICT":
                boot.verdicts.append((t, parse_kv(args)))
            elif kind == "QUIESCED":
                boot.quiesced = parse_kv(args)
            elif kind == "BYE":
                boot.bye = args[0] if args else ""
            elif kind == "PONG":
                self.pongs.append((t, " ".join(args)))
            elif len(self.other) < 20:
                self.other.append(line[i:])
        except (ValueError, IndexError, TypeError):
            if len(self.other) < 20:
                self.other.append(f"unparsable: {line[i:]}")

    @staticmethod
    def _beat(boot: Boot, hb: Heartbeat) -> None:
        last = boot.last
        if last is not None:
            if hb.seq <= last.seq:
                boot.duplicated += 1
                return
            boot.lost += hb.seq - last.seq - 1
            gap = hb.t - last.t
            if boot.max_gap is None or gap > boot.max_gap[0]:
                boot.max_gap = (gap, last, hb)
        else:
            boot.first = hb
        boot.beats += 1
        boot.last = hb
        first = boot.per_source.get(hb.source, (hb, hb))[0]
        boot.per_source[hb.source] = (first, hb)

    # -- questions ---------------------------------------------------------
    @property
    def boot(self) -> Boot | None:
        """The current boot."""
        return self.boots[-1] if self.boots else None

    def switchover(self, before: int, after: int) -> tuple[Heartbeat, Heartbeat] | None:
        """The last heartbeat QEMU ``before`` delivered and the first QEMU
        ``after`` delivered, in the boot that spans them (None if none does)."""
        for boot in self.boots:
            if before in boot.per_source and after in boot.per_source:
                return boot.per_source[before][1], boot.per_source[after][0]
        return None

    def summary(self) -> dict[str, Any]:
        """Figures for results.json."""
        return {
            "boots": [{"boot": b.boot_id, "source": b.source, "heartbeats": b.beats,
                       "lost": b.lost, "duplicated": b.duplicated, "errors": b.error_count,
                       "mem_passes": b.mem_passes, "bye": b.bye}
                      for b in self.boots],
            "bytes": self.bytes,
            "lines_completed_by_next_qemu": self.carried_partial,
            "unknown_lines": self.other[:5],
        }


class ConsoleWatch:
    """The serial console of one QEMU: its last lines and any kernel panic."""

    def __init__(self) -> None:
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.panic: str | None = None
        self.t_panic: float | None = None
        self._partial = b""

    def feed(self, data: bytes, t: float) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("ascii", "replace")
            if not line.strip():
                continue
            self.tail.append(line)
            m = PANIC_RE.search(line)
            if m and self.panic is None:
                self.panic = m.group(1).strip() or line.strip()
                self.t_panic = t

    def tail_text(self, lines: int = 12) -> str:
        """The last lines, for an error message."""
        shown = list(self.tail)[-lines:]
        if self._partial:
            shown.append(self._partial.decode("ascii", "replace"))
        return "\n".join(shown) if shown else "(no console output)"
