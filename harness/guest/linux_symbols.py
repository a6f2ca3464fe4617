"""The guest kernel's symbol map: which kernel symbol a guest-physical page holds.

Debian's kernel package ships only a placeholder System.map (the real one is
in the large -dbg package), but the running kernel carries its own map:
``/proc/kallsyms``.  The image build (harness.guest.linux_kallsyms) boots the
just-built guest once and copies it out; :func:`kernel_image_symbols` keeps
the kernel image's own symbols (``_text`` .. ``_end``; no module and no
per-cpu symbols) as offsets from ``_text``, and :func:`dump` stores them
compressed in the bundle.

Why offsets from ``_text`` are enough, with or without KASLR: x86-64 maps the
kernel image with one linear mapping (``__pa_symbol(x) = x -
__START_KERNEL_map + phys_base``, arch/x86/include/asm/page_64.h), so KASLR
moves the whole image as one block, virtually and physically.  At cell time
the guest's ``/proc/iomem`` "Kernel code" start (which the agent reports) is
``__pa_symbol(_text)`` (arch/x86/kernel/setup.c, ``code_resource``), so a
guest-physical address ``gpa`` in the image is ``_text + (gpa - code start)``.
The other iomem ranges (``Kernel rodata``/``data``/``bss``: ``__start_rodata``,
``_sdata``, ``__bss_start``) give three more anchors; :meth:`SymbolMap.layout_problem`
compares them with the map's own offsets, so a map that does not fit the
running kernel names nothing.

Only pages inside those four ranges are named by symbol: the rest of the
image (``__init`` text and data, the gaps between sections) is freed to the
page allocator after boot and holds anything by the time a cell migrates.
"""
from __future__ import annotations

import bisect
import gzip
import logging
from dataclasses import dataclass

from harness.units import PAGE

__all__ = ["SymbolMapError", "SECTION_SYMBOLS", "ANCHOR", "PageSymbols", "SymbolMap", "kernel_image_symbols",
           "dump", "load", "MAX_NAMES"]

log = logging.getLogger(__name__)

#: The symbols that bound each section /proc/iomem names (the iomem name
#: after "Kernel "), as arch/x86/kernel/setup.c sets its resources.
SECTION_SYMBOLS: dict[str, tuple[str, str]] = {
    "code": ("_text", "_etext"),
    "rodata": ("__start_rodata", "__end_rodata"),
    "data": ("_sdata", "_edata"),
    "bss": ("__bss_start", "__bss_stop"),
}
#: A symbol whose bytes are known, to check a map against a guest's RAM:
#: init/version.c, ``linux_banner[] = "Linux version " UTS_RELEASE ...``.
ANCHOR = ("linux_banner", b"Linux version ")
#: Symbols named per page in text (more are counted, not listed).
MAX_NAMES = 4
#: First line of a stored map; the version changes with the format.
HEADER = "# mharness kernel symbols v1: offset-from-_text type name"


class SymbolMapError(ValueError):
    """The kallsyms text or a stored map cannot be used."""


def _rank(kind: str, name: str) -> tuple[bool, bool, bool, int, str]:
    """Of symbols at one address, the lowest rank names it in reports: a
    plain name over an ``_``-prefixed section marker (``_sdata`` and
    ``init_top_pgt`` share an address), ``_`` over ``__``, a global symbol
    over a local one, then the shorter (``_text`` over ``_stext``)."""
    return (name.startswith("_"), name.startswith("__"), not kind.isupper(), len(name), name)


def kernel_image_symbols(kallsyms: str) -> list[tuple[int, str, str]]:
    """(offset from ``_text``, type, name) of the kernel image's symbols:
    ``/proc/kallsyms`` lines filtered to ``[_text, _end]`` (``_end`` marks the
    end), modules (``[name]`` suffix) dropped; by offset, the best name of an
    address first (:func:`_rank`).  Aliases stay: section bounds such as
    ``__bss_start`` share their address with other symbols.

    Raises :class:`SymbolMapError` when the text hides its addresses
    (kptr_restrict: every address reads zero) or lacks ``_text``/``_end``."""
    rows: list[tuple[int, str, str]] = []
    for n, line in enumerate(kallsyms.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise SymbolMapError(f"kallsyms line {n}: expected 'address type name', "
                                 f"got {line!r}")
        if len(parts) > 3:           # "name\t[module]": not the kernel image
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            raise SymbolMapError(f"kallsyms line {n}: bad address {parts[0]!r}") from None
        rows.append((addr, parts[1], parts[2]))
    names = {name: addr for addr, _, name in rows}
    if rows and all(addr == 0 for addr, _, _ in rows):
        raise SymbolMapError("kallsyms shows every address as 0 (kptr_restrict, or read "
                             "without CAP_SYSLOG)")
    for need in ("_text", "_end"):
        if need not in names:
            raise SymbolMapError(f"kallsyms has no '{need}'")
    text, end = names["_text"], names["_end"]
    kept = [(addr - text, kind, name) for addr, kind, name in rows if text <= addr <= end]
    return sorted(kept, key=lambda r: (r[0], _rank(r[1], r[2])))


def dump(symbols: list[tuple[int, str, str]], meta: dict[str, str] | None = None) -> bytes:
    """The stored form: gzip'd text lines ``offset type name`` (offsets in
    hex), after a header and ``# key=value`` lines of provenance."""
    lines = [HEADER] + [f"# {k}={v}" for k, v in (meta or {}).items()]
    lines += [f"{off:x} {kind} {name}" for off, kind, name in symbols]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=9, mtime=0)


