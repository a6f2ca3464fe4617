"""Opening a TCP connection from inside a named network namespace.

A host that is only reachable inside a namespace (the test hosts of
testcases/netns_hosts.py; a lab box on a management namespace) names it in
the inventory (``netns: NAME``).  ``setns(2)`` with CLONE_NEWNET changes the
namespace of the calling *thread* only, and a socket stays in the namespace
it was created in, so a short-lived thread enters the namespace, connects,
and hands the socket back: the harness itself never leaves its own namespace.
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def connect_in_netns(netns: str, addr: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to ``addr:port`` made inside ``netns``."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into network namespace {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["sock"] = socket.create_connection((addr, port), timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]
