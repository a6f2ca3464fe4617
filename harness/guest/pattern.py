"""An architecture-neutral workload: a seeded pseudo-random pattern in guest RAM.

No guest code is needed, so it works for any target (e2k included): the
pattern file is placed in the *source's* guest RAM by QEMU's generic loader
(``-device loader,file=F,addr=A,force-raw=on``: hw/core/generic-loader.c,
``generic_loader_realize`` -> ``load_image_targphys_as``; the bytes become a ROM
blob that ``rom_reset`` copies into RAM at machine reset, hw/core/loader.c).
Without ``cpu-num`` the loader sets no CPU's PC, so the firmware runs as usual.

The destination is started *without* the loader: whatever pattern bytes it
holds after the migration came through the migration stream.  The check then
regenerates the pattern from its seed and compares it with the destination's
RAM file byte for byte (the harness backs guest RAM with a
``memory-backend-file``), reporting the first differing guest-physical address.

Pick a region firmware does not touch: e.g. 64 MiB into a 128 MiB x86 guest
(SeaBIOS keeps its tables at the top of low RAM and below 1 MiB).
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from harness.results import CheckResult

#: Differences listed in the figures.
KEEP = 16


def pattern_bytes(size: int, seed: int) -> np.ndarray:
    """The pattern: ``size`` bytes from PCG64 seeded with ``seed`` (stable
    across numpy versions: ``Generator.bytes`` draws from the bit generator)."""
    return np.frombuffer(np.random.Generator(np.random.PCG64(seed)).bytes(size), dtype=np.uint8)


def make_pattern(path: Path, size: int, seed: int) -> Path:
    """Write the pattern to ``path`` (the loader's ``file=``) and return it."""
    path = Path(path)
    path.write_bytes(pattern_bytes(size, seed).tobytes())
    return path


def loader_args(path: Path, gpa: int) -> list[str]:
    """QEMU arguments that preload ``path`` raw at guest-physical ``gpa``."""
    return ["-device", f"loader,file={path},addr={gpa:#x},force-raw=on"]


def check_pattern(ram_file: Path, file_offset: int, size: int, seed: int,
                  gpa: int | None = None) -> CheckResult:
    """``pattern``: the ``size`` bytes at ``file_offset`` of ``ram_file`` are
    exactly the pattern of ``seed``; ``gpa`` (default: ``file_offset``, true
    for RAM mapped from 0) labels addresses in the result."""
    base = file_offset if gpa is None else gpa
    want = pattern_bytes(size, seed)
    with open(ram_file, "rb") as f:
        if f.seek(0, 2) < file_offset + size:
            return CheckResult("pattern", False, f"RAM file {ram_file} is shorter than "
                               f"{file_offset + size:#x}", {"gpa": hex(base), "size": size})
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            got = np.frombuffer(m, dtype=np.uint8, count=size, offset=file_offset)
            try:
                bad = np.flatnonzero(got != want)
                first = [(int(i), int(got[i]), int(want[i])) for i in bad[:KEEP]]
            finally:
                del got
    figures = {"gpa": hex(base), "size": size, "seed": seed, "differing_bytes": int(len(bad))}
    if len(bad) == 0:
        return CheckResult("pattern", True, f"{size} pattern bytes at {base:#x} intact", figures)
    figures["first_differences"] = [{"gpa": hex(base + i), "got": f"{g:#04x}", "want": f"{w:#04x}"}
                                    for i, g, w in first]
    return CheckResult("pattern", False, f"{len(bad)} of {size} pattern bytes differ, first at "
                       f"guest-physical {base + first[0][0]:#x}", figures)
