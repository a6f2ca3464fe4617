"""Behaviour checks that need evidence from outside ``query-migrate``: QEMU's
trace output, the destination's block-layer locks, its UUID, and the source's
RAM file.

Each function judges figures the flow collected; none of them talks to QEMU.
"""
from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from harness.migration.modes import ACK_TRACE_DST, ACK_TRACE_SRC
from harness.results import CheckResult

#: QEMU locks bytes of an image file to publish the permissions it holds
#: (block/file-posix.c, raw_apply_lock_bytes: RAW_LOCK_PERM_BASE 100 and
#: RAW_LOCK_SHARED_BASE 200, one byte per permission bit).  Asking whether a
#: write lock over [100, 300) would conflict tells whether any QEMU holds the
#: image active.
_LOCK_START, _LOCK_LEN = 100, 200
#: struct flock on Linux x86_64/aarch64: short l_type, short l_whence,
#: off_t l_start, off_t l_len, pid_t l_pid (with padding).
_FLOCK = "hh4xqqi4x"


def image_locked(path: Path) -> bool:
    """True when some open file description holds QEMU's permission locks on
    ``path`` (open file description locks, which QEMU uses: F_OFD_GETLK)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _LOCK_START, _LOCK_LEN, 0)
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
        return struct.unpack(_FLOCK, got)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def check_late_block_activate(locked_before_cont: bool, locked_after_cont: bool) -> CheckResult:
    """With late-block-activate the destination leaves its images inactive
    after the migration until ``cont`` (migration/migration.c,
    process_incoming_migration_bh: bdrv_activate_all is skipped when the
    capability is on and the VM does not autostart), so no permission locks
    are taken before ``cont`` and they are after it."""
    ok = not locked_before_cont and locked_after_cont
    figures = {"locked_before_cont": locked_before_cont, "locked_after_cont": locked_after_cont}
    if ok:
        return CheckResult("late-block-activate", True,
                           "destination disk inactive (unlocked) until cont, locked after",
                           figures)
    why = ("the destination activated its disk before cont (its image locks were already "
           "held)" if locked_before_cont else "the disk was still not active after cont")
    return CheckResult("late-block-activate", False, why, figures)


def check_switchover_ack(src_stderr: Path, dst_stderr: Path) -> CheckResult:
    """The destination took part in the switchover-ack handshake and the
    source received its ack: the trace events the flow enabled with ``-trace``
    (harness.migration.modes.side_args, ACK_TRACE_DST / ACK_TRACE_SRC) appear on each
    side's stderr."""
    def lines(path: Path, event: str) -> list[str]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if event in ln]

    counted, acked = lines(dst_stderr, ACK_TRACE_DST), lines(src_stderr, ACK_TRACE_SRC)
    figures = {"destination_trace": counted[-3:], "source_trace": acked[-3:]}
    ok = bool(counted) and bool(acked)
    pending = counted[-1].rsplit("=", 1)[-1].strip() if counted else "?"
    return CheckResult("switchover-ack", ok,
                       f"destination counted {pending} device(s) to approve first; the "
                       "source received its ack before switching over" if ok else
                       f"no switchover ack seen (destination handshake traces: {len(counted)}, "
                       f"acks received by the source: {len(acked)})", figures)


def check_validate_uuid(src_uuid: str, dst_uuid: str) -> CheckResult:
    """validate-uuid let the stream in: both sides carry the same UUID (the
    destination compares them in migration/savevm.c, vmstate_uuid_post_load)."""
    ok = bool(src_uuid) and src_uuid == dst_uuid and set(src_uuid) - {"0", "-"} != set()
    return CheckResult("validate-uuid", ok,
                       f"source and destination UUID {src_uuid}" if ok else
                       f"UUIDs differ or unset: source {src_uuid!r}, destination {dst_uuid!r}",
                       {"source_uuid": src_uuid, "destination_uuid": dst_uuid})


def check_release_ram(allocated_before: int, allocated_after: int,
                      postcopy_bytes: int) -> CheckResult:
    """release-ram: the source gives each page back once postcopy sent it
    (migration/ram.c, ram_release_page -> ram_discard_range, only while in
    postcopy), so its RAM file loses at least half of what postcopy sent."""
    dropped = allocated_before - allocated_after
    want = postcopy_bytes // 2
    ok = dropped > 0 and dropped >= want
    figures = {"allocated_before": allocated_before, "allocated_after": allocated_after,
               "released": dropped, "postcopy_bytes": postcopy_bytes}
    return CheckResult("release-ram", ok,
                       f"source released {dropped >> 20} MiB of RAM after postcopy sent "
                       f"{postcopy_bytes >> 20} MiB" if ok else
                       f"source released {max(dropped, 0) >> 20} MiB of RAM, less than half of "
                       f"the {postcopy_bytes >> 20} MiB postcopy sent", figures)


def allocated_bytes(path: Path) -> int:
    """Bytes a (tmpfs) file really holds, holes excluded."""
    return os.stat(path).st_blocks * 512