@dataclass(frozen=True)
class PageSymbols:
    """The symbols a page (or a byte) of the kernel image holds."""

    first: str                  # the symbol covering the page's first byte, +offset
    names: tuple[str, ...]      # symbols that start inside the page, in order
    count: int                  # how many start inside it

    def text(self) -> str:
        """``first .. last`` with the number in between, bounded in length:
        ``node_data+0x40 .. jiffies (5 symbols)``."""
        if not self.count:
            return self.first
        last = self.names[-1]
        if self.count == 1:
            return f"{self.first} .. {last}"
        return f"{self.first} .. {last} ({self.count + 1} symbols)"


class SymbolMap:
    """Kernel image symbols by offset from ``_text`` (see the module doc)."""

    def __init__(self, symbols: list[tuple[int, str, str]],
                 meta: dict[str, str] | None = None) -> None:
        if not symbols:
            raise SymbolMapError("no symbols")
        # Lookups by address see one name per address, the best-ranked one.
        best: dict[int, tuple[str, str]] = {}
        for off, kind, name in symbols:
            if off not in best or _rank(kind, name) < _rank(*best[off]):
                best[off] = (kind, name)
        self.offsets = sorted(best)
        self.names = [best[off][1] for off in self.offsets]
        self.meta = dict(meta or {})
        self._by_name = {name: off for off, _, name in symbols}
        self.count = len(symbols)

    def __len__(self) -> int:
        return self.count

    def offset_of(self, name: str) -> int | None:
        return self._by_name.get(name)

    def sections(self) -> dict[str, tuple[int, int]]:
        """Section -> [start, end) offsets from ``_text``, for the sections
        whose bounding symbols the map has."""
        out = {}
        for section, (lo, hi) in SECTION_SYMBOLS.items():
            a, b = self.offset_of(lo), self.offset_of(hi)
            if a is not None and b is not None:
                out[section] = (a, b)
        return out

    def layout_problem(self, iomem: dict[str, tuple[int, int]]) -> str | None:
        """Why this map does not fit a running kernel whose /proc/iomem said
        ``iomem`` (section -> [start, end) guest-physical), or None.  Each
        section must start at the map's offset from "Kernel code" and be as
        long as the map says."""
        if "code" not in iomem:
            return "the guest reported no 'Kernel code' range"
        base = iomem["code"][0]
        mine = self.sections()
        for section, (start, end) in iomem.items():
            if section not in mine:
                return f"the symbol map has no bounds for kernel {section}"
            lo, hi = mine[section]
            if (start - base, end - base) != (lo, hi):
                return (f"kernel {section} is at +{start - base:#x}..+{end - base:#x} from "
                        f"'Kernel code' in the guest, +{lo:#x}..+{hi:#x} in the symbol map")
        return None

    def at(self, offset: int) -> str:
        """``name+0xoff`` of the symbol covering ``offset`` (from ``_text``)."""
        i = bisect.bisect_right(self.offsets, offset) - 1
        if i < 0:
            return f"_text-{-offset:#x}"
        delta = offset - self.offsets[i]
        return self.names[i] + (f"+{delta:#x}" if delta else "")

    def page(self, offset: int, size: int = PAGE) -> PageSymbols:
        """The symbols of ``[offset, offset + size)``."""
        lo = bisect.bisect_right(self.offsets, offset)
        hi = bisect.bisect_left(self.offsets, offset + size)
        inside = self.names[lo:hi]
        shown = tuple(inside[:MAX_NAMES - 1] + inside[-1:]) if len(inside) >= MAX_NAMES \
            else tuple(inside)
        return PageSymbols(self.at(offset), shown, len(inside))


def load(data: bytes) -> SymbolMap:
    """A map from :func:`dump`'s bytes."""
    try:
        text = gzip.decompress(data).decode()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise SymbolMapError(f"not a stored symbol map: {e}") from e
    lines = text.splitlines()
    if not lines or lines[0] != HEADER:
        raise SymbolMapError(f"not a stored symbol map (header {lines[:1]})")
    meta: dict[str, str] = {}
    symbols: list[tuple[int, str, str]] = []
    for line in lines[1:]:
        if line.startswith("# "):
            k, _, v = line[2:].partition("=")
            meta[k] = v
            continue
        off, kind, name = line.split(" ")
        symbols.append((int(off, 16), kind, name))
    return SymbolMap(symbols, meta)
