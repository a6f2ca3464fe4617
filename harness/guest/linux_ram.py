"""The Linux guest's RAM, read from the host: the agent's records, and what a
guest-physical page belongs to.

The agent reports where its buffer lies in guest-physical memory (``MH MAP``
runs from /proc/self/pagemap; the buffer is locked and /init forbids moving
locked pages) and where the kernel's image is (``MH IOMEM``: ``Kernel code``,
``rodata``, ``data``, ``bss``; the kernel runs with ``nokaslr``).  With that:

- :func:`check_records` verifies every agent record in a paused guest's RAM
  file, as the agent itself would: each record's full content is recomputed
  from its index and generation, and the generations must form the agent's
  one-step pattern (records before the dirtier's cursor hold generation
  p + 1, the rest p).  A lost, stale or corrupted page of the buffer breaks
  it even where no source RAM is at hand to compare with;
- :func:`differing_pages` lists every page that differs between two RAM
  files (the exact comparison's own check reports only the first few), and
  :func:`owner` names what each belongs to.

Debian's kernel package has no real System.map (a placeholder; the real one
is in the -dbg package).  The image build copies the kernel's own
/proc/kallsyms out instead (harness.guest.linux_kallsyms); with it
(:func:`kernel_symbols`) a page of the kernel image's code, rodata, data or
bss is also named by the symbols it holds, and the first byte that differs
by the symbol it lies in.  Without it (or when it does not fit the running
kernel), by section only.
"""
from __future__ import annotations

import bisect
import logging
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.checks.ram import RamRegion, compare_files, gpa_of
from harness.guest.linux_proto import Boot
from harness.guest.linux_records import MEM_MAGIC, checksum_rows, mix_rows
from harness.guest.linux_symbols import ANCHOR, SymbolMap
from harness.units import PAGE

__all__ = ["RecordReport", "check_records", "read_agent_pages", "find_agent_page", "file_offset",
           "differing_pages", "first_differences", "PageOwners", "owner_table",
           "KernelSymbols", "kernel_symbols", "SHOW_PAGES"]

log = logging.getLogger(__name__)

RECORD = 64
PER_PAGE = PAGE // RECORD
#: Differing pages listed (with owners) in figures.
SHOW_PAGES = 32


def file_offset(gpa: int, layout: list[RamRegion]) -> int | None:
    for r in layout:
        if r.gpa <= gpa < r.gpa + r.size:
            return r.file_offset + gpa - r.gpa
    return None


@dataclass
class RecordReport:
    """The agent's buffer as found in one RAM file."""

    records: int = 0
    unmapped_pages: int = 0        # buffer pages whose address the agent did not know
    bad: int = 0                   # records whose content is not what the pattern says
    generation: int | None = None  # p: the older of the two generations
    cursor: int | None = None      # records holding p + 1
    #: The record being rewritten when the guest stopped (half written).
    in_flight: int = 0
    first_bad: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.records > 0 and self.bad == 0

    def figures(self) -> dict[str, Any]:
        return {"records": self.records, "bad_records": self.bad,
                "unmapped_pages": self.unmapped_pages, "generation": self.generation,
                "cursor": self.cursor, "in_flight": self.in_flight,
                "first_bad": self.first_bad[:8]}


