"""A breakable TCP proxy on loopback, owned by the harness.

The failure-path scenarios put it between a migration source and its
destination so they can cut the migration channel at a moment of their
choosing (postcopy recovery: QEMU must notice the broken channel on both
sides, pause, and resume on a new one).  ``break_()`` aborts every current
connection in both directions at once: each socket gets ``SO_LINGER`` 0 and
is closed, so the kernel sends an RST, unread and unsent data are dropped,
and the peers see ``ECONNRESET``/``EPIPE`` rather than an orderly end of
stream.  The proxy keeps listening afterwards (new connections are forwarded
as before), and keeps its byte counts per direction across breaks.

Loopback only: it listens on 127.0.0.1 and refuses a non-loopback target.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

CHUNK = 256 * 1024


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection abruptly: SO_LINGER 0 turns the close into an RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


@dataclass
class Connection:
    """One proxied connection: client <-> target, with its byte counts."""

    n: int
    t_open: float
    up: int = 0     # client -> target
    down: int = 0   # target -> client
    t_closed: float | None = None
    how: str = ""   # "eof", "error: ...", "broken"
    writers: list[asyncio.StreamWriter] = field(default_factory=list, repr=False)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "up": self.up, "down": self.down, "how": self.how or "open",
                "seconds": round((self.t_closed or time.monotonic()) - self.t_open, 3)}


class Proxy:
    """Forward connections accepted on 127.0.0.1:<port> to ``target_host:target_port``.

    ``up``/``down`` count the bytes forwarded client -> target and target ->
    client over every connection so far (broken ones included).
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"
                 ) -> None:
        if not _is_loopback(target_host):
            raise ValueError(f"proxy target must be a loopback address, not '{target_host}'")
        if not _is_loopback(listen_host):
            raise ValueError(f"proxy must listen on loopback, not '{listen_host}'")
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.port = 0
        self.up = 0
        self.down = 0
        self.breaks = 0
        self.connections: list[Connection] = []
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> int:
        """Listen on an ephemeral loopback port; return it."""
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def uri(self) -> str:
        return f"tcp:{self.listen_host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and reset whatever is still open."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._abort_all("closed")
        await self._join()

    async def __aenter__(self) -> "Proxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the fault ---------------------------------------------------------
    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections if c.t_closed is None]

    def break_(self) -> int:
        """Reset every current connection (both directions, RST); return how many.

        Synchronous on purpose: the sockets are closed before it returns, so
        nothing more is forwarded after the call.
        """
        n = self._abort_all("broken")
        self.breaks += 1
        return n

    def _abort_all(self, how: str) -> int:
        n = 0
        for conn in self.open_connections():
            conn.how = conn.how or how
            conn.t_closed = time.monotonic()
            for w in conn.writers:
                _reset(w)
            for t in conn.tasks:
                t.cancel()
            n += 1
        return n

    async def _join(self) -> None:
        tasks = [t for c in self.connections for t in c.tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def figures(self) -> dict[str, Any]:
        return {"port": self.port, "target": f"{self.target[0]}:{self.target[1]}",
                "bytes_up": self.up, "bytes_down": self.down, "breaks": self.breaks,
                "connections": [c.summary() for c in self.connections]}

    # -- forwarding --------------------------------------------------------
    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
                      ) -> None:
        conn = Connection(len(self.connections), time.monotonic())
        self.connections.append(conn)
        conn.writers.append(c_writer)
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            conn.how, conn.t_closed = f"error: target: {exc}", time.monotonic()
            _reset(c_writer)
            return
        if conn.t_closed is not None:  # broken while connecting
            _reset(t_writer)
            return
        conn.writers.append(t_writer)
        for w in (c_writer, t_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = asyncio.ensure_future(self._pump(conn, c_reader, t_writer, "up"))
        down = asyncio.ensure_future(self._pump(conn, t_reader, c_writer, "down"))
        conn.tasks += [up, down]
        await asyncio.gather(up, down, return_exceptions=True)
        if conn.t_closed is None:
            conn.t_closed = time.monotonic()
            conn.how = conn.how or "eof"
        for w in conn.writers:
            if not w.is_closing():
                w.close()

    async def _pump(self, conn: Connection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                n = len(data)
                if direction == "up":
                    conn.up += n
                    self.up += n
                else:
                    conn.down += n
                    self.down += n
                await writer.drain()
            # Orderly end from one side: pass the half-close on.
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError) as exc:
            if conn.t_closed is None:
                conn.how = f"error: {exc}"
                conn.t_closed = time.monotonic()
                for w in conn.writers:  # one side failed: reset the other too
                    _reset(w)
