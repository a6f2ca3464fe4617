"""A QEMU command line moved to a remote host: its QMP and serial chardevs.

Locally QEMU connects to unix sockets the harness listens on
(harness.qemu.cmdline.machine_argv).  paramiko cannot forward a remote unix
socket, so on a remote host QEMU connects instead to ports on the host's
loopback that the SSH connection forwards back to those same local sockets:
``-qmp tcp:127.0.0.1:P`` (a client chardev: no ``server=on``; QEMU's
chardev/char-socket.c qmp_chardev_open_socket) and the serial chardev with
``host=127.0.0.1,port=P`` instead of ``path=``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def remote_chardevs(argv: Sequence[str], qmp: Path, serial: Path, qmp_port: int,
                    serial_port: int) -> list[str]:
    out = []
    for arg in argv:
        if arg == f"unix:{qmp}":
            arg = f"tcp:127.0.0.1:{qmp_port}"
        elif arg.endswith(f",path={serial}"):
            arg = arg[: -len(f"path={serial}")] + f"host=127.0.0.1,port={serial_port}"
        out.append(arg)
    return out
