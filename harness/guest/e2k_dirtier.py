"""Host side of the e2k "dirtier" firmware (``images/e2k/dirtier.py``).

The firmware runs from qemu-e2k's ``-bios`` area (0x100000000); at boot it
increments a 64-bit *boots* counter at ``marker_addr``, then increments the
first byte of every 4 KiB page of a region in ascending order, forever,
counting full passes in a 64-bit *passes* counter at ``marker_addr + 8``.
It has no serial output, so progress is read from guest RAM:

* :func:`make_firmware` - a per-cell copy of the cached image with the
  region and marker patched into its parameter block;
* :func:`read_marker` - ``(boots, passes)`` from a RAM image;
* the region invariant is the x86 dirtier's: use
  :func:`harness.guest.dirtier.read_region_bytes` and
  :func:`~harness.guest.dirtier.check_invariant` (re-exported here).

A fresh machine has zeroed RAM, so ``boots == 1``.  The firmware never
clears the marker, so a CPU that starts again from the reset PC with RAM kept
(``system_reset``, or a migration destination whose CPU state was not
migrated) shows ``boots == 2``.

Guest-physical layout of qemu-e2k's ``e2k`` machine (``e2k_machine_init`` in
hw/e2k/e2k.c): RAM is at 0 up to 2 GiB and continues at 0x400000000; the
firmware may only use the low part, where RAM-file offset == address.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Union

import numpy as np

from harness.errors import HarnessError
from harness.guest.images import build_image
from harness.fileio import write_atomic
from harness.guest.dirtier import check_invariant, read_region_bytes
from harness.units import PAGE

__all__ = [
    "IMAGE_NAME", "PAGE", "LOAD_ADDR", "PARAM_OFFSET", "PARAM_MAGIC", "PARAM_VERSION",
    "PARAM_FORMAT", "MARKER_FORMAT", "DEFAULT_MARKER_ADDR", "DEFAULT_REGION_BASE",
    "DEFAULT_REGION_PAGES", "DEFAULT_RAM_SIZE", "LOW_RAM_END",
    "make_firmware", "read_params", "read_marker", "check_invariant", "read_region_bytes",
]

IMAGE_NAME = "dirtier-e2k"
#: Where qemu-e2k copies ``-bios`` and where the boot CPU starts (E2K_BIOS_AREA_BASE).
LOAD_ADDR = 0x1_0000_0000

# Must match images/e2k/dirtier.py (tests/test_e2kasm.py checks the built image).
PARAM_OFFSET = 0x40
PARAM_MAGIC = b"MHPB"
PARAM_VERSION = 1
#: magic, version, region_base, region_pages, marker_addr; little-endian.
PARAM_FORMAT = "<4sIQQQ"
PARAM_SIZE = struct.calcsize(PARAM_FORMAT)
#: boots, passes; little-endian u64 at marker_addr.
MARKER_FORMAT = "<QQ"
MARKER_SIZE = struct.calcsize(MARKER_FORMAT)

DEFAULT_MARKER_ADDR = 0x1000
DEFAULT_REGION_BASE = 0x200000          # 2 MiB
DEFAULT_REGION_PAGES = 25600            # 100 MiB
DEFAULT_RAM_SIZE = 128 * 1024 * 1024    # -m 128M
#: RAM above this is mapped at 0x400000000, not here (E2K_MLO_SIZE).
LOW_RAM_END = 0x8000_0000


def make_firmware(dest: Path, region_base: int = DEFAULT_REGION_BASE,
                  region_size: int = DEFAULT_REGION_PAGES * PAGE,
                  marker_addr: int = DEFAULT_MARKER_ADDR,
                  ram_size: int = DEFAULT_RAM_SIZE) -> Path:
    """Write a ``-bios`` image to ``dest`` that dirties ``[region_base, +region_size)``.

    ``region_base``/``region_size`` are bytes, whole pages; ``marker_addr``
    is 8-byte aligned and its 16 bytes must not overlap the region.  Both
    must lie in RAM below ``min(ram_size, 2 GiB)`` (``ram_size`` is the
    guest's ``-m`` in bytes).
    """
    if region_base % PAGE:
        raise ValueError(f"region_base 0x{region_base:x} is not aligned to {PAGE} bytes")
    if region_size < 0 or region_size % PAGE:
        raise ValueError(f"region_size {region_size} is not a multiple of {PAGE}")
    if marker_addr < 0 or marker_addr % 8:
        raise ValueError(f"marker_addr 0x{marker_addr:x} is not 8-byte aligned")
    ram_end = min(ram_size, LOW_RAM_END)
    end = region_base + region_size
    if end > ram_end:
        raise ValueError(f"region end 0x{end:x} is beyond guest RAM at 0 "
                         f"(0x{ram_end:x} bytes)")
    if marker_addr + MARKER_SIZE > ram_end:
        raise ValueError(f"marker 0x{marker_addr:x} is beyond guest RAM at 0 "
                         f"(0x{ram_end:x} bytes)")
    if region_size and marker_addr < end and region_base < marker_addr + MARKER_SIZE:
        raise ValueError(f"marker 0x{marker_addr:x} overlaps the region "
                         f"[0x{region_base:x}, 0x{end:x})")

    image = bytearray(build_image(IMAGE_NAME).read_bytes())
    magic, version = struct.unpack_from("<4sI", image, PARAM_OFFSET)
    if magic != PARAM_MAGIC or version != PARAM_VERSION:
        raise HarnessError(f"image '{IMAGE_NAME}' has no version-{PARAM_VERSION} parameter "
                           f"block at 0x{PARAM_OFFSET:x} (found {magic!r} v{version})")
    struct.pack_into(PARAM_FORMAT, image, PARAM_OFFSET, PARAM_MAGIC, PARAM_VERSION,
                     region_base, region_size // PAGE, marker_addr)
    return write_atomic(Path(dest), image)


def read_params(firmware: Path) -> tuple[int, int, int]:
    """``(region_base, region_pages, marker_addr)`` from an image made by :func:`make_firmware`."""
    with open(firmware, "rb") as f:
        f.seek(PARAM_OFFSET)
        raw = f.read(PARAM_SIZE)
    if len(raw) < PARAM_SIZE:
        raise HarnessError(f"{firmware}: too short for a parameter block at 0x{PARAM_OFFSET:x}")
    magic, version, base, pages, marker = struct.unpack(PARAM_FORMAT, raw)
    if magic != PARAM_MAGIC or version != PARAM_VERSION:
        raise HarnessError(f"{firmware}: no e2k dirtier parameter block at 0x{PARAM_OFFSET:x}")
    return base, pages, marker


BufferLike = Union[bytes, bytearray, memoryview, np.ndarray]


def read_marker(ram: BufferLike, marker_addr: int = DEFAULT_MARKER_ADDR) -> tuple[int, int]:
    """``(boots, passes)`` from a RAM image whose offset 0 is guest-physical 0.

    ``ram`` is bytes-like (a ``pmemsave`` dump read into memory, an mmap of
    a ``memory-backend-file``, a numpy array).
    """
    view = memoryview(ram).cast("B")
    if marker_addr < 0 or marker_addr + MARKER_SIZE > len(view):
        raise ValueError(f"RAM image has {len(view)} bytes, the marker needs up to "
                         f"0x{marker_addr + MARKER_SIZE:x}")
    boots, passes = struct.unpack_from(MARKER_FORMAT, view, marker_addr)
    return boots, passes
