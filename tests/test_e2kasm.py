"""Unit tests of the e2k encoder (harness.guest.e2kasm) and the e2k dirtier's host side.

Expected bit patterns are written out from the field layouts that
OpenE2K/qemu-e2k (e2k-softmmu) decodes; "translate.c" is its
target/e2k/translate.c and "alops.inc" its target/e2k/alops.inc.  Where a
whole bundle is checked, ``_unpack`` below restates the rules of
``unpack_bundle`` (for the syllables this encoder emits) and the bundle is
read back with them, so the encoder is never its own oracle.
"""
from __future__ import annotations

import dataclasses
import runpy
import struct
from pathlib import Path

import numpy as np
import pytest

from harness.guest import images
from harness.guest.e2kasm import (AsmError, Lit, Program, addd, b, bundle, cmpbdb, cmpedb, g, ldb,
                            ldd, pred, r, stb, std, subd, words)
from harness.guest.images import build_image
from harness.guest import e2k_dirtier as e

MIB = 1024 * 1024
LISTING = Path(__file__).resolve().parent.parent / "images" / "e2k" / "dirtier.py"


# -- a reading of unpack_bundle (translate.c) ---------------------------------------

def _unpack(data: bytes, off: int = 0) -> dict:
    """Split the bundle at ``off`` the way ``unpack_bundle`` does (no CS1/ALES/AAS/CDS/PLS)."""
    def u32(o: int) -> int:
        return struct.unpack_from("<I", data, off + o)[0]

    hs = u32(0)
    pos = 4
    out: dict = {"hs": hs, "ss": None, "als": {}, "cs0": None, "ales25": False}
    if hs >> 12 & 1:                         # HS bit 12: SS
        out["ss"] = u32(pos)
        pos += 4
    for i in range(6):                       # HS bits 26..31: ALS0..5
        if hs >> (26 + i) & 1:
            out["als"][i] = u32(pos)
            pos += 4
    if hs >> 14 & 1:                         # HS bit 14: CS0
        out["cs0"] = u32(pos)
        pos += 4
    mdl = ((hs & 0xF) + 1) * 4               # HS bits 3..0
    assert not hs >> 15 & 1                  # no CS1 from this encoder
    if mdl == pos + 4:                       # ALES5/ALES2 syllable allocated
        out["ales25"] = True
        pos += 4
    assert mdl == pos, "middle size (HS.mdl) disagrees with the syllables present"
    assert hs >> 20 & 0x3F == 0              # no ALES0..5 present
    assert hs >> 16 & 0xF == 0               # no CDS/PLS
    gap = pos                                # no half-syllables
    length = ((hs >> 4 & 7) + 1) * 8         # HS bits 6..4
    p = length - 4
    assert not (p < gap and p != gap - 4), "no room for the middle part"
    lts = []
    while len(lts) < 4 and p >= gap:         # LTS0 is the last syllable
        lts.append(u32(p))
        p -= 4
    out["lts"] = lts
    out["length"] = length
    return out


def _literal(src2: int, lts: list[int]) -> int:
    """``get_literal``: 0xd8|i = LTS<i> sign-extended, 0xdc|i = LTS<i+1>:LTS<i>."""
    i = src2 & 3
    if src2 & 0x0C == 0x08:
        v = lts[i]
        return v - (1 << 32) if v >> 31 else v
    assert src2 & 0x0C == 0x0C and i < 3
    return lts[i + 1] << 32 | lts[i]


def _ibranch_target(pc: int, cs0: int) -> int:
    """``decode_cs0`` + ``gen_cs0``: pc + (sextract32(cs0, 0, 28) << 3)."""
    assert cs0 >> 28 == 0                    # ctpr 0, ctp_opc 0: IBRANCH
    d = cs0 & 0x0FFF_FFFF
    d = d - (1 << 28) if d >> 27 else d
    return pc + (d << 3)


# -- single bundles, spelled out bit by bit ------------------------------------------

def test_one_alu_op_bundle() -> None:
    out = bundle(addd(g(0), g(0), 1)).encode(0, {})
    # HS: ALS0 (bit 26); mdl = 2 syllables - 1 = 1; lng = 8 bytes / 8 - 1 = 0.
    # ALS (Alop.als): opc1 0x11 (OP_ADDD) <<24 | src1 %g0 0xe0 <<16 |
    # src2 imm4 1 = 0xc1 <<8 | dst %g0 0xe0.
    assert words(out) == [0x0400_0001, 0x11E0_C1E0]


def test_register_and_immediate_fields() -> None:
    # gen_reg_index: %gN = 0xe0|N, %rN = 0x80|N, %bN = N; IS_IMM5 src1 = 0xc0|v.
    als = words(bundle(subd(r(5), 31, b(7))).encode(0, {}))[1]
    assert als == (0x13 << 24) | (0xDF << 16) | (0x07 << 8) | 0x85


