"""Unit tests of harness.migration.proxy against a local echo server (no QEMU).

Every wait is bounded (``asyncio.wait_for``) so a regression fails instead
of hanging.
"""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from harness.migration.proxy import Proxy

T = 5.0  # seconds: bound on every wait


class Echo:
    """An echo server on 127.0.0.1 that records how each connection ended."""

    def __init__(self) -> None:
        self.ends: list[str] = []
        self.received = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> "Echo":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                self.received += len(data)
                w.write(data)
                await w.drain()
            self.ends.append("eof")
        except ConnectionError as exc:
            self.ends.append(type(exc).__name__)
        finally:
            w.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 3 * T))


async def roundtrip(port: int, payload: bytes) -> tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter, bytes]:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
    w.write(payload)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(payload)), T)
    return r, w, got


async def wait_until(pred, timeout: float = T) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_forwards_both_ways_and_counts_bytes() -> None:
    async def body() -> None:
        async with Echo() as echo, Proxy("127.0.0.1", echo.port) as proxy:
            assert proxy.port and proxy.uri == f"tcp:127.0.0.1:{proxy.port}"
            payload = os.urandom(3 * 1024 * 1024 + 17)
            _, w, got = await roundtrip(proxy.port, payload)
            assert got == payload
            assert proxy.up == len(payload) and proxy.down == len(payload)
            assert echo.received == len(payload)
            # Half-close passes through: the echo server sees EOF and closes.
            w.write_eof()
            assert await wait_until(lambda: echo.ends == ["eof"])
            assert await wait_until(lambda: not proxy.open_connections())
            assert proxy.connections[0].how == "eof"
            w.close()
    run(body())


def test_break_resets_both_directions_and_keeps_counting() -> None:
    async def body() -> None:
        async with Echo() as echo, Proxy("127.0.0.1", echo.port) as proxy:
            r, w, _ = await roundtrip(proxy.port, b"x" * 1000)
            assert proxy.break_() == 1
            assert proxy.breaks == 1 and not proxy.open_connections()
            # The client sees a reset (RST), not an orderly end of stream.
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), T)
            # ...and so does the server behind the proxy.
            assert await wait_until(lambda: bool(echo.ends))
            assert echo.ends == ["ConnectionResetError"]
            w.close()
            # Counts survive the break; the proxy still forwards new connections.
            assert (proxy.up, proxy.down) == (1000, 1000)
            _, w2, got = await roundtrip(proxy.port, b"y" * 500)
            assert got == b"y" * 500
            assert (proxy.up, proxy.down) == (1500, 1500)
            assert [c.up for c in proxy.connections] == [1000, 500]
            assert proxy.connections[0].how == "broken"
            w2.close()
    run(body())


def test_break_cuts_every_connection_and_stops_forwarding() -> None:
    async def body() -> None:
        async with Echo() as echo, Proxy("127.0.0.1", echo.port) as proxy:
            conns = [await roundtrip(proxy.port, b"a" * 10) for _ in range(3)]
            assert len(proxy.open_connections()) == 3
            assert proxy.break_() == 3
            assert proxy.break_() == 0  # nothing left to break
            for r, w, _ in conns:
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(r.read(1), T)
                # Writing after the reset fails sooner or later; nothing is forwarded.
                with pytest.raises(ConnectionError):
                    for _ in range(50):
                        w.write(b"b" * 1000)
                        await asyncio.wait_for(w.drain(), T)
                        await asyncio.sleep(0.01)
                w.close()
            assert proxy.up == 30 and echo.received == 30
            assert await wait_until(lambda: len(echo.ends) == 3)
    run(body())


def test_break_while_streaming() -> None:
    """A break in the middle of a bulk transfer stops the flow at once."""
    async def body() -> None:
        async with Echo() as echo, Proxy("127.0.0.1", echo.port) as proxy:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), T)

            async def writer() -> None:
                for _ in range(10000):
                    w.write(b"z" * 65536)
                    await w.drain()

            async def reader() -> int:
                n = 0
                while n < 1024 * 1024:
                    n += len(await r.read(65536))
                return n

            task = asyncio.ensure_future(writer())
            assert await asyncio.wait_for(reader(), T) >= 1024 * 1024
            assert proxy.break_() == 1
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(task, T)
            up = proxy.up
            await asyncio.sleep(0.1)
            assert proxy.up == up  # nothing forwarded after the break
            assert up < 10000 * 65536
            w.close()
    run(body())


def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]

    async def body() -> None:
        async with Proxy("127.0.0.1", free) as proxy:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), T)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), T)
            w.close()
            assert proxy.connections[0].how.startswith("error: target")
    run(body())


def test_close_resets_open_connections() -> None:
    async def body() -> None:
        async with Echo() as echo:
            proxy = Proxy("127.0.0.1", echo.port)
            await proxy.start()
            r, w, _ = await roundtrip(proxy.port, b"q")
            await asyncio.wait_for(proxy.close(), T)
            assert not proxy.open_connections()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), T)
            w.close()
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), T)
    run(body())


@pytest.mark.parametrize("target,listen", [("10.0.0.1", "127.0.0.1"),
                                           ("example.com", "127.0.0.1"),
                                           ("127.0.0.1", "0.0.0.0")])
def test_loopback_only(target: str, listen: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        Proxy(target, 1234, listen_host=listen)


def test_figures() -> None:
    async def body() -> dict[str, Any]:
        async with Echo() as echo, Proxy("127.0.0.1", echo.port) as proxy:
            _, w, _ = await roundtrip(proxy.port, b"12345")
            proxy.break_()
            w.close()
            return proxy.figures()
    fig = run(body())
    assert fig["bytes_up"] == 5 and fig["bytes_down"] == 5 and fig["breaks"] == 1
    assert fig["connections"][0]["how"] == "broken"
