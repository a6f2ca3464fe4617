"""The Linux guest's disk: a per-cell qcow2 overlay, and the host's check of it.

Both QEMUs of a cell open the same overlay (shared storage, as a migration
without block migration has it: the source inactivates its image at
switchover and the destination takes it over), backed by a blank raw file.
The agent (images/linux/agent/disk.c) writes 4 KiB blocks: write number s
goes to block s mod n, carries s, its block number and a checksum, and counts
as acknowledged once ``fdatasync`` returned.  After the agent stopped writing
(``quiesce``), the host reads the image back (``qemu-img convert`` to raw)
and checks every block against the last acknowledged write A: block b must
hold the latest s <= A with s mod n = b, intact, or zeros if there is none.
``qemu-img check`` must find the image consistent.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.guest.linux_records import DISK_MAGIC, DISK_SALT, checksum_rows

__all__ = ["BLOCK", "DiskReport", "make_overlay", "expected_seq", "check_blocks",
           "check_image", "qemu_img"]

log = logging.getLogger(__name__)

BLOCK = 4096
WORDS = BLOCK // 8
_TIMEOUT = 120


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise HarnessError("qemu-img not found: install the Debian package qemu-utils "
                           "(scripts/setup.sh does)")
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{' '.join(argv)}: {e}") from e


def make_overlay(workdir: Path, size: int) -> Path:
    """A blank raw base of ``size`` bytes and a qcow2 overlay on it."""
    base = workdir / "disk-base.raw"
    with open(base, "wb") as f:
        f.truncate(size)
    overlay = workdir / "disk.qcow2"
    res = _run([qemu_img(), "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                str(overlay)])
    if res.returncode != 0:
        raise HarnessError(f"qemu-img create failed: {res.stderr.strip()}")
    return overlay


def expected_seq(block: int, acked: int, nblocks: int) -> int:
    """The write number block ``block`` holds after write ``acked`` (0: none)."""
    if acked <= 0:
        return 0
    s = acked - (acked - block) % nblocks
    return s if 1 <= s <= acked else 0


@dataclass
class DiskReport:
    """The host's reading of the image."""

    blocks: int = 0
    acked: int = 0
    intact: int = 0
    zero: int = 0
    #: Blocks that do not hold what write ``acked`` left: (block, expected, found).
    mismatches: list[tuple[int, int, str]] = field(default_factory=list)
    mismatch_count: int = 0
    qemu_img_check: str = ""
    check_ok: bool = False

    def figures(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "acked": self.acked, "intact": self.intact,
                "zero": self.zero, "mismatches": self.mismatch_count,
                "first_mismatches": [{"block": b, "expected_seq": e, "found": f}
                                     for b, e, f in self.mismatches[:8]],
                "qemu_img_check": self.qemu_img_check, "image_consistent": self.check_ok}


def check_blocks(raw: bytes | np.ndarray, nblocks: int, acked: int) -> DiskReport:
    """Every block of the first ``nblocks`` against acknowledged write ``acked``."""
    words = np.frombuffer(raw, dtype="<u8", count=nblocks * WORDS).reshape(nblocks, WORDS)
    rep = DiskReport(blocks=nblocks, acked=acked)
    blocks = np.arange(nblocks, dtype=np.uint64)
    zero = ~words.any(axis=1)
    ours = words[:, 0] == (np.uint64(DISK_MAGIC) | (blocks << np.uint64(32)))
    summed = checksum_rows(words[:, :WORDS - 1], DISK_SALT) == words[:, WORDS - 1]
    for b in range(nblocks):
        want = expected_seq(b, acked, nblocks)
        if zero[b]:
            seq, what = 0, "zeros"
        elif not ours[b]:
            seq, what = None, f"foreign data ({int(words[b, 0]):016x})"
        elif not summed[b]:
            seq, what = None, f"torn (write {int(words[b, 1])}, bad checksum)"
        else:
            seq = int(words[b, 1])
            what = f"write {seq}"
        if seq == want:
            rep.intact += want > 0
            rep.zero += want == 0
            continue
        rep.mismatch_count += 1
        if len(rep.mismatches) < 64:
            rep.mismatches.append((b, want, what))
    return rep


def check_image(image: Path, nblocks: int, acked: int, scratch: Path) -> DiskReport:
    """``qemu-img check`` the overlay, read it back as raw, check the blocks.

    ``-U`` (force-share) lets this run while a QEMU still has the image open:
    the agent has stopped writing and every write it acknowledged was
    flushed (fdatasync flushes qcow2's metadata too), so the file is
    complete."""
    check = _run([qemu_img(), "check", "-U", "-f", "qcow2", str(image)])
    raw = scratch / "disk-readback.raw"
    conv = _run([qemu_img(), "convert", "-U", "-f", "qcow2", "-O", "raw", str(image), str(raw)])
    if conv.returncode != 0:
        raise HarnessError(f"qemu-img convert {image} failed: {conv.stderr.strip()}")
    try:
        with open(raw, "rb") as f:
            data = f.read(nblocks * BLOCK)
    finally:
        os.unlink(raw)
    if len(data) < nblocks * BLOCK:
        raise HarnessError(f"{image}: {len(data)} bytes, fewer than the agent's "
                           f"{nblocks} blocks")
    rep = check_blocks(data, nblocks, acked)
    rep.check_ok = check.returncode == 0
    text = (check.stdout + check.stderr).strip().splitlines()
    rep.qemu_img_check = text[0] if text else f"exit {check.returncode}"
    if not rep.check_ok:
        rep.qemu_img_check = f"exit {check.returncode}: " + " | ".join(text[:4])
    return rep