def test_branch_only_bundle_is_padded() -> None:
    prog = Program(origin=0x1_0000_0000)
    prog.label("here")
    prog.bundle(ct="here")
    out = prog.assemble()
    # HS: SS (bit 12) | CS0 (bit 14) | mdl = 3 - 1 | lng = 16/8 - 1; then SS
    # with ctcond type 1 ("always") in bits 8..5; CS0 disp 0; one padding
    # syllable that unpack_bundle reads as an unused LTS0.
    assert words(out) == [0x1000 | 0x4000 | 0x2 | 0x10, 1 << 5, 0, 0]
    u = _unpack(out)
    assert u["length"] == 16 and u["lts"] == [0]


def test_conditional_branch_fields() -> None:
    prog = Program()
    prog.label("top")
    prog.bundle(ct="top", if_pred=3)
    prog.bundle(ct="top", unless_pred=31)
    out = prog.assemble()
    # decode_ct_cond: SS[4:0] = psrc, SS[8:5] = type; gen_ct_cond: 2 = %predN, 3 = ~%predN.
    assert _unpack(out, 0)["ss"] == (2 << 5) | 3
    assert _unpack(out, 16)["ss"] == (3 << 5) | 31


def test_branch_displacement_both_ways() -> None:
    prog = Program(origin=0x1_0000_0000)
    prog.label("back")
    prog.bundle(addd(g(1), g(1), 1))             # 8 bytes
    prog.bundle(ct="fwd")                         # at +8, 16 bytes
    prog.bundle(ct="back")                        # at +24
    prog.org(0x1000)
    prog.label("fwd")
    prog.bundle(ct="back")                        # at +0x1000
    out = prog.assemble()
    base = prog.origin
    assert _ibranch_target(base + 8, _unpack(out, 8)["cs0"]) == base + 0x1000
    assert _ibranch_target(base + 24, _unpack(out, 24)["cs0"]) == base
    # Backwards: 28-bit two's complement of -24/8 = -3.
    assert _unpack(out, 24)["cs0"] == (1 << 28) - 3
    assert _ibranch_target(base + 0x1000, _unpack(out, 0x1000)["cs0"]) == base


def test_64bit_literal_is_lts1_lts0_at_the_end() -> None:
    out = bundle(addd(g(0), 0, 0x1_0000_0040)).encode(0, {})
    u = _unpack(out)
    # HS + ALS0 + 2 LTS = 16 bytes: mdl 1, lng 1, LTS0 (low word) last.
    assert u["hs"] == 0x0400_0011 and u["length"] == 16
    assert words(out)[2:] == [0x1, 0x40]
    src2 = u["als"][0] >> 8 & 0xFF
    assert src2 == 0xDC                          # IS_LIT64, index 0
    assert _literal(src2, u["lts"]) == 0x1_0000_0040


def test_32bit_literal_sign_extension_choice() -> None:
    # A lit32 is sign-extended to 64 bits (get_literal), so 0xffffffff must be wide.
    assert Lit.of(-1) == Lit(2**64 - 1, wide=False)
    assert Lit.of(0x7FFF_FFFF).wide is False
    assert Lit.of(0x8000_0000).wide is True
    assert Lit.of(0xFFFF_FFFF).wide is True
    out = bundle(addd(g(2), g(2), -8)).encode(0, {})
    u = _unpack(out)
    src2 = u["als"][0] >> 8 & 0xFF
    assert src2 == 0xD8 and _literal(src2, u["lts"]) == -8


def test_four_literal_slots_pad_in_the_middle() -> None:
    # HS + 4 ALS + 4 LTS (one wide, two narrow literals) is 9 syllables, and
    # all four LTS slots are used, so the pad is an allocated ALES2/5
    # syllable after the ALS (HS.mdl = 6 syllables - 1).
    bnd = bundle(addd(g(0), 0, 0x1_2345_6789), addd(g(1), 0, 0x100), addd(g(2), 0, 0x200),
                 addd(g(3), g(3), 1))
    out = bnd.encode(0, {})
    u = _unpack(out)
    assert u["ales25"] and len(u["lts"]) == 4 and u["length"] == 40
    assert u["hs"] & 0xF == 5 and words(out)[5] == 0
    got = [_literal(u["als"][c] >> 8 & 0xFF, u["lts"]) for c in (0, 1, 2)]
    assert got == [0x1_2345_6789, 0x100, 0x200]


def test_shared_literal_takes_one_slot() -> None:
    u = _unpack(bundle(addd(g(0), g(0), 0x1000), addd(g(1), g(1), 0x1000)).encode(0, {}))
    assert u["lts"][0] == 0x1000
    assert u["als"][0] >> 8 & 0xFF == u["als"][1] >> 8 & 0xFF == 0xD8


