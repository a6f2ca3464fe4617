"""Exact RAM comparison of the two sides' guest memory files.

Both QEMUs back guest RAM with a ``memory-backend-file`` (``share=on``), so
once the source is in ``postmigrate`` and the destination is paused, every
byte the destination guest would see can be compared with the source's.  The
files are mapped and compared in chunks with libc's ``memcmp`` (the speed
of memory: one pass over both files, no temporary arrays), and only chunks
that differ are examined page by page with numpy.

``numpy.array_equal`` was the chunk test before: it builds a boolean array
the size of the chunk and then reduces it, about half ``memcmp``'s speed on
the same mappings (benchmarks/cell_cost.py prints both, and ``memcmp`` over
the whole mapping as the baseline).  It stays as the fallback where libc
cannot be loaded, and as :data:`ENGINES` ``"numpy"`` for that comparison.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness.results import CheckResult
from harness.units import PAGE

log = logging.getLogger(__name__)

CHUNK = 16 * 1024 * 1024

#: Tells whether two equally long uint8 arrays hold the same bytes.
ChunkEqual = Callable[[np.ndarray, np.ndarray], bool]


def _load_memcmp() -> Callable[[int, int, int], int] | None:
    """libc's ``memcmp`` through ctypes (it releases the GIL for the call),
    or None where no C library can be loaded."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.memcmp
    except (OSError, AttributeError) as exc:
        log.info("no libc memcmp (%s): comparing with numpy", exc)
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return fn


_memcmp = _load_memcmp()


def _equal_memcmp(a: np.ndarray, b: np.ndarray) -> bool:
    assert _memcmp is not None and a.nbytes == b.nbytes
    return _memcmp(a.ctypes.data, b.ctypes.data, a.nbytes) == 0


def _equal_numpy(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b))


#: How a chunk is tested for equality: ``memcmp`` (the default where libc
#: loads) or ``numpy`` (the former test, kept for the benchmark's comparison).
ENGINES: dict[str, ChunkEqual] = {"numpy": _equal_numpy}
if _memcmp is not None:
    ENGINES["memcmp"] = _equal_memcmp
DEFAULT_ENGINE = "memcmp" if _memcmp is not None else "numpy"


@dataclass(frozen=True)
class RamRegion:
    """Where a stretch of the RAM file appears in guest-physical space."""

    file_offset: int
    gpa: int
    size: int


def x86_layout(ram_size: int, below_4g: int | None = None) -> list[RamRegion]:
    """pc/q35 map RAM from 0 up to the below-4G size, the rest from 4 GiB.

    The split (``below_4g``) depends on the machine (pc: 3.5 GiB, q35: 2 or
    2.75 GiB, see hw/i386/pc_piix.c pc_init1 and pc_q35.c pc_q35_init); for the
    guest sizes the harness uses everything is below it.
    """
    low = ram_size if below_4g is None else min(ram_size, below_4g)
    regions = [RamRegion(0, 0, low)]
    if ram_size > low:
        regions.append(RamRegion(low, 1 << 32, ram_size - low))
    return regions


def ram_layout(arch: str, ram_size: int) -> list[RamRegion]:
    """Where a RAM file's bytes sit in guest-physical space, per architecture."""
    if arch in ("x86_64", "i386"):
        return x86_layout(ram_size)
    return [RamRegion(0, 0, ram_size)]  # e2k: RAM at 0 (hw/e2k, the board's RAM map)


def gpa_of(offset: int, layout: list[RamRegion]) -> int:
    for r in layout:
        if r.file_offset <= offset < r.file_offset + r.size:
            return r.gpa + offset - r.file_offset
    return offset


@dataclass(frozen=True)
class Explained:
    """Bytes that may legitimately differ, and why.

    Used when the destination guest ran after switchover (postcopy): the
    dirtier then writes exactly the first byte of each page of its region, so
    those bytes (and only those) are judged by the guest invariant instead.
    Every page that differs only there is counted and reported, never hidden.
    """

    offsets: np.ndarray  # sorted file offsets of bytes allowed to differ
    reason: str


@dataclass
class RamDiff:
    size: int
    differing_pages: int
    first_offsets: list[int]
    seconds: float
    explained_pages: int = 0

    @property
    def mib_per_s(self) -> float:
        return self.size / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


