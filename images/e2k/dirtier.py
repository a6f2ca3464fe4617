"""dirtier.py - bare-metal e2k "dirtier" firmware for migration tests.

The e2k twin of ``images/x86/dirtier.S``, written against the project's own
encoder (:mod:`harness.guest.e2kasm`) instead of an e2k toolchain.  qemu-e2k's
``e2k`` machine copies ``-bios FILE`` to 0x100000000 and starts the boot CPU
there (``firmware_init`` and ``e2k_cpu_reset`` in hw/e2k/e2k.c), with the
MMU off, so addresses are physical and RAM starts at 0.  Only global
registers %g0..%g8 and predicates %pred0/%pred1 are used: no window set-up,
no stack, no interrupts, no serial output (the board's console is an
escc-pci device, not worth a driver here).

What it does::

    boots = [marker] += 1                       # RAM is not cleared: a CPU that
                                                # restarts from reset reads 2
    forever:
        for p in 0 .. region_pages-1 (ascending):
            byte [region_base + p*4096] += 1    # mod 256
        [marker + 8] += 1                       # passes

So at any instant the first bytes of the region's pages read
v,...,v,v-1,...,v-1 (mod 256) in address order - the invariant
``harness.guest.dirtier.check_invariant`` checks.

Parameter block, read at run time from the firmware's own copy at
0x100000000 + PARAM_OFFSET, so the host patches a copy of the built image per
cell (``harness.guest.e2k_dirtier.make_firmware``); little-endian::

    +0x00  magic        b"MHPB"
    +0x04  version      u32 (1)
    +0x08  region_base  u64  bytes, page aligned
    +0x10  region_pages u64  4 KiB pages (0: only "passes" counts)
    +0x18  marker_addr  u64  8-byte aligned; boots at +0, passes at +8
    +0x20  reserved up to +0x40

Run ``python3 images/e2k/dirtier.py`` for the listing, or ``... -o FILE`` to
write the raw image.
"""
from __future__ import annotations

import struct
import sys

from harness.guest.e2kasm import Program, addd, cmpedb, g, ldb, ldd, pred, stb, std, subd

LOAD_ADDR = 0x1_0000_0000      # E2K_BIOS_AREA_BASE (include/hw/e2k/memmap.h)
PAGE = 4096
PARAM_OFFSET = 0x40
PARAM_SIZE = 0x40
PARAM_MAGIC = b"MHPB"
PARAM_VERSION = 1
PARAM_FORMAT = "<4sIQQQ"       # magic, version, region_base, region_pages, marker_addr
CODE_OFFSET = PARAM_OFFSET + PARAM_SIZE

DEFAULT_MARKER_ADDR = 0x1000
DEFAULT_REGION_BASE = 0x200000          # 2 MiB
DEFAULT_REGION_PAGES = 25600            # 100 MiB: ends at 102 MiB, inside -m 128M

# Register use.
PB = g(0)          # address of the parameter block
BASE = g(1)        # region_base
PAGES = g(2)       # region_pages
MARKER = g(3)      # marker_addr
BOOTS = g(4)
PTR = g(5)         # current page
LEFT = g(6)        # pages left in this pass
BYTE = g(7)
PASSES = g(8)
LAST = pred(0)     # LEFT == 0 after this page
EMPTY = pred(1)    # region_pages == 0


def program() -> Program:
    p = Program(origin=LOAD_ADDR)

    # Reset entry: jump over the parameter block.
    p.bundle(ct="start", comment="reset PC = 0x100000000")

    p.org(PARAM_OFFSET)
    p.label("params")
    p.data(struct.pack(PARAM_FORMAT, PARAM_MAGIC, PARAM_VERSION, DEFAULT_REGION_BASE,
                       DEFAULT_REGION_PAGES, DEFAULT_MARKER_ADDR).ljust(PARAM_SIZE, b"\0"),
           "parameter block")

    p.org(CODE_OFFSET)
    p.label("start")
    p.bundle(addd(PB, 0, LOAD_ADDR + PARAM_OFFSET), comment="%g0 = &params")
    p.bundle(ldd(BASE, PB, 0x08), ldd(PAGES, PB, 0x10), ldd(MARKER, PB, 0x18),
             comment="load region_base, region_pages, marker_addr")
    p.bundle(ldd(BOOTS, MARKER, 0), cmpedb(EMPTY, PAGES, 0),
             comment="boots = [marker]; %pred1 = no pages")
    p.bundle(addd(BOOTS, BOOTS, 1))
    p.bundle(std(MARKER, 0, BOOTS), comment="[marker] = boots + 1")

    p.label("pass")
    p.bundle(addd(PTR, BASE, 0), addd(LEFT, PAGES, 0), ct="pass_done", if_pred=EMPTY.n,
             comment="ptr = base; left = pages")
    p.label("touch")
    p.bundle(ldb(BYTE, PTR, 0), subd(LEFT, LEFT, 1))
    p.bundle(addd(BYTE, BYTE, 1), cmpedb(LAST, LEFT, 0))
    p.bundle(stb(PTR, 0, BYTE), addd(PTR, PTR, PAGE), ct="touch", unless_pred=LAST.n,
             comment="byte [ptr] += 1; ptr += 4096; next page unless last")
    p.label("pass_done")
    p.bundle(ldd(PASSES, MARKER, 8))
    p.bundle(addd(PASSES, PASSES, 1))
    p.bundle(std(MARKER, 8, PASSES), ct="pass", comment="[marker + 8] = passes + 1")
    return p


def build() -> bytes:
    """The raw firmware image (unpadded); the image recipe pads it."""
    prog = program()
    assert prog.offset("params") == PARAM_OFFSET
    return prog.assemble()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "-o":
        with open(sys.argv[2], "wb") as f:
            f.write(build())
    elif len(sys.argv) == 1:
        print(program().listing())
    else:
        sys.exit("usage: dirtier.py [-o FILE]")