def test_memory_and_compare_fields() -> None:
    u = _unpack(bundle(ldb(g(7), g(5), 0), stb(g(5), 0, g(7)), cmpedb(pred(0), g(6), 0),
                       ldd(g(1), g(0), 8)).encode(0, {}))
    # alops.inc: OP_LDB 0x64 / OP_LDD 0x67 on channels 0,2,3,5; OP_STB 0x24
    # on 2,5 (stored value in src4, the low byte); cmpedb: opc1 0x21, opc_cmp
    # 2 in bits 7..5, dst_preg in bits 4..0, channels 0,1,3,4.
    # validate_bundle forbids a store on 2 with a load on 3, so with the
    # store on 2 the second load can only take channel 5.
    assert u["als"] == {
        0: 0x64E5_C0E7,        # ldb [%g5 + 0] -> %g7
        1: 0x21E6_C040,        # cmpedb %g6, 0 -> %pred0
        2: 0x24E5_C0E7,        # stb %g7 -> [%g5 + 0]
        5: 0x67E0_C8E1,        # ldd [%g0 + 8] -> %g1
    }
    assert u["hs"] >> 26 == 0b100111


def test_compare_below() -> None:
    # alops.inc OP_CMPBDB: opc1 0x21, opc_cmp 1 (gen_cmpbdb: setcond LTU).
    als = _unpack(bundle(cmpbdb(pred(2), g(1), g(2))).encode(0, {}))["als"]
    assert als == {0: 0x21E1_E222}


def test_pinned_channel() -> None:
    u = _unpack(bundle(addd(g(0), g(0), 1).on(4)).encode(0, {}))
    assert u["hs"] >> 26 == 1 << 4 and list(u["als"]) == [4]


# -- impossible programs -----------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: bundle(*[addd(g(i), g(i), 1) for i in range(7)]),                 # 7 ops
    lambda: bundle(std(g(0), 0, g(1)), std(g(0), 8, g(1)), std(g(0), 16, g(1))),  # 2 store chans
    lambda: bundle(std(g(0), 0, g(1)), ldd(g(2), g(0), 0), ldd(g(3), g(0), 8),
                   ldd(g(4), g(0), 24)),                 # store mirrors a load either way
    lambda: bundle(*[cmpedb(pred(i), g(i), 0) for i in range(5)]),            # 4 cmp chans
    lambda: bundle(addd(g(0), 0, 1 << 40), addd(g(1), 0, 2 << 40),
                   addd(g(2), 0, 3 << 40)),              # 6 LTS syllables
    lambda: stb(g(0), 0, g(1)).on(0),
    lambda: addd(g(0), 32, g(1)),                        # src1 imm5 is 0..31
    lambda: addd(g(0), g(1), 1 << 64),
    lambda: g(32), lambda: r(64), lambda: b(128), lambda: pred(32),
    lambda: cmpedb(g(0), g(1), 0),                       # compare into a register
    lambda: bundle(ct="x", if_pred=1, unless_pred=2),
])
def test_impossible_bundles_raise(make) -> None:
    with pytest.raises(AsmError):
        make()


def test_program_errors() -> None:
    p = Program()
    p.bundle(ct="nowhere")
    with pytest.raises(AsmError, match="undefined label"):
        p.assemble()
    p = Program()
    p.label("a")
    p.label("a")
    with pytest.raises(AsmError, match="twice"):
        p.assemble()
    p = Program()
    p.data(b"abc")
    p.bundle()
    with pytest.raises(AsmError, match="aligned"):
        p.assemble()
    p = Program()
    p.bundle()
    p.org(4)
    with pytest.raises(AsmError, match="org"):
        p.assemble()
    with pytest.raises(AsmError):
        Program(origin=4)


# -- the firmware image --------------------------------------------------------------

@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_listing_and_host_agree_on_layout() -> None:
    fw = runpy.run_path(str(LISTING), run_name="test")
    assert fw["PARAM_OFFSET"] == e.PARAM_OFFSET
    assert fw["PARAM_FORMAT"] == e.PARAM_FORMAT
    assert fw["LOAD_ADDR"] == e.LOAD_ADDR == 0x1_0000_0000   # E2K_BIOS_AREA_BASE
    assert fw["DEFAULT_MARKER_ADDR"] == e.DEFAULT_MARKER_ADDR
    assert (fw["DEFAULT_REGION_BASE"], fw["DEFAULT_REGION_PAGES"]) == \
        (e.DEFAULT_REGION_BASE, e.DEFAULT_REGION_PAGES)


