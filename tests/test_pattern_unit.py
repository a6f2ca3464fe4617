"""The pattern workload's host side: generation, loader arguments, the check."""
from __future__ import annotations

import mmap

from harness.guest.pattern import check_pattern, loader_args, make_pattern, pattern_bytes


def test_pattern_is_seeded_and_stable(tmp_path):
    a = make_pattern(tmp_path / "a", 4096, 5).read_bytes()
    assert a == pattern_bytes(4096, 5).tobytes()
    assert a != pattern_bytes(4096, 6).tobytes()
    assert pattern_bytes(8, 5).tobytes() == a[:8]  # a prefix of a longer pattern


def test_loader_args(tmp_path):
    assert loader_args(tmp_path / "p", 64 << 20) == [
        "-device", f"loader,file={tmp_path / 'p'},addr=0x4000000,force-raw=on"]


def test_check_finds_first_differing_address(tmp_path):
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(0x3000) + pattern_bytes(0x2000, 9).tobytes() + bytes(0x1000))
    ok = check_pattern(ram, 0x3000, 0x2000, 9)
    assert ok.passed and ok.name == "pattern"
    with open(ram, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0x3000 + 0x1234] ^= 0xFF
        m[0x3000 + 0x1800] ^= 0x01
    bad = check_pattern(ram, 0x3000, 0x2000, 9, gpa=0x100003000)
    assert not bad.passed
    assert bad.figures["differing_bytes"] == 2
    assert bad.summary == "2 of 8192 pattern bytes differ, first at guest-physical 0x100004234"
    assert not check_pattern(ram, 0x3000, 0x2000, 10).passed
    assert not check_pattern(ram, 0x5000, 0x2000, 9).passed  # runs past the file end
