"""The guest kernel's page tables, found in a paused guest's RAM file.

A differing page that is neither the agent's buffer nor in the kernel image
may be a page table.  The kernel's own tables hang off ``init_top_pgt``
(swapper_pg_dir, arch/x86/kernel/head_64.S), whose guest-physical address
the symbol map gives (harness.guest.linux_ram.KernelSymbols); every process's
top-level table copies its kernel half, so walking it finds every table page
of the kernel's address space: the direct map, vmalloc and modules, vmemmap,
the fixmap, the kernel image's mapping.  :func:`kernel_page_tables` walks it
in the RAM file (x86-64 long mode: 512 eight-byte entries per table, present
bit 0, PS bit 7 for a 1 GiB / 2 MiB leaf, the next table's address in bits
12-51; Intel SDM vol. 3, 4.5), with 5 levels where the kernel enabled them
(``__pgtable_l5_enabled``, read from the same RAM).

What it cannot name: the user half of each process's tables (the agent's
own), whose top page is only known from a vCPU's CR3 or the task's mm, which
a RAM file alone does not give.  Those pages stay "other guest RAM".
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from harness.checks.ram import RamRegion
from harness.guest.linux_ram import KernelSymbols, file_offset
from harness.units import PAGE

__all__ = ["kernel_page_tables", "page_tables_of", "LEVEL_NAMES", "MAX_TABLES"]

log = logging.getLogger(__name__)

#: Entry level -> the name of the table it points to (4 levels: PGD -> PUD).
LEVEL_NAMES = {5: "P4D", 4: "PUD", 3: "PMD", 2: "PTE"}
#: A walk that finds more tables than this is not a sane kernel's (or not
#: 4/5-level x86-64 paging): it is abandoned.
MAX_TABLES = 1 << 16
_ADDR = np.uint64(0x000F_FFFF_FFFF_F000)
_PRESENT = np.uint64(1)
_PS = np.uint64(1 << 7)


def _read_table(mm: np.ndarray, gpa: int, layout: list[RamRegion]) -> np.ndarray | None:
    for r in layout:
        if r.gpa <= gpa and gpa + PAGE <= r.gpa + r.size:
            off = r.file_offset + gpa - r.gpa
            return mm[off // 8:(off + PAGE) // 8]
    return None


def kernel_page_tables(ram: Path, layout: list[RamRegion], top: int,
                       five_level: bool) -> tuple[dict[int, str], dict[str, Any]]:
    """Guest-physical page -> ``kernel page table (PMD for 0xffff888000000000)``
    for every table reachable from the top-level table at ``top`` (not the
    top page itself: the symbol map names it), and figures (tables per level)."""
    data = np.memmap(ram, dtype="<u8", mode="r")
    tables: dict[int, str] = {}
    counts: dict[str, int] = {}
    top_level = 5 if five_level else 4
    # (gpa of a table, its level: 5/4 = top, 1 = PTE page), virtual base.
    todo: list[tuple[int, int, int]] = [(top, top_level, 0)]
    problem = ""
    while todo:
        gpa, level, va_base = todo.pop()
        words = _read_table(data, gpa, layout)
        if words is None:
            problem = f"a table at {gpa:#x} lies outside the RAM file"
            continue
        present = (words & _PRESENT) != 0
        # Entries of a PUD or PMD table (levels 3, 2) with PS set map 1 GiB /
        # 2 MiB: no table below them.
        leaf = ((words & _PS) != 0) if level in (2, 3) else np.zeros(len(words), bool)
        shift = 12 + 9 * (level - 1)            # the virtual bits one entry spans
        name = LEVEL_NAMES[level]
        for i in np.flatnonzero(present & ~leaf):
            child = int(words[i] & _ADDR)
            va = va_base | (int(i) << shift)
            if level == top_level and i >= 256:  # the upper, kernel half: sign-extended
                va |= ((1 << 64) - 1) & ~((1 << (shift + 9)) - 1)
            if child in tables:
                continue             # reached twice (shared tables)
            tables[child] = f"kernel page table ({name} for {va:#x})"
            counts[name] = counts.get(name, 0) + 1
            if len(tables) > MAX_TABLES:
                return {}, {"used": False, "why_not": f"more than {MAX_TABLES} tables under "
                                                       f"{top:#x}: not a page table"}
            if level > 2:            # a PTE table's entries map pages, not tables
                todo.append((child, level - 1, va))
    figures: dict[str, Any] = {"used": True, "top": hex(top), "levels": top_level,
                               "tables": counts}
    if problem:
        figures["problem"] = problem
    return tables, figures


def page_tables_of(ram: Path, layout: list[RamRegion],
                   kernel: KernelSymbols) -> tuple[dict[int, str], dict[str, Any]]:
    """:func:`kernel_page_tables` from ``init_top_pgt``, placed by the symbol
    map, in the RAM file ``ram`` of that boot; 5 levels where the kernel's
    ``__pgtable_l5_enabled`` (arch/x86/kernel/head64.c) says so."""
    top = kernel.gpa_of("init_top_pgt")
    if top is None:
        return {}, {"used": False, "why_not": "the symbol map has no init_top_pgt"}
    flag = kernel.gpa_of("__pgtable_l5_enabled")
    five = False
    off = None if flag is None else file_offset(flag, layout)
    if off is not None:
        with open(ram, "rb") as f:
            f.seek(off)
            five = int.from_bytes(f.read(4), "little") != 0
    return kernel_page_tables(ram, layout, top, five)