def test_image_decodes_bundle_by_bundle(cache: Path) -> None:
    image = build_image(e.IMAGE_NAME).read_bytes()
    assert len(image) == 64 * 1024
    # Reset entry: an unconditional ibranch over the parameter block.
    entry = _unpack(image, 0)
    assert entry["ss"] == 1 << 5 and not entry["als"]
    code = _ibranch_target(e.LOAD_ADDR, entry["cs0"]) - e.LOAD_ADDR
    assert code == e.PARAM_OFFSET + 0x40
    # The code runs from there to the first all-zero syllable pair; every
    # bundle decodes and every branch lands on a bundle start.
    starts, targets, off = set(), set(), code
    while image[off:off + 8] != bytes(8):
        u = _unpack(image, off)
        starts.add(off)
        if u["cs0"] is not None:
            targets.add(_ibranch_target(e.LOAD_ADDR + off, u["cs0"]) - e.LOAD_ADDR)
        off += u["length"]
    assert targets and targets <= starts
    assert struct.unpack_from(e.PARAM_FORMAT, image, e.PARAM_OFFSET) == (
        b"MHPB", 1, e.DEFAULT_REGION_BASE, e.DEFAULT_REGION_PAGES, e.DEFAULT_MARKER_ADDR)
    # The reset bundle literally holds "addd 0, lit64 &params" at the code start.
    first = _unpack(image, code)
    assert _literal(first["als"][0] >> 8 & 0xFF, first["lts"]) == e.LOAD_ADDR + e.PARAM_OFFSET


def test_recipe_key_covers_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    key = images.recipe_key("dirtier-e2k")
    recipe = images.RECIPES["dirtier-e2k"]
    assert recipe.key_sources == ("e2kasm.py",) and recipe.tools == ()
    monkeypatch.setitem(images.RECIPES, "dirtier-e2k",
                        dataclasses.replace(recipe, key_sources=()))
    assert images.recipe_key("dirtier-e2k") != key


def test_make_firmware_patches_params(cache: Path) -> None:
    fw = e.make_firmware(cache / "cell" / "fw.bios", 0x400000, 8 * MIB, marker_addr=0x2000)
    image = build_image(e.IMAGE_NAME).read_bytes()
    out = fw.read_bytes()
    off, size = e.PARAM_OFFSET, struct.calcsize(e.PARAM_FORMAT)
    assert len(out) == len(image)
    assert struct.unpack_from("<4sIQQQ", out, off) == (b"MHPB", 1, 0x400000, 2048, 0x2000)
    assert e.read_params(fw) == (0x400000, 2048, 0x2000)
    assert out[:off] == image[:off] and out[off + size:] == image[off + size:]


@pytest.mark.parametrize("kw", [
    dict(region_base=0x200001, region_size=MIB),             # unaligned base
    dict(region_base=0x200000, region_size=MIB + 1),         # not whole pages
    dict(region_base=0x200000, region_size=MIB, marker_addr=0x1004),   # marker unaligned
    dict(region_base=0x200000, region_size=127 * MIB),       # past -m 128M
    dict(region_base=0x200000, region_size=MIB, marker_addr=0x200ff8),  # marker in region
    dict(region_base=0x200000, region_size=MIB, marker_addr=0x1ffff8),  # marker overlaps start
    dict(region_base=0x200000, region_size=MIB, marker_addr=128 * MIB),  # marker past RAM
    dict(region_base=0x7000_0000, region_size=0x2000_0000, ram_size=4 << 30),  # above 2 GiB
])
def test_make_firmware_rejects(cache: Path, kw: dict) -> None:
    with pytest.raises(ValueError):
        e.make_firmware(cache / "fw.bios", **kw)


def test_make_firmware_marker_right_below_region(cache: Path) -> None:
    fw = e.make_firmware(cache / "fw.bios", 0x200000, MIB, marker_addr=0x200000 - 16)
    assert e.read_params(fw)[2] == 0x1FFFF0


def test_read_marker() -> None:
    ram = bytearray(0x3000)
    struct.pack_into("<QQ", ram, 0x1000, 1, 0x1_0000_0002)      # boots, passes
    assert e.read_marker(ram, 0x1000) == (1, 0x1_0000_0002)
    assert e.read_marker(bytes(ram)) == (1, 0x1_0000_0002)      # default marker 0x1000
    assert e.read_marker(np.frombuffer(bytes(ram), dtype=np.uint8), 0x1000)[0] == 1
    with pytest.raises(ValueError):
        e.read_marker(ram, 0x3000 - 8)


def test_region_invariant_is_the_x86_one() -> None:
    # Three pages of a dirtier mid-pass: 5, 4, 4.
    ram = bytearray(0x5000)
    ram[0x2000], ram[0x3000], ram[0x4000] = 5, 4, 4
    res = e.check_invariant(e.read_region_bytes(ram, 0x2000, 3))
    assert res.ok and res.boundary == 1 and res.value_high == 5