def _expected(boot: int, index: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """The 8 words of records (index, gen) as memory.c's make() writes them."""
    n = len(index)
    words = np.zeros((n, 8), dtype=np.uint64)
    idx, g = index.astype(np.uint64), gen.astype(np.uint64)
    words[:, 0] = np.uint64(MEM_MAGIC) | (idx << np.uint64(32))
    words[:, 1] = g
    base = np.uint64(boot) ^ (idx << np.uint64(20)) ^ (g << np.uint64(44))
    for k in range(5):
        words[:, 2 + k] = mix_rows(base ^ np.uint64(k))
    words[:, 7] = checksum_rows(words[:, :7], boot)
    return words


def read_agent_pages(ram: Path, boot: Boot,
                     layout: list[RamRegion]) -> tuple[np.ndarray, np.ndarray, int]:
    """(records as uint64 rows in buffer order, their guest-physical addresses,
    pages without a known address)."""
    runs = sorted(boot.map_runs)
    total = int(boot.map_end.get("pages", 0)) if boot.map_end else sum(n for _, _, n in runs)
    if not runs:
        return np.zeros((0, 8), np.uint64), np.zeros(0, np.int64), total
    base_v = runs[0][0]
    pages = np.zeros((total, PAGE), dtype=np.uint8)
    gpas = np.full(total, -1, dtype=np.int64)
    with open(ram, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = np.frombuffer(mm, dtype=np.uint8)
        try:
            for vaddr, paddr, n in runs:
                first = (vaddr - base_v) // PAGE
                off = file_offset(paddr, layout)
                if off is None or first + n > total:
                    continue
                pages[first:first + n] = view[off:off + n * PAGE].reshape(n, PAGE)
                gpas[first:first + n] = paddr + np.arange(n, dtype=np.int64) * PAGE
        finally:
            del view
    unknown = int((gpas < 0).sum())
    return pages.view("<u8").reshape(total * PER_PAGE, 8), gpas, unknown


def check_records(ram: Path, boot: Boot, layout: list[RamRegion]) -> RecordReport:
    """Verify every agent record of ``boot`` in the RAM file ``ram``."""
    words, gpas, unknown = read_agent_pages(ram, boot, layout)
    rep = RecordReport(unmapped_pages=unknown)
    records = int(boot.map_end.get("pages", 0)) * PER_PAGE if boot.map_end else len(words)
    mem = int(boot.hello.get("mem", 0))
    if mem:
        records = min(records, mem // RECORD)
    rep.records = records
    if records == 0:
        return rep
    words = words[:records]
    known = np.repeat(gpas >= 0, PER_PAGE)[:records]
    index = np.arange(records, dtype=np.int64)
    gen = words[:, 1].astype(np.int64)
    # The pattern: a prefix at p + 1, the rest at p.  p is the generation of
    # the last record, unless every record is at one generation.
    sane = known & (words[:, 0] == (np.uint64(MEM_MAGIC) | (index.astype(np.uint64)
                                                           << np.uint64(32))))
    if not sane.any():
        rep.bad = int(known.sum())
        rep.first_bad.append({"problem": "no agent record found where the agent's map "
                              "says its buffer is"})
        return rep
    p = int(gen[sane][-1])
    cursor = int(np.count_nonzero(sane & (gen == p + 1)))
    want_gen = np.where(index < cursor, p + 1, p)
    boot_id = int(boot.boot_id, 16)
    expect = _expected(boot_id, index, want_gen)
    good = (words == expect).all(axis=1) | ~known
    rep.generation, rep.cursor = p, cursor
    bad = np.flatnonzero(~good)
    # The guest was stopped at an arbitrary instruction: the one record the
    # dirtier was writing may be half old, half new.  It lies at the cursor.
    if len(bad) == 1 and int(bad[0]) in (cursor - 1, cursor):
        rep.in_flight = 1
        bad = bad[:0]
    rep.bad = len(bad)
    for i in bad[:8]:
        i = int(i)
        page = i // PER_PAGE
        word = int(np.flatnonzero(words[i] != expect[i])[0])
        rep.first_bad.append({
            "index": i, "gpa": hex(int(gpas[page]) + (i % PER_PAGE) * RECORD + word * 8),
            "word": word, "expected": f"{int(expect[i, word]):016x}",
            "observed": f"{int(words[i, word]):016x}", "expected_gen": int(want_gen[i]),
            "observed_gen": int(gen[i])})
    return rep


def differing_pages(a: Path, b: Path, layout: list[RamRegion], limit: int = 4096) -> list[int]:
    """Guest-physical addresses of the pages that differ between two RAM
    files (at most ``limit``): the exact RAM check's own comparison
    (harness.checks.ram.compare_files), keeping more offsets than it shows."""
    return [gpa_of(off, layout) for off in compare_files(a, b, keep=limit).first_offsets]


def find_agent_page(ram: Path, layout: list[RamRegion], skip: int = 0) -> int | None:
    """Guest-physical address of a page that holds agent records (found by
    their magic and index fields alone), the ``skip``-th such page; None if
    there is none.  For faults planted by the harness's own tests."""
    found = 0
    data = np.fromfile(ram, dtype="<u8")
    words = data[:len(data) - len(data) % (PAGE // 8)].reshape(-1, PAGE // 8)
    # Word 0 of each record in a page: magic | index << 32.
    heads = words[:, ::8]
    ours = ((heads & np.uint64(0xFFFFFFFF)) == np.uint64(MEM_MAGIC)).all(axis=1)
    for page in np.flatnonzero(ours):
        if found == skip:
            return gpa_of(int(page) * PAGE, layout)
        found += 1
    return None


def first_differences(a: Path, b: Path, layout: list[RamRegion],
                      gpas: list[int]) -> dict[int, int]:
    """For each page of ``gpas`` (guest-physical page addresses): the
    guest-physical address of its first byte that differs between the two
    RAM files.  Pages that turn out equal (or lie outside the files) are left
    out."""
    out: dict[int, int] = {}
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for gpa in gpas:
            off = file_offset(gpa, layout)
            if off is None:
                continue
            fa.seek(off)
            fb.seek(off)
            pa = np.frombuffer(fa.read(PAGE), dtype=np.uint8)
            pb = np.frombuffer(fb.read(PAGE), dtype=np.uint8)
            n = min(len(pa), len(pb))
            diff = np.flatnonzero(pa[:n] != pb[:n])
            if len(diff):
                out[gpa] = gpa + int(diff[0])
    return out


@dataclass
class KernelSymbols:
    """The kernel image of one boot with its symbol map: ``base`` is the
    guest-physical address of ``_text`` ("Kernel code" in /proc/iomem),
    ``sections`` the guest-physical [start, end) of code, rodata, data and
    bss.  Only those are named by symbol (the rest of the image, __init and
    the gaps between sections, is freed after boot: see
    harness.guest.linux_symbols)."""

    base: int
    sections: dict[str, tuple[int, int]]
    symbols: SymbolMap

    def section(self, gpa: int) -> str | None:
        for name, (start, end) in self.sections.items():
            if start <= gpa < end:
                return name
        return None

    def page(self, gpa: int) -> str | None:
        """The symbols of the page at ``gpa``: ``first+0x.. .. last (n symbols)``."""
        if self.section(gpa) is None:
            return None
        return self.symbols.page(gpa - self.base, PAGE).text()

    def at(self, gpa: int) -> str | None:
        """``symbol+0xoff`` of one byte."""
        if self.section(gpa) is None:
            return None
        return self.symbols.at(gpa - self.base)

    def gpa_of(self, name: str) -> int | None:
        off = self.symbols.offset_of(name)
        return None if off is None else self.base + off


def _iomem_sections(boot: Boot) -> dict[str, tuple[int, int]]:
    return {name.removeprefix("Kernel "): (start, end + 1) for start, end, name in boot.iomem
            if name.startswith("Kernel ")}


def kernel_symbols(boot: Boot, symbols: SymbolMap | None, ram: Path | None = None,
                   layout: list[RamRegion] | None = None
                   ) -> tuple[KernelSymbols | None, dict[str, Any]]:
    """The symbol map placed where ``boot``'s kernel image is, and figures
    saying whether it is used and why not.

    Used only when it fits: every section /proc/iomem reported lies at the
    map's offset from "Kernel code" with the map's length; and, given a RAM
    file of that boot, the anchor symbol (``linux_banner``) holds its known
    text where the map puts it."""
    if symbols is None:
        return None, {"used": False, "why_not": "the image has no kernel symbol map"}
    sections = _iomem_sections(boot)
    problem = symbols.layout_problem(sections)
    if problem:
        return None, {"used": False, "why_not": problem}
    ks = KernelSymbols(sections["code"][0], sections, symbols)
    figures: dict[str, Any] = {"used": True, "symbols": len(symbols),
                               "text_gpa": hex(ks.base)}
    name, want = ANCHOR
    gpa = ks.gpa_of(name)
    off = None if gpa is None or layout is None else file_offset(gpa, layout)
    if ram is not None and off is not None:
        with open(ram, "rb") as f:
            f.seek(off)
            got = f.read(len(want))
        if got != want:
            return None, {"used": False, "why_not": f"{name} at {gpa:#x} holds {got!r}, "
                                                    f"not {want!r}"}
        figures["anchor"] = f"{name} at {gpa:#x} holds {want.decode().strip()!r}"
    return ks, figures


@dataclass
class PageOwners:
    """Who owns a guest-physical page, from what one boot of the agent said."""

    #: Sorted (start, end, name) ranges: the agent's buffer pages, then the
    #: kernel image sections.
    ranges: list[tuple[int, int, str]]
    #: Names kernel image pages by symbol (None: by section only).
    kernel: KernelSymbols | None = None
    #: The kernel's page-table pages (harness.guest.linux_pagetables).
    tables: dict[int, str] = field(default_factory=dict)

    def owner(self, gpa: int) -> str:
        i = bisect.bisect_right(self.ranges, (gpa, float("inf"), "")) - 1
        if i >= 0:
            start, end, name = self.ranges[i]
            if start <= gpa < end:
                return name
        table = self.tables.get(gpa & ~(PAGE - 1))
        if table is not None:
            return table
        if gpa < 0x100000:
            return "below 1 MiB (firmware, BIOS data, option ROMs)"
        tables = "user page tables" if self.tables else "page tables"
        return f"other guest RAM (page cache, {tables}, slab, free pages...)"

    def page(self, gpa: int, first_byte: int | None = None) -> dict[str, Any]:
        """One page's entry: address, owner, and in the kernel image its
        symbols and the symbol of its first differing byte."""
        entry: dict[str, Any] = {"gpa": hex(gpa), "owner": self.owner(gpa)}
        if self.kernel is not None:
            names = self.kernel.page(gpa)
            if names is not None:
                entry["symbols"] = names
        if first_byte is not None:
            entry["first_byte"] = hex(first_byte)
            sym = self.kernel.at(first_byte) if self.kernel is not None else None
            if sym is not None:
                entry["first_byte_symbol"] = sym
        return entry

    @staticmethod
    def text(entry: dict[str, Any]) -> str:
        """An entry of :meth:`page` in words, e.g. ``0x2161000: kernel image:
        rodata, linux_banner .. x (3 symbols), first byte 0x2161920 in
        linux_banner+0x20``."""
        out = f"{entry['gpa']}: {entry['owner']}"
        if "symbols" in entry:
            out += f", {entry['symbols']}"
        if "first_byte_symbol" in entry:
            out += f", first byte {entry['first_byte']} in {entry['first_byte_symbol']}"
        return out

    def describe(self, gpas: list[int],
                 first_bytes: dict[int, int] | None = None) -> dict[str, Any]:
        """Counts per owner, and the first pages with theirs."""
        counts: dict[str, int] = {}
        for g in gpas:
            kind = self.owner(g).split(" (")[0]
            counts[kind] = counts.get(kind, 0) + 1
        first_bytes = first_bytes or {}
        return {"by_owner": counts,
                "pages": [self.page(g, first_bytes.get(g)) for g in gpas[:SHOW_PAGES]]}


def owner_table(boot: Boot, kernel: KernelSymbols | None = None,
                tables: dict[int, str] | None = None) -> PageOwners:
    """Owners of guest-physical pages as ``boot`` reported them."""
    ranges: list[tuple[int, int, str]] = []
    base_v = min((v for v, _, _ in boot.map_runs), default=0)
    for vaddr, paddr, n in boot.map_runs:
        first = (vaddr - base_v) // PAGE
        for k in range(n):
            rec = (first + k) * PER_PAGE
            ranges.append((paddr + k * PAGE, paddr + (k + 1) * PAGE,
                           f"agent buffer (records {rec}..{rec + PER_PAGE - 1})"))
    for start, end, name in boot.iomem:
        if name.startswith("Kernel "):
            ranges.append((start, end + 1, f"kernel image: {name.removeprefix('Kernel ')}"))
    ranges.sort()
    return PageOwners(ranges, kernel, tables or {})
