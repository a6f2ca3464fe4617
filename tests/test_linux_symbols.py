"""The Linux guest's kernel symbol map (harness.guest.linux_symbols) and the
capture disk's parser (harness.guest.linux_kallsyms): a small kallsyms text
with KASLR-style addresses, offsets from _text, page ranges and boundaries;
differing pages named by it (harness.guest.linux_ram); the kernel's page
tables walked in a RAM file (harness.guest.linux_pagetables); the image key's
remembered apt answer (harness.guest.linux_build)."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pytest

from harness.checks.ram import x86_layout
from harness.guest import linux_build
from harness.guest.linux_kallsyms import KallsymsError, parse_capture
from harness.guest.linux_pagetables import kernel_page_tables
from harness.guest.linux_proto import AgentStream
from harness.guest.linux_ram import (PageOwners, differing_pages, first_differences,
                                     kernel_symbols, owner_table)
from harness.guest.linux_symbols import (MAX_NAMES, SymbolMap, SymbolMapError, dump,
                                         kernel_image_symbols, load)
from harness.units import MiB

BASE = 0xFFFFFFFF9A000000        # a relocated _text (KASLR)

KALLSYMS = "\n".join(f"{BASE + off:016x} {kind} {name}" for off, kind, name in [
    (0x0, "T", "_stext"),
    (0x0, "T", "_text"),
    (0x10, "t", "first_func"),
    (0x1000, "T", "second_func"),
    (0x1800, "T", "third_func"),
    (0x2000, "T", "_etext"),
    (0x3000, "D", "__start_rodata"),
    (0x3000, "D", "linux_banner"),
    (0x3100, "r", "a_string"),
    (0x4000, "D", "__end_rodata"),
    (0x5000, "D", "_sdata"),
    (0x5000, "D", "init_top_pgt"),
    (0x5040, "D", "jiffies"),
    (0x5100, "d", "d1"), (0x5200, "d", "d2"), (0x5300, "d", "d3"), (0x5400, "d", "d4"),
    (0x5500, "d", "d5"),
    (0x7000, "D", "_edata"),
    (0x8000, "B", "__bss_start"),
    (0x8000, "b", "some_bss"),
    (0xA000, "B", "__bss_stop"),
    (0xB000, "B", "_end"),
]) + "\n" + "\n".join([
    "0000000000000000 A fixed_percpu_data",          # per-cpu: outside the image
    "0000000000001000 A cpu_debug_store",
    f"{BASE - 0x1000:016x} t before_text",           # not the image
    f"{BASE + 0x20000:016x} t after_end",
    "ffffffffc045c024 r _note_10\t[virtio_console]",  # a module's
]) + "\n"

#: What the guest's /proc/iomem says of the image, booted elsewhere (nokaslr).
CODE = 0x1000000
IOMEM = {"code": (CODE, CODE + 0x2000), "rodata": (CODE + 0x3000, CODE + 0x4000),
         "data": (CODE + 0x5000, CODE + 0x7000), "bss": (CODE + 0x8000, CODE + 0xA000)}


@pytest.fixture(scope="module")
def smap() -> SymbolMap:
    return load(dump(kernel_image_symbols(KALLSYMS), {"kaslr_relocated": "true"}))


def test_only_the_kernel_image_as_offsets_from_text() -> None:
    rows = kernel_image_symbols(KALLSYMS)
    names = {name for _, _, name in rows}
    assert {"fixed_percpu_data", "cpu_debug_store", "before_text", "after_end",
            "_note_10"}.isdisjoint(names)
    assert rows[0][0] == 0 and rows[-1] == (0xB000, "B", "_end")
    assert [off for off, _, _ in rows] == sorted(off for off, _, _ in rows)


def test_round_trip_keeps_aliases_and_meta(smap: SymbolMap) -> None:
    assert smap.meta == {"kaslr_relocated": "true"}
    # Section bounds share addresses with other symbols and stay findable.
    assert smap.offset_of("__bss_start") == smap.offset_of("some_bss") == 0x8000
    assert smap.offset_of("_sdata") == 0x5000
    assert smap.sections() == {"code": (0, 0x2000), "rodata": (0x3000, 0x4000),
                               "data": (0x5000, 0x7000), "bss": (0x8000, 0xA000)}


def test_one_name_per_address_the_best(smap: SymbolMap) -> None:
    assert smap.at(0) == "_text"                 # over _stext (global, shorter)
    assert smap.at(0x3000) == "linux_banner"     # over __start_rodata
    assert smap.at(0x5000) == "init_top_pgt"
    assert smap.at(0x8000) == "some_bss"         # a local name over a __ marker


def test_symbol_plus_offset_and_boundaries(smap: SymbolMap) -> None:
    assert smap.at(0x10) == "first_func"
    assert smap.at(0x11) == "first_func+0x1"
    assert smap.at(0xFFF) == "first_func+0xfef"  # last byte before the next symbol
    assert smap.at(0x1000) == "second_func"      # first byte of the next
    assert smap.at(0x5043) == "jiffies+0x3"
    assert smap.at(-0x10) == "_text-0x10"


def test_page_names_first_and_last_bounded(smap: SymbolMap) -> None:
    one = smap.page(0x1000)
    assert (one.first, one.names, one.count) == ("second_func", ("third_func",), 1)
    assert one.text() == "second_func .. third_func"
    # Starting inside a symbol, several symbols starting in the page: the
    # text names the first and the last only, with the count.
    many = smap.page(0x5000 + 0x20)
    assert many.first == "init_top_pgt+0x20"
    assert many.count == 6 and len(many.names) == MAX_NAMES
    assert many.names == ("jiffies", "d1", "d2", "d5")
    assert many.text() == "init_top_pgt+0x20 .. d5 (7 symbols)"
    # The page's end is exclusive: a symbol starting right after it is not in it.
    edge = smap.page(0x0, 0x1000)
    assert edge.names == ("first_func",)
    assert smap.page(0x3200, 0x100).text() == "a_string+0x100"


def test_layout_matches_wherever_the_guest_put_the_image(smap: SymbolMap) -> None:
    assert smap.layout_problem(IOMEM) is None
    moved = {k: (a + 0x4400000, b + 0x4400000) for k, (a, b) in IOMEM.items()}
    assert smap.layout_problem(moved) is None


def test_layout_mismatch_is_named(smap: SymbolMap) -> None:
    wrong = dict(IOMEM, data=(CODE + 0x6000, CODE + 0x7000))
    problem = smap.layout_problem(wrong)
    assert problem is not None and "kernel data" in problem and "+0x6000" in problem
    assert "Kernel code" in str(smap.layout_problem({"data": IOMEM["data"]}))


def test_hidden_addresses_are_refused() -> None:
    hidden = "\n".join(f"0000000000000000 {line.split(' ', 1)[1]}"
                       for line in KALLSYMS.splitlines())
    with pytest.raises(SymbolMapError, match="kptr_restrict"):
        kernel_image_symbols(hidden)
    with pytest.raises(SymbolMapError, match="_end"):
        kernel_image_symbols(f"{BASE:016x} T _text\n")
    with pytest.raises(SymbolMapError, match="line 1"):
        kernel_image_symbols("zzzz T _text\n")


def test_stored_map_is_checked() -> None:
    with pytest.raises(SymbolMapError):
        load(b"not gzip")
    with pytest.raises(SymbolMapError, match="header"):
        load(gzip.compress(b"0 T _text\n"))


def test_capture_disk_parsed() -> None:
    iomem = "\n".join([
        "00100000-0ffdcfff : System RAM",
        "  05600000-06401d31 : Kernel code",
        "  06600000-06eeafff : Kernel rodata",
        "  07000000-0724897f : Kernel data",
        "  07910000-089fffff : Kernel bss",
    ])
    raw = (f"MH SYMBOLS v=1 kptr_restrict=1\n{iomem}\nMH KALLSYMS\n{KALLSYMS}MH END\n"
           ).encode() + b"\x00" * 4096
    fields, sections, kallsyms = parse_capture(raw)
    assert fields == {"v": "1", "kptr_restrict": "1"}
    assert sections["code"] == (0x5600000, 0x6401D32)
    assert sections["bss"] == (0x7910000, 0x8A00000)
    assert kallsyms == KALLSYMS
    with pytest.raises(KallsymsError, match="MH END"):
        parse_capture(raw.replace(b"MH END", b"MH EN"))


# --- naming differing pages of a guest's RAM (harness.guest.linux_ram) ---------

def _boot_and_ram(tmp_path: Path, code: int = CODE) -> tuple[Path, AgentStream]:
    """A 32 MiB RAM file whose kernel image sits at ``code``, as iomem says."""
    s = AgentStream()
    lines = ["MH HELLO v=1 boot=ab mem=4096"]
    lines += [f"MH IOMEM {a:#x} {b - 1:#x} Kernel {name}" for name, (a, b) in
              ((n, (a - CODE + code, b - CODE + code)) for n, (a, b) in IOMEM.items())]
    lines += ["MH MAP 0x7f0000000000 0x200000 1", "MH MAPEND runs=1 pages=1 unknown=0"]
    s.feed(0, ("\n".join(lines) + "\n").encode(), 1.0)
    ram = bytearray(32 * MiB)
    banner = b"Linux version 6.1.0-test (someone@somewhere)\n"
    ram[code + 0x3000:code + 0x3000 + len(banner)] = banner
    path = tmp_path / "src.ram"
    path.write_bytes(bytes(ram))
    return path, s


def test_kernel_pages_named_by_symbol(tmp_path: Path, smap: SymbolMap) -> None:
    src, s = _boot_and_ram(tmp_path, code=0x1400000)      # relocated, like KASLR
    layout = x86_layout(32 * MiB)
    kernel, figures = kernel_symbols(s.boot, smap, src, layout)
    assert kernel is not None and figures["used"] and "linux_banner" in figures["anchor"]
    dst = tmp_path / "dst.ram"
    data = bytearray(src.read_bytes())
    jiffies = 0x1400000 + 0x5043
    data[jiffies] ^= 0xFF                                  # jiffies+0x3 (data)
    data[0x1400000 + 0x3120] ^= 0x01                       # a_string+0x20 (rodata)
    data[0x1400000 + 0x6000] ^= 0x01                       # data, after d5's start
    data[0x200000 + 8] ^= 0x01                             # the agent's buffer
    dst.write_bytes(bytes(data))
    pages = differing_pages(src, dst, layout)
    assert pages == [0x200000, 0x1403000, 0x1405000, 0x1406000]
    named = owner_table(s.boot, kernel).describe(pages,
                                                 first_differences(src, dst, layout, pages))
    assert named["by_owner"] == {"agent buffer": 1, "kernel image: rodata": 1,
                                 "kernel image: data": 2}
    agent, rodata, data_page, last = named["pages"]
    assert "symbols" not in agent and agent["owner"].startswith("agent buffer")
    assert rodata["symbols"] == "linux_banner .. a_string"
    assert rodata["first_byte_symbol"] == "a_string+0x20"
    assert data_page["symbols"] == "init_top_pgt .. d5 (7 symbols)"
    assert data_page["first_byte"] == hex(jiffies)
    assert data_page["first_byte_symbol"] == "jiffies+0x3"
    assert last["symbols"] == "d5+0xb00" and last["first_byte_symbol"] == "d5+0xb00"
    assert PageOwners.text(data_page) == (f"{hex(0x1405000)}: kernel image: data, init_top_pgt"
                                          f" .. d5 (7 symbols), first byte {hex(jiffies)} in "
                                          f"jiffies+0x3")


def test_only_the_four_sections_by_symbol(tmp_path: Path, smap: SymbolMap) -> None:
    """The gap between code and rodata is freed after boot: no symbol there."""
    src, s = _boot_and_ram(tmp_path)
    kernel, _ = kernel_symbols(s.boot, smap, src, x86_layout(32 * MiB))
    assert kernel is not None
    assert kernel.page(CODE + 0x2000) is None and kernel.at(CODE + 0x2fff) is None
    assert kernel.at(CODE + 0x1fff) == "third_func+0x7ff"   # code's last byte
    assert kernel.at(CODE + 0xA000) is None                  # bss ends before
    assert kernel.gpa_of("jiffies") == CODE + 0x5040


def test_a_map_that_does_not_fit_names_nothing(tmp_path: Path, smap: SymbolMap) -> None:
    src, s = _boot_and_ram(tmp_path)
    layout = x86_layout(32 * MiB)
    s.boot.iomem[:] = [(a, b + 0x1000 if "bss" in n else b, n) for a, b, n in s.boot.iomem]
    kernel, figures = kernel_symbols(s.boot, smap, src, layout)
    assert kernel is None and not figures["used"] and "kernel bss" in figures["why_not"]
    kernel, figures = kernel_symbols(s.boot, None)
    assert kernel is None and "no kernel symbol map" in figures["why_not"]


def test_the_anchor_must_hold_its_text(tmp_path: Path, smap: SymbolMap) -> None:
    src, s = _boot_and_ram(tmp_path)
    data = bytearray(src.read_bytes())
    data[CODE + 0x3000] = ord("X")
    src.write_bytes(bytes(data))
    kernel, figures = kernel_symbols(s.boot, smap, src, x86_layout(32 * MiB))
    assert kernel is None and "linux_banner" in figures["why_not"]


# --- the image key's remembered apt answer (harness.guest.linux_build) ---------

def test_key_text_remembered_until_apt_state_changes(tmp_path: Path, monkeypatch) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb_Packages").write_text("one")
    state = (lists, tmp_path / "status")
    (tmp_path / "status").write_text("dpkg")
    asked: list[str] = []

    def fake_key(packages_txt: str, fingerprint: str) -> str:
        asked.append(fingerprint)
        return f"versions for {fingerprint}\n"
    monkeypatch.setattr(linux_build, "_key_text", fake_key)
    monkeypatch.setattr(linux_build, "state_fingerprint",
                        functools.partial(linux_build.state_fingerprint, state=state))
    cache = tmp_path / "key.json"
    first = linux_build.key_text("kernel linux-image-amd64\n", cache)
    assert linux_build.key_text("kernel linux-image-amd64\n", cache) == first
    assert len(asked) == 1 and cache.is_file()
    # apt update rewrites a list: asked again, a different answer is possible.
    (lists / "deb_Packages").write_text("two!")
    second = linux_build.key_text("kernel linux-image-amd64\n", cache)
    assert len(asked) == 2 and second != first
    # A different recipe: asked again.
    linux_build.key_text("kernel linux-image-cloud-amd64\n", cache)
    assert len(asked) == 3
    # dpkg installs something: asked again.
    (tmp_path / "status").write_text("dpkg, more")
    linux_build.key_text("kernel linux-image-amd64\n", cache)
    assert len(asked) == 4
    # Another process (a fresh memory) with the same state reads the file.
    assert linux_build.key_text("kernel linux-image-amd64\n", cache) and len(asked) == 4


# --- the kernel's page tables (harness.guest.linux_pagetables) ------------------

def _entry(table: int, present: bool = True, ps: bool = False) -> int:
    return table | (1 if present else 0) | (0x80 if ps else 0) | 0x62 | (1 << 63)


def test_page_tables_walked_from_the_top(tmp_path: Path) -> None:
    """PGD (at 0x10000) -> one kernel-half PUD -> one PMD with a 2 MiB leaf,
    a PTE table and a non-present entry; a user-half PUD with a 1 GiB leaf."""
    ram = np.zeros(4 * MiB // 8, dtype="<u8")

    def put(table: int, index: int, value: int) -> None:
        ram[table // 8 + index] = value
    pgd, pud_k, pmd, pte, pud_u = 0x10000, 0x20000, 0x30000, 0x40000, 0x50000
    put(pgd, 273, _entry(pud_k))                      # 0xffff888000000000
    put(pgd, 1, _entry(pud_u))                        # user half: 0x8000000000
    put(pud_u, 0, _entry(0x40000000, ps=True))        # 1 GiB leaf, not a table
    put(pud_k, 0, _entry(pmd))
    put(pud_k, 1, _entry(0x60000, present=False))     # not present: not followed
    put(pmd, 0, _entry(pte))
    put(pmd, 1, _entry(0x200000, ps=True))            # 2 MiB leaf
    put(pte, 0, _entry(0x300000))                     # a page, never a table
    put(pte, 1, _entry(0x9990000))                    # a page outside RAM: fine
    path = tmp_path / "ram"
    ram.tofile(path)
    tables, figures = kernel_page_tables(path, x86_layout(4 * MiB), pgd, five_level=False)
    assert tables == {pud_k: "kernel page table (PUD for 0xffff888000000000)",
                      pud_u: "kernel page table (PUD for 0x8000000000)",
                      pmd: "kernel page table (PMD for 0xffff888000000000)",
                      pte: "kernel page table (PTE for 0xffff888000000000)"}
    assert figures == {"used": True, "top": hex(pgd), "levels": 4,
                       "tables": {"PUD": 2, "PMD": 1, "PTE": 1}}
    owners = PageOwners([], None, tables)
    assert owners.owner(pte + 0x123) == "kernel page table (PTE for 0xffff888000000000)"
    assert "user page tables" in owners.owner(0x300000)


def test_page_table_walk_bounded(tmp_path: Path) -> None:
    """A 'table' whose entries point outside RAM is reported, not followed."""
    ram = np.zeros(1 * MiB // 8, dtype="<u8")
    ram[0x1000 // 8] = _entry(0x7000_0000)
    path = tmp_path / "ram"
    ram.tofile(path)
    tables, figures = kernel_page_tables(path, x86_layout(1 * MiB), 0x1000, five_level=False)
    assert list(tables) == [0x7000_0000] and "outside the RAM file" in figures["problem"]
