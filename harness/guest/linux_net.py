"""The harness's end of the Linux guest's TCP stream (images/linux/agent/net.c).

The guest connects to a guestfwd address of QEMU's user netdev; QEMU forwards
that connection to a socket it opens on the host (a chardev: net/slirp.c,
slirp_guestfwd).  Each QEMU of a cell opens its own, so the peer listens once
per QEMU on the loopback, on a port the kernel picks, and keeps what arrives
on each connection apart.  Nothing of this leaves the machine: the user
netdev runs with ``restrict=on`` (no route out of QEMU), and only the
guestfwd connection reaches the host, on 127.0.0.1.

Across a migration the guest's TCP connection lives on inside libslirp (its
migrated state: only guestfwd sockets are saved, slirp's state.c), while the
host side changes from the source QEMU's connection to the destination's.  The
guest's byte stream is therefore the source connection's bytes followed by
the destination's; :func:`analyse` cuts that into the agent's 64-byte records
and checks each: magic, checksum, and a sequence number one more than the
last (per guest boot: a reboot starts a new stream).  The stall is the longest
time between two records arriving on the host, and the gap across the
switchover of connections.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.guest.linux_records import NET_MAGIC, NET_SALT, checksum_rows

__all__ = ["RECORD", "NetPeer", "StreamReport", "analyse"]

log = logging.getLogger(__name__)

RECORD = 64

@dataclass
class _Conn:
    index: int                 # which QEMU (0 = source)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    t_connect: float = 0.0
    t_eof: float | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(c) for _, c in self.chunks)


class NetPeer:
    """Loopback listeners, one per QEMU, that take in the guest's stream."""

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []
        self._conns: list[list[_Conn]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def listen(self) -> int:
        """A new listener for the next QEMU; returns its port.  Synchronous
        and listening at once, so a QEMU started right after finds it (QEMU
        connects its guestfwd chardev while it starts)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        s.setblocking(False)
        index = len(self._listeners)
        self._listeners.append(s)
        self._conns.append([])
        task = asyncio.ensure_future(self._serve(index, s))
        self._tasks.add(task)
        return int(s.getsockname()[1])

    async def _serve(self, index: int, sock: socket.socket) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = _Conn(index, t_connect=time.monotonic())
            self._conns[index].append(conn)
            try:
                while data := await reader.read(65536):
                    conn.chunks.append((time.monotonic(), data))
            except (asyncio.CancelledError, ConnectionError):
                pass
            finally:
                conn.t_eof = time.monotonic()
                writer.close()
        self._servers.append(await asyncio.start_server(handle, sock=sock))

    def connections(self) -> list[_Conn]:
        """Every connection, the first QEMU's first."""
        return [c for per in self._conns for c in per]

    def received(self) -> int:
        return sum(c.nbytes for c in self.connections())

    def report(self) -> "StreamReport":
        return analyse(self.connections())

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        for s in self._listeners:
            s.close()
        self._servers.clear()


@dataclass
class StreamReport:
    """What the peer received, judged record by record."""

    bytes: int = 0
    records: int = 0
    #: Per guest boot (the low 32 bits of its id): (first seq, last seq, count).
    streams: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    #: Bytes left over that do not make a whole record (a cut stream).
    trailing_bytes: int = 0
    #: Longest time between two records' arrival (ms), and the gap where the
    #: stream moved from one QEMU's connection to the next.
    max_stall_ms: float = 0.0
    switchover_gap_ms: float | None = None
    per_connection: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "records": self.records, "lost": self.lost,
                "duplicated": self.duplicated, "corrupt": self.corrupt,
                "trailing_bytes": self.trailing_bytes,
                "max_stall_ms": round(self.max_stall_ms, 2),
                "switchover_gap_ms": None if self.switchover_gap_ms is None
                else round(self.switchover_gap_ms, 2),
                "streams": {k: {"first": a, "last": b, "count": n}
                            for k, (a, b, n) in self.streams.items()},
                "connections": self.per_connection, "problems": self.problems[:10]}


def analyse(conns: list[_Conn]) -> StreamReport:
    """Check the concatenated stream of ``conns`` (in order) record by record."""
    rep = StreamReport()
    data = bytearray()
    arrival: list[tuple[int, float, int]] = []   # (end offset, time, conn index)
    for i, c in enumerate(conns):
        rep.per_connection.append({"qemu": c.index, "bytes": c.nbytes,
                                   "first_s": None if not c.chunks else round(c.chunks[0][0], 3),
                                   "last_s": None if not c.chunks else round(c.chunks[-1][0], 3)})
        for t, chunk in c.chunks:
            data += chunk
            arrival.append((len(data), t, i))
    rep.bytes = len(data)
    n = len(data) // RECORD
    rep.trailing_bytes = len(data) - n * RECORD
    if n == 0:
        return rep
    words = np.frombuffer(bytes(data[:n * RECORD]), dtype="<u8").reshape(n, 8)
    ends = np.array([a[0] for a in arrival])
    times = np.array([a[1] for a in arrival])
    conn_of = np.array([a[2] for a in arrival])
    # A record has arrived when its last byte has.
    idx = np.searchsorted(ends, (np.arange(n) + 1) * RECORD)
    rec_t, rec_conn = times[idx], conn_of[idx]
    valid = ((words[:, 0] & np.uint64(0xFFFFFFFF)) == np.uint64(NET_MAGIC)) & (
        checksum_rows(words[:, :7], NET_SALT) == words[:, 7])
    last_seq: dict[int, int] = {}
    prev_t: float | None = None
    prev_conn: int | None = None
    for r in range(n):
        w = (int(words[r, 0]), int(words[r, 1]))
        if not valid[r]:
            rep.corrupt += 1
            if len(rep.problems) < 10:
                rep.problems.append(f"record {r} (byte {r * RECORD}) is corrupt: "
                                    f"{bytes(data[r * RECORD:r * RECORD + 16]).hex()}...")
            continue
        boot, seq = w[0] >> 32, w[1]
        rep.records += 1
        t = float(rec_t[r])
        if prev_t is not None:
            stall = (t - prev_t) * 1000
            rep.max_stall_ms = max(rep.max_stall_ms, stall)
            if prev_conn is not None and rec_conn[r] != prev_conn and rep.switchover_gap_ms is None:
                rep.switchover_gap_ms = stall
        prev_t, prev_conn = t, int(rec_conn[r])
        key = f"{boot:08x}"
        if boot in last_seq:
            expect = last_seq[boot] + 1
            if seq < expect:
                rep.duplicated += 1
                if len(rep.problems) < 10:
                    rep.problems.append(f"boot {key}: record {seq} again after {expect - 1}")
                continue
            if seq > expect:
                rep.lost += seq - expect
                if len(rep.problems) < 10:
                    rep.problems.append(f"boot {key}: records {expect}..{seq - 1} missing")
        elif seq != 1:
            rep.lost += seq - 1
            rep.problems.append(f"boot {key}: stream starts at record {seq}, not 1")
        last_seq[boot] = seq
        first, _, count = rep.streams.get(key, (seq, seq, 0))
        rep.streams[key] = (first, seq, count + 1)
    return rep

