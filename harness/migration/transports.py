"""Migration transports, in one place: which ones exist, which the cell flow
runs, what QEMU refuses over each, and how a cell's destination is made to
listen on one.

What ``migrate`` refuses over a transport is a rule of QEMU's, modelled here
rather than with the capability and parameter rules because
``migrate-set-capabilities`` cannot know the URI: these checks run when the
source is given one, and a refusal ends the migration before any data is sent.

Sources:


* 8.0 and later: migration/migration.c, ``migration_channels_and_transport_compatible``
  (``migration_channels_and_uri_compatible`` before 8.2): multifd and
  postcopy-preempt (``migration_needs_multiple_sockets``) need a transport with
  several channels -- a socket, or from 9.0 ``file:`` with mapped-ram
  (``transport_supports_multi_channels``); mapped-ram
  (``migration_needs_seekable_channel``) needs a seekable transport, i.e. ``file:``
  (``transport_supports_seeking``).
* 7.2: migration/multifd.c, ``multifd_save_setup``: multifd only over a socket
  (``migrate_multi_channels_is_allowed``, set for tcp/unix/vsock URIs in
  ``qmp_migrate``); postcopy-preempt is not checked against the transport.
"""
from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from harness.rules.model import Version

if TYPE_CHECKING:
    from harness.qemu.machine import Machine

#: Every transport a matrix may name (QEMU's URI schemes).
KNOWN_TRANSPORTS = ("unix", "tcp", "exec", "file", "fd", "rdma", "vsock")
#: Transports that save the whole stream before the destination reads it: the
#: destination starts its incoming side only after the source finished, so there
#: is no live peer to answer.
SAVE_RESTORE = ("file", "exec")
#: (capability, transport) pairs the cell flow cannot run, and why.
FLOW_TRANSPORT_UNSUPPORTED: dict[tuple[str, str], str] = {
    (cap, t): f"{cap} needs a live destination answering on the return path; {t} saves "
              "the stream for a destination that reads it later"
    for cap in ("return-path", "postcopy-ram", "postcopy-preempt", "switchover-ack")
    for t in SAVE_RESTORE
}
#: Transports the cell flow implements (incoming_uri, save_restore_uris below);
#: others are excluded.
FLOW_TRANSPORTS = ("unix", "tcp", "exec", "file", "fd")
#: Transports that need a QEMU version on both sides (migration/file.c: 8.2).
TRANSPORT_SINCE: dict[str, Version] = {"file": (8, 2)}


#: Transports that open several channels (tcp:, unix:, vsock:).  ``fd:`` is a
#: socket too, but one the caller gave: migration/migration.c,
#: transport_supports_multi_channels lists inet, unix and vsock only (7.2:
#: qmp_migrate allows multiple channels for tcp:, unix: and vsock: URIs).
SOCKETS = frozenset({"unix", "tcp", "vsock"})


def transport_refusal(version: Version, caps: Mapping[str, bool], transport: str
                      ) -> tuple[str, str] | None:
    """``(rule id, QEMU's message)`` when the source refuses ``migrate`` on this
    transport with these capabilities, else None."""
    on = {k for k, v in caps.items() if v}
    if version >= (8, 0):
        if "mapped-ram" in on and transport != "file":
            return ("migrate.transport.needs-seekable",
                    "Migration requires seekable transport (e.g. file)")
        multi = transport in SOCKETS or (transport == "file" and "mapped-ram" in on)
        if on & {"multifd", "postcopy-preempt"} and not multi:
            return ("migrate.transport.needs-multi-channel",
                    "Migration requires multi-channel URIs (e.g. tcp)")
        return None
    if "multifd" in on and transport not in SOCKETS:
        return ("migrate.transport.multifd-protocol",
                "multifd is not supported by current protocol")
    return None


def save_restore_uris(transport: str, workdir: Path) -> tuple[str, str]:
    """(source URI, destination URI) for a save-then-restore transport.

    ``file:`` is QEMU's own file transport (migration/file.c, QEMU >= 8.2;
    the one mapped-ram needs); ``exec:`` pipes the stream through ``cat`` into
    a file and back, which every version has (migration/exec.c).
    """
    path = workdir / "migration.stream"
    if transport == "file":
        return f"file:{path}", f"file:{path}"
    if transport == "exec":
        return f"exec:cat > {path}", f"exec:cat {path}"
    raise ValueError(f"transport '{transport}' is not a save/restore transport")


#: How much a saved stream may grow, in guest RAM sizes, before the cell
#: stops waiting for it to converge.  A stream to a file keeps every pass: a
#: precopy whose expected downtime stays just over downtime-limit rewrites
#: the dirty region into the cell's workdir (often /dev/shm) for as long as
#: its timeout lets it.  Measured 2026-12-05: an exec cell wrote 17.9 GB in
#: 58 s (1014 dirty syncs at ~310 MB/s); two of them at -j 2 would fill this
#: 24 GiB host.  A migration that converges writes its RAM once plus a few
#: passes of the dirty region (0.2 GB for the 256 MiB dirtier); 8x leaves a
#: busy host about twenty passes of that region.
STREAM_CAP_RAM_SIZES = 8


def stream_cap(transport: str, caps: Mapping[str, bool], ram_bytes: int) -> int | None:
    """Bytes the source may send into a saved stream before the cell gives up
    on convergence (None: the stream does not grow with the passes).

    mapped-ram gives each page its own offset in the file (10.0
    migration/ram.c: mapped_ram_setup_ramblock lays out each block,
    save_normal_page writes with qemu_put_buffer_at at ``pages_offset +
    offset``), so that file stays the size of RAM whatever the number of
    passes.  ``ram_bytes`` is the guest's RAM size."""
    if transport not in SAVE_RESTORE or caps.get("mapped-ram"):
        return None
    return STREAM_CAP_RAM_SIZES * ram_bytes


async def incoming_uri(transport: str, dst: Machine, workdir: Path,
                       src: Machine | None = None, tcp_addr: str = "127.0.0.1") -> str:
    """Start the destination listening and return the URI the source must use
    (``fd``: both ends of a socket pair are handed over now, so ``src`` is
    needed; ``tcp``: on ``tcp_addr``, an address of the destination's host
    the source can reach)."""
    if transport == "fd":
        # migration/fd.c: 'fd:NAME' names a descriptor given with getfd.  A
        # connected socket pair is a full duplex channel, so the return path
        # (and postcopy) work over it; it is one channel, so multifd does not.
        if src is None:
            raise ValueError("the fd transport needs the source machine")
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:   # QEMU holds its own copies once getfd returned
            await dst.pass_fd(b.fileno(), "migin")
            await dst.execute("migrate-incoming", {"uri": "fd:migin"})
            await src.pass_fd(a.fileno(), "migout")
        return "fd:migout"
    if transport == "unix":
        uri = f"unix:{workdir / 'migration.sock'}"
        await dst.execute("migrate-incoming", {"uri": uri})
        return uri
    if transport == "tcp":
        # Port 0: the kernel picks a free port and query-migrate on the
        # destination reports it (MigrationInfo.socket-address, QEMU >= 4.0:
        # migration/migration.c fill_destination_migration_info), so two cells
        # can never race for a port.
        await dst.execute("migrate-incoming", {"uri": f"tcp:{tcp_addr}:0"})
        info = await dst.execute("query-migrate")
        for addr in info.get("socket-address", []):
            if addr.get("type") == "inet":
                return f"tcp:{tcp_addr}:{addr['port']}"
        raise RuntimeError("destination did not report its listening port")
    raise ValueError(f"transport '{transport}' is not supported by the flow")