def compare_files(src: Path, dst: Path, keep: int = 16,
                  explained: Explained | None = None, engine: str | None = None) -> RamDiff:
    """Compare two RAM files; count differing 4 KiB pages, keep the first offsets.

    With ``explained``, a page whose only differing bytes are listed there is
    counted in ``explained_pages`` instead of ``differing_pages``.  ``engine``
    names the chunk test (:data:`ENGINES`; default :data:`DEFAULT_ENGINE`):
    every engine gives the same answer, only the speed differs."""
    equal = ENGINES[engine or DEFAULT_ENGINE]
    t = time.perf_counter()
    with open(src, "rb") as fa, open(dst, "rb") as fb:
        size_a = fa.seek(0, 2)
        size_b = fb.seek(0, 2)
        if size_a != size_b:
            raise ValueError(f"RAM files differ in size: {src} {size_a} vs {dst} {size_b}")
        if size_a == 0:
            return RamDiff(0, 0, [], 0.0)
        with mmap.mmap(fa.fileno(), 0, prot=mmap.PROT_READ) as ma, \
             mmap.mmap(fb.fileno(), 0, prot=mmap.PROT_READ) as mb:
            a = np.frombuffer(ma, dtype=np.uint8)
            b = np.frombuffer(mb, dtype=np.uint8)
            try:
                count, first, explained_pages = _diff_arrays(
                    a, b, keep, None if explained is None else explained.offsets, equal)
            except BaseException as exc:
                # A signal (harness.qemu.process.Interrupted) or error raised
                # inside _diff_arrays leaves its frames, which hold views of
                # the maps, on the traceback: closing the maps would then fail
                # with BufferError and replace ``exc``.  Clear those frames'
                # locals (the line numbers stay).
                traceback.clear_frames(exc.__traceback__)
                raise
            finally:
                del a, b  # release the buffer exports before the maps close
    return RamDiff(size_a, count, first, time.perf_counter() - t, explained_pages)


def _diff_arrays(a: np.ndarray, b: np.ndarray, keep: int,
                 allowed: np.ndarray | None = None,
                 equal: ChunkEqual = _equal_numpy) -> tuple[int, list[int], int]:
    """Count differing pages (and their first offsets); with ``allowed``, pages
    that differ only at those byte offsets are counted separately.  ``equal``
    is the chunk test; only a chunk it finds different is looked at by page."""
    count = explained = 0
    first: list[int] = []
    n = len(a)
    whole = n - n % 8
    a64 = a[:whole].view(np.uint64)
    b64 = b[:whole].view(np.uint64)
    step = CHUNK // 8
    for i in range(0, len(a64), step):
        ca, cb = a64[i:i + step], b64[i:i + step]
        if equal(ca, cb):
            continue
        bad = _bad_pages(ca, cb)
        if allowed is not None:
            base = i * 8
            lo, hi = np.searchsorted(allowed, [base, base + len(ca) * 8])
            if hi > lo:
                patched = cb.copy()
                idx = allowed[lo:hi] - base
                patched.view(np.uint8)[idx] = ca.view(np.uint8)[idx]
                still = _bad_pages(ca, patched)
                explained += len(bad) - len(still)
                bad = still
        offsets = [(i * 8) + int(p) * PAGE for p in bad]
        count += len(offsets)
        first.extend(offsets[: max(0, keep - len(first))])
    if whole < n and not np.array_equal(a[whole:], b[whole:]):
        count += 1
        if len(first) < keep:
            first.append(whole - whole % PAGE)
    return count, first, explained


def _bad_pages(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Indices of the 4 KiB pages that differ (a trailing partial page counts as one)."""
    words = PAGE // 8
    pages = len(ca) // words
    full = pages * words
    bad = np.flatnonzero((ca[:full].reshape(pages, words) != cb[:full].reshape(pages, words))
                         .any(axis=1))
    if full < len(ca) and not np.array_equal(ca[full:], cb[full:]):
        bad = np.append(bad, pages)
    return bad


def check_ram(src: Path, dst: Path, layout: list[RamRegion],
              explained: Explained | None = None) -> CheckResult:
    """The exact RAM check: pass only when not a single byte differs (outside
    bytes ``explained`` says the running destination guest wrote)."""
    diff = compare_files(src, dst, explained=explained)
    figures = {
        "bytes_compared": diff.size,
        "differing_pages": diff.differing_pages,
        "first_differing_gpas": [hex(gpa_of(o, layout)) for o in diff.first_offsets],
        "compare_seconds": round(diff.seconds, 4),
        "compare_mib_per_s": round(diff.mib_per_s),
    }
    if explained is not None:
        figures["explained_pages"] = diff.explained_pages
        figures["explained_reason"] = explained.reason
    if diff.differing_pages == 0:
        extra = (f" outside {diff.explained_pages} page(s) the running guest rewrote"
                 if diff.explained_pages else "")
        return CheckResult("ram", True, f"{diff.size >> 20} MiB identical{extra}", figures)
    first = figures["first_differing_gpas"][0]
    return CheckResult("ram", False,
                       f"{diff.differing_pages} page(s) differ, first at guest-physical {first}",
                       figures)
