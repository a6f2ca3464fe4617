"""Exact RAM comparison of the two sides' guest memory files.

Both QEMUs back guest RAM with a ``memory-backend-file`` (``share=on``), so
once the source is in ``postmigrate`` and the destination is paused, every
byte the destination guest would see can be compared with the source's.  The
files are mapped, compared in chunks with numpy (several GiB/s), and only
chunks that differ are examined page by page.
"""
from __future__ import annotations

import mmap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.results import CheckResult

PAGE = 4096
CHUNK = 16 * 1024 * 1024


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


def gpa_of(offset: int, layout: list[RamRegion]) -> int:
    for r in layout:
        if r.file_offset <= offset < r.file_offset + r.size:
            return r.gpa + offset - r.file_offset
    return offset


@dataclass
class RamDiff:
    size: int
    differing_pages: int
    first_offsets: list[int]
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.size / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


def compare_files(src: Path, dst: Path, keep: int = 16) -> RamDiff:
    """Compare two RAM files; count differing 4 KiB pages, keep the first offsets."""
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
                count, first = _diff_arrays(a, b, keep)
            finally:
                del a, b  # release the buffer exports before the maps close
    return RamDiff(size_a, count, first, time.perf_counter() - t)


def _diff_arrays(a: np.ndarray, b: np.ndarray, keep: int) -> tuple[int, list[int]]:
    count = 0
    first: list[int] = []
    n = len(a)
    whole = n - n % 8
    a64 = a[:whole].view(np.uint64)
    b64 = b[:whole].view(np.uint64)
    step = CHUNK // 8
    for i in range(0, len(a64), step):
        ca, cb = a64[i:i + step], b64[i:i + step]
        if np.array_equal(ca, cb):
            continue
        pages = len(ca) * 8 // PAGE
        full = pages * PAGE // 8
        bad = np.flatnonzero((ca[:full].reshape(pages, PAGE // 8)
                              != cb[:full].reshape(pages, PAGE // 8)).any(axis=1))
        offsets = [(i * 8) + int(p) * PAGE for p in bad]
        if full < len(ca) and not np.array_equal(ca[full:], cb[full:]):
            offsets.append(i * 8 + full * 8)
        count += len(offsets)
        first.extend(offsets[: max(0, keep - len(first))])
    if whole < n and not np.array_equal(a[whole:], b[whole:]):
        count += 1
        if len(first) < keep:
            first.append(whole - whole % PAGE)
    return count, first


def check_ram(src: Path, dst: Path, layout: list[RamRegion]) -> CheckResult:
    """The exact RAM check: pass only when not a single byte differs."""
    diff = compare_files(src, dst)
    figures = {
        "bytes_compared": diff.size,
        "differing_pages": diff.differing_pages,
        "first_differing_gpas": [hex(gpa_of(o, layout)) for o in diff.first_offsets],
        "compare_seconds": round(diff.seconds, 4),
        "compare_mib_per_s": round(diff.mib_per_s),
    }
    if diff.differing_pages == 0:
        return CheckResult("ram", True, f"{diff.size >> 20} MiB identical", figures)
    first = figures["first_differing_gpas"][0]
    return CheckResult("ram", False,
                       f"{diff.differing_pages} page(s) differ, first at guest-physical {first}",
                       figures)
