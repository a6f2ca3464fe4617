"""Host side of the bare-metal "dirtier" guest (``images/x86/dirtier.S``).

The guest increments the first byte of every 4 KiB page of a region, in
ascending address order, forever; after each full pass it writes one
heartbeat byte (pass counter mod 256) to COM1.  This module gives the harness
what it needs around that, and nothing that starts processes:

* :func:`make_disk` - a per-cell copy of the cached image with the region
  patched into the sector's parameter block;
* :func:`make_kernel` - the same for the PVH build (``-kernel``, booted by
  qboot instead of SeaBIOS: a target's ``firmware: qboot``), and
  :func:`boot_args` - what that needs on the command line;
* :class:`HeartbeatParser` - incremental parsing of the serial stream
  (banner, heartbeats, restarts, stalls), cheap at ~1000 bytes/s for minutes;
* :func:`read_region_bytes` and :func:`check_invariant` - the one-step
  invariant on a paused guest's RAM, which catches lost or stale pages even
  where an exact source/destination comparison cannot run;
* :func:`heartbeat_agrees` - ties the RAM state to the last heartbeat seen.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from harness.errors import HarnessError
from harness.guest.images import PVH_LOAD_END, build_image
from harness.fileio import write_atomic
from harness.units import PAGE

__all__ = [
    "BANNER", "PAGE", "PARAM_OFFSET", "PARAM_MAGIC", "PARAM_FORMAT", "IMAGE_NAME",
    "PVH_IMAGE_NAME", "PVH_MIN_REGION_BASE", "KERNEL_NAME",
    "DEFAULT_REGION_BASE", "DEFAULT_REGION_PAGES", "MIN_REGION_BASE", "MAX_REGION_END",
    "make_disk", "make_kernel", "boot_args", "read_params", "Stall", "HeartbeatParser", "InvariantResult",
    "check_invariant", "read_region_bytes", "heartbeat_agrees",
]

BANNER = b"MHDIRTIER\r\n"
IMAGE_NAME = "dirtier-x86"
#: The PVH build of the same source (harness.guest.images), for ``-kernel``.
PVH_IMAGE_NAME = "dirtier-x86-pvh"
#: The per-cell copy of the PVH build in the cell's runtime folder.
KERNEL_NAME = "dirtier-pvh.elf"

#: Byte offset of the parameter block inside the boot sector (and the disk).
PARAM_OFFSET = 0x1F0
PARAM_MAGIC = b"MHPB"
#: magic, region_base (bytes), region_pages (4 KiB pages); little-endian.
PARAM_FORMAT = "<4sII"
PARAM_SIZE = struct.calcsize(PARAM_FORMAT)

DEFAULT_REGION_BASE = 0x200000          # 2 MiB
DEFAULT_REGION_PAGES = 25600            # 100 MiB
#: Below 1 MiB lie the boot sector, stack, BIOS data and the VGA/ROM holes.
MIN_REGION_BASE = 0x100000
#: The guest runs 32-bit without paging, so it can only address below 4 GiB.
MAX_REGION_END = 1 << 32
#: The PVH build's code is loaded at 1 MiB (images/x86/pvh.ld): its region
#: starts above it.
PVH_MIN_REGION_BASE = PVH_LOAD_END

# The restart detector below restarts its match at the current byte only;
# that is correct because the banner's first byte occurs nowhere else in it.
assert BANNER[0] not in BANNER[1:]


def _check_region(region_base: int, region_size: int, ram_size: int | None,
                  min_base: int = MIN_REGION_BASE, below: str = "") -> None:
    """Refuse a region the guest cannot dirty (ValueError says why)."""
    if region_base % PAGE:
        raise ValueError(f"region_base 0x{region_base:x} is not aligned to {PAGE} bytes")
    if region_size <= 0 or region_size % PAGE:
        raise ValueError(f"region_size {region_size} is not a positive multiple of {PAGE}")
    if region_base < MIN_REGION_BASE:
        raise ValueError(f"region_base 0x{region_base:x} is below 1 MiB "
                         f"(boot code, BIOS data and ROM holes live there)")
    if region_base < min_base:
        raise ValueError(f"region_base 0x{region_base:x} is below 0x{min_base:x} ({below})")
    end = region_base + region_size
    if end > MAX_REGION_END:
        raise ValueError(f"region end 0x{end:x} is above 4 GiB (the guest is 32-bit, no paging)")
    if ram_size is not None and end > ram_size:
        raise ValueError(f"region end 0x{end:x} is beyond guest RAM (0x{ram_size:x} bytes)")


def _patched(name: str, region_base: int, region_size: int) -> bytearray:
    """The cached image ``name`` with the region in its parameter block."""
    image = bytearray(build_image(name).read_bytes())
    off = param_offset(image, name)
    struct.pack_into(PARAM_FORMAT, image, off, PARAM_MAGIC, region_base, region_size // PAGE)
    return image


def param_offset(image: bytes | bytearray, what: str) -> int:
    """Where the parameter block sits: sector offset ``PARAM_OFFSET`` in the
    boot block; in the PVH ELF, wherever its one copy of the magic is (the
    build strips symbols, so the magic occurs once)."""
    if image[:4] != b"\x7fELF":
        if bytes(image[PARAM_OFFSET:PARAM_OFFSET + 4]) != PARAM_MAGIC:
            raise HarnessError(f"{what} has no parameter block at 0x{PARAM_OFFSET:x} (found "
                               f"{bytes(image[PARAM_OFFSET:PARAM_OFFSET + 4])!r})")
        return PARAM_OFFSET
    off = bytes(image).find(PARAM_MAGIC)
    if off < 0 or bytes(image).find(PARAM_MAGIC, off + 1) >= 0:
        raise HarnessError(f"{what}: expected the parameter block's magic {PARAM_MAGIC!r} "
                           f"exactly once in the ELF file")
    return off


def make_disk(dest: Path, region_base: int, region_size: int,
              ram_size: int | None = None) -> Path:
    """Write a bootable disk to ``dest`` that dirties ``[region_base, +region_size)``.

    ``region_base`` and ``region_size`` are bytes and must be whole pages.
    Pass ``ram_size`` (the guest's ``-m`` in bytes) to also check that the
    region ends inside RAM; note that on ``pc``/``q35`` RAM is only
    contiguous from 0 up to the machine's below-4G split, which the caller
    must respect for large guests.
    """
    _check_region(region_base, region_size, ram_size)
    return write_atomic(Path(dest), _patched(IMAGE_NAME, region_base, region_size))


def make_kernel(dest: Path, region_base: int, region_size: int,
                ram_size: int | None = None) -> Path:
    """Write the PVH build to ``dest`` (for ``-kernel``) with the region patched in.

    Same rules as :func:`make_disk`, and the region must start above the
    code, which is loaded at 1 MiB (:data:`PVH_MIN_REGION_BASE`).
    """
    _check_region(region_base, region_size, ram_size, PVH_MIN_REGION_BASE,
                  "the PVH build's code is loaded at 1 MiB")
    return write_atomic(Path(dest), _patched(PVH_IMAGE_NAME, region_base, region_size))


def boot_args(firmware: str, workdir: Path, region_base: int, region_size: int,
              ram_size: int | None = None) -> list[str]:
    """What the dirtier needs on a QEMU command line besides the firmware
    itself (harness.qemu.cmdline.firmware_args) and its disk: nothing with
    SeaBIOS, which boots the disk; with qboot, the PVH build as ``-kernel``
    (one copy per cell folder, the same for both sides).  The disk stays
    attached either way, so the block layer's part of a migration (image
    locking, late-block-activate) is the same on both paths."""
    if firmware != "qboot":
        return []
    kernel = workdir / KERNEL_NAME
    if not kernel.exists():
        make_kernel(kernel, region_base, region_size, ram_size)
    return ["-kernel", str(kernel)]


def read_params(disk: Path) -> tuple[int, int]:
    """``(region_base, region_pages)`` from a disk made by :func:`make_disk`
    (or a kernel made by :func:`make_kernel`)."""
    data = Path(disk).read_bytes()
    try:
        off = param_offset(data, str(disk))
    except HarnessError:
        raise HarnessError(f"{disk}: no dirtier parameter block") from None
    _magic, base, pages = struct.unpack_from(PARAM_FORMAT, data, off)
    return base, pages


@dataclass(frozen=True)
class Stall:
    """A gap between two heartbeats at least ``HeartbeatParser.stall_threshold`` long.

    Times are the host timestamps given to :meth:`HeartbeatParser.feed`, so a
    stall's resolution is the caller's read interval.
    """

    start: float        # time of the last heartbeat before the gap
    end: float          # time of the first heartbeat after it
    value_before: int
    value_after: int

    @property
    def length(self) -> float:
        return self.end - self.start


class HeartbeatParser:
    """Incremental parser for the dirtier's serial output.

    Stream: ``BANNER`` once per boot, then one byte per pass, counting
    1, 2, ... 255, 0, 1, ...  Bytes before the first banner are ignored
    (firmware noise).  A later banner means the guest restarted: the banner
    bytes were already counted as heartbeats when they arrived (the parser
    cannot know yet), so the statistics are rolled back to just before its
    first byte.  That keeps ``last_heartbeat_t`` exact instead of holding
    bytes back until the next chunk.

    ``expect_banner=False`` is for a stream that starts mid-run (a migration
    destination's serial): every byte is a heartbeat from the start, and any
    banner is a restart.

    Only scalars and the list of stalls are kept, so the cost per byte is
    constant; chunks without a possible banner byte are handled with numpy
    in one step.
    """

    _ROLLBACK = ("heartbeats", "first_heartbeat_t", "last_heartbeat_t", "last_value",
                 "sequence_errors", "max_gap", "max_gap_end", "_expect")

    def __init__(self, expect_banner: bool = True, stall_threshold: float = 0.05,
                 max_stalls: int = 1000) -> None:
        self.expect_banner = expect_banner
        self.stall_threshold = stall_threshold
        self.max_stalls = max_stalls
        self.banner_count = 0
        self.banner_times: list[float] = []         # first max_stalls only
        self.heartbeats = 0
        self.first_heartbeat_t: float | None = None
        self.last_heartbeat_t: float | None = None
        self.last_value: int | None = None
        #: Heartbeats that were not the previous value + 1 (mod 256); a
        #: restart resets the expectation to 1.
        self.sequence_errors = 0
        self.max_gap = 0.0
        self.max_gap_end: float | None = None
        self.stalls: list[Stall] = []
        self.bytes_ignored = 0                      # before the first banner
        self._counting = not expect_banner
        self._expect: int | None = None             # next heartbeat value, if known
        self._match = 0                             # banner bytes matched so far
        self._snapshot: tuple[dict[str, object], int] | None = None

    @property
    def banner_seen(self) -> bool:
        return self.banner_count > 0

    @property
    def restarts(self) -> int:
        """How many times the guest booted again after the stream began."""
        return self.banner_count - 1 if self.expect_banner and self.banner_count else self.banner_count

    def rate(self) -> float | None:
        """Heartbeats (= passes) per second between the first and last one."""
        if self.first_heartbeat_t is None or self.last_heartbeat_t is None:
            return None
        span = self.last_heartbeat_t - self.first_heartbeat_t
        return (self.heartbeats - 1) / span if span > 0 and self.heartbeats > 1 else None

    def feed(self, data: bytes, t: float) -> None:
        """Consume one chunk of serial bytes read at host time ``t`` (seconds)."""
        if not data:
            return
        if self._counting and self._match == 0 and BANNER[0] not in data:
            self._beats_bulk(data, t)
            return
        for b in data:
            self._byte(b, t)

    # -- internals ---------------------------------------------------------

    def _byte(self, b: int, t: float) -> None:
        if b == BANNER[self._match]:
            if self._match == 0 and self._counting:
                self._snapshot = ({k: getattr(self, k) for k in self._ROLLBACK},
                                  len(self.stalls))
            self._match += 1
            if self._match == len(BANNER):
                self._on_banner(t)
                return
        else:
            self._match = 0
            self._snapshot = None
            if b == BANNER[0]:
                self._byte(b, t)
                return
        if self._counting:
            self._beat(b, t)
        else:
            self.bytes_ignored += 1

    def _on_banner(self, t: float) -> None:
        if self._snapshot is not None:
            values, n_stalls = self._snapshot
            for k, v in values.items():
                setattr(self, k, v)
            del self.stalls[n_stalls:]
        else:
            # Banner completed while not counting: its bytes were tallied as ignored.
            self.bytes_ignored -= len(BANNER) - 1
        self._snapshot = None
        self._match = 0
        self._counting = True
        self._expect = 1
        self.banner_count += 1
        if len(self.banner_times) < self.max_stalls:
            self.banner_times.append(t)

    def _gap(self, t: float, value_after: int) -> None:
        if self.last_heartbeat_t is None:
            self.first_heartbeat_t = t
            return
        gap = t - self.last_heartbeat_t
        if gap > self.max_gap:
            self.max_gap = gap
            self.max_gap_end = t
        if gap >= self.stall_threshold and len(self.stalls) < self.max_stalls:
            assert self.last_value is not None
            self.stalls.append(Stall(self.last_heartbeat_t, t, self.last_value, value_after))

    def _beat(self, b: int, t: float) -> None:
        self._gap(t, b)
        if self._expect is not None and b != self._expect:
            self.sequence_errors += 1
        self.heartbeats += 1
        self.last_heartbeat_t = t
        self.last_value = b
        self._expect = (b + 1) & 0xFF

    def _beats_bulk(self, data: bytes, t: float) -> None:
        arr = np.frombuffer(data, dtype=np.uint8)
        self._gap(t, int(arr[0]))
        if self._expect is not None and arr[0] != self._expect:
            self.sequence_errors += 1
        if len(arr) > 1:
            # uint8 differences wrap mod 256, exactly like the guest's counter.
            self.sequence_errors += int(np.count_nonzero(np.diff(arr) != 1))
        self.heartbeats += len(arr)
        self.last_heartbeat_t = t
        self.last_value = int(arr[-1])
        self._expect = (self.last_value + 1) & 0xFF


@dataclass(frozen=True)
class InvariantResult:
    """Verdict on the one-step invariant over the first bytes of a region's pages.

    When ``ok``: pages ``[0, boundary)`` read ``value_high`` and pages
    ``[boundary, pages)`` read ``value_low`` = ``value_high - 1`` (mod 256);
    ``boundary == pages`` when every page reads the same value.  When not
    ok, ``value_high`` is the best explanation (the adjacent pair of values
    covering most pages), ``first_bad_page`` the lowest page index that does
    not fit it, and ``bad_pages`` how many do not.
    """

    ok: bool
    pages: int
    value_high: int
    value_low: int
    boundary: int
    first_bad_page: int | None
    bad_pages: int
    reason: str


def check_invariant(values: Union[Sequence[int], np.ndarray, bytes]) -> InvariantResult:
    """Check ``v,...,v,v-1,...,v-1`` (mod 256) over per-page bytes in address order.

    Lost or stale pages on a migration destination show up as a page two or
    more behind, a page ahead, or a second boundary.
    """
    if isinstance(values, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(values, dtype=np.uint8)
    else:
        raw = np.asarray(values)
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise ValueError("page values must be bytes (0..255)")
        arr = raw.astype(np.uint8, copy=False)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("check_invariant needs a non-empty 1-D sequence of page bytes")
    n = int(arr.size)

    counts = np.bincount(arr, minlength=256)
    first = int(arr[0])
    if counts[first] == n:
        return InvariantResult(True, n, first, (first - 1) & 0xFF, n, None, 0,
                               f"all {n} pages read {first}")

    # Best (high, high-1) pair: most pages covered, then both values present,
    # then the pair whose high value is the first page's.
    # pair_high[h] = pages reading h or h-1
    pair_high = counts + np.roll(counts, 1)
    both = (counts > 0) & (np.roll(counts, 1) > 0)
    hs = np.arange(256)
    order = np.lexsort((hs != first, ~both, -pair_high))   # last key is primary
    high = int(order[0])
    low = (high - 1) & 0xFF

    d = (high - arr.astype(np.int16)) & 0xFF      # 0 = high, 1 = low, else bad
    is_low = d == 1
    boundary = int(np.argmax(is_low)) if is_low.any() else n
    idx = np.arange(n)
    bad = (d > 1) | ((d == 0) & (idx >= boundary))
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return InvariantResult(True, n, high, low, boundary, None, 0,
                               f"pages [0,{boundary}) read {high}, [{boundary},{n}) read {low}")
    fb = int(np.argmax(bad))
    got = int(arr[fb])
    if d[fb] == 0:
        why = f"a second boundary: reads {got} after the step to {low} at page {boundary}"
    elif d[fb] == 255:
        why = f"ahead: reads {got}, one more than {high}"
    else:
        why = f"stale: reads {got}, {int(d[fb])} behind {high}"
    return InvariantResult(False, n, high, low, boundary, fb, n_bad,
                           f"page {fb} (offset 0x{fb * PAGE:x}) is {why}; "
                           f"{n_bad} of {n} pages break the one-step pattern")


def heartbeat_agrees(result: InvariantResult, last_heartbeat: int) -> bool:
    """Whether a paused region matches the last heartbeat the same run printed.

    With ``H`` = passes completed & 0xff as last printed, a stopped guest's
    region reads one of: all ``H`` (between passes); ``H+1`` then ``H``
    (mid-pass); all ``H+1`` (a pass finished, its heartbeat not yet
    written).  On a migration destination this ties the RAM image to the
    source's serial output at the moment the source stopped.
    """
    h = last_heartbeat & 0xFF
    if not result.ok:
        return False
    if result.boundary == result.pages:
        return result.value_high in (h, (h + 1) & 0xFF)
    return result.value_low == h


BufferLike = Union[bytes, bytearray, memoryview, mmap.mmap, np.ndarray]


def read_region_bytes(path_or_buffer: Union[str, os.PathLike[str], BufferLike],
                      file_offset: int, pages: int) -> np.ndarray:
    """First byte of each of ``pages`` pages starting at ``file_offset``, as uint8.

    For a ``memory-backend-file`` of a ``pc``/``q35`` guest, file offset ==
    guest-physical address for RAM below the 4 GiB split.  A file is mapped
    read-only and only the touched pages are read (stride 4096); the result
    is a copy, so the mapping is gone when this returns.
    """
    if pages <= 0:
        raise ValueError("pages must be positive")
    if file_offset < 0:
        raise ValueError("file_offset must not be negative")
    need = file_offset + pages * PAGE
    if isinstance(path_or_buffer, (str, os.PathLike)):
        size = os.path.getsize(path_or_buffer)
        if size < need:
            raise ValueError(f"{os.fspath(path_or_buffer)} has {size} bytes, "
                             f"region needs up to 0x{need:x}")
        start = file_offset - file_offset % mmap.ALLOCATIONGRANULARITY
        with open(path_or_buffer, "rb") as f, \
                mmap.mmap(f.fileno(), need - start, access=mmap.ACCESS_READ,
                          offset=start) as mm:
            view = np.frombuffer(mm, dtype=np.uint8)
            try:
                out = np.array(view[file_offset - start::PAGE])
            finally:
                del view  # drop the export so the mapping can close, on a signal too
        return out
    buf = np.frombuffer(path_or_buffer, dtype=np.uint8)
    if buf.size < need:
        raise ValueError(f"buffer has {buf.size} bytes, region needs up to 0x{need:x}")
    return np.array(buf[file_offset:need:PAGE])
