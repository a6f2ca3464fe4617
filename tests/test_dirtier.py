"""Unit tests for harness.guest.dirtier (no QEMU needed)."""
from __future__ import annotations

import mmap
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from harness.guest.images import build_image
from harness.guest import dirtier as d
from harness.guest.dirtier import BANNER, HeartbeatParser, check_invariant

MIB = 1024 * 1024


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) not installed")
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


# -- make_disk ---------------------------------------------------------------

def test_make_disk_patches_params(cache: Path) -> None:
    disk = d.make_disk(cache / "cell" / "disk.img", 0x400000, 8 * MIB)
    image = build_image(d.IMAGE_NAME).read_bytes()
    out = disk.read_bytes()
    assert len(out) == len(image) == MIB
    off = d.PARAM_OFFSET
    assert struct.unpack_from("<4sII", out, off) == (b"MHPB", 0x400000, 2048)
    assert d.read_params(disk) == (0x400000, 2048)
    # Nothing else changed.
    assert out[:off] == image[:off] and out[off + 12:] == image[off + 12:]
    # The cached image keeps the assembled defaults.
    assert struct.unpack_from("<4sII", image, off) == (
        b"MHPB", d.DEFAULT_REGION_BASE, d.DEFAULT_REGION_PAGES)
    assert not list((cache / "cell").glob("disk.img.*")), "temp file left behind"


@pytest.mark.parametrize("base,size,msg", [
    (0x200001, MIB, "not aligned"),
    (0x200800, MIB, "not aligned"),
    (0x200000, MIB + 1, "not a positive multiple"),
    (0x200000, 0, "not a positive multiple"),
    (0x200000, -4096, "not a positive multiple"),
    (0x7000, MIB, "below 1 MiB"),
    (0xFFF00000, 2 * MIB, "above 4 GiB"),
])
def test_make_disk_rejects(cache: Path, base: int, size: int, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        d.make_disk(cache / "disk.img", base, size)
    assert not (cache / "disk.img").exists()


def test_make_disk_checks_ram_size(cache: Path) -> None:
    with pytest.raises(ValueError, match="beyond guest RAM"):
        d.make_disk(cache / "disk.img", 0x200000, 255 * MIB, ram_size=256 * MIB)
    d.make_disk(cache / "disk.img", 0x200000, 254 * MIB, ram_size=256 * MIB)


# -- HeartbeatParser -----------------------------------------------------------

def beats(first: int, n: int) -> bytes:
    return bytes((first + i) & 0xFF for i in range(n))


def test_parser_ignores_noise_before_banner() -> None:
    p = HeartbeatParser()
    p.feed(b"SeaBIOS noise \x01\x02M", 1.0)
    assert not p.banner_seen and p.heartbeats == 0
    p.feed(BANNER + beats(1, 3), 2.0)
    assert p.banner_seen and p.banner_count == 1 and p.restarts == 0
    assert p.heartbeats == 3 and p.last_value == 3
    assert p.first_heartbeat_t == 2.0 and p.last_heartbeat_t == 2.0
    assert p.sequence_errors == 0
    assert p.bytes_ignored == len(b"SeaBIOS noise \x01\x02M")


@pytest.mark.parametrize("cut", range(1, len(BANNER) + 1))
def test_parser_banner_split_anywhere(cut: int) -> None:
    stream = b"xx" + BANNER + beats(1, 5)
    split = 2 + cut
    p = HeartbeatParser()
    p.feed(stream[:split], 1.0)
    assert p.heartbeats == 0
    assert p.banner_seen == (cut == len(BANNER))
    p.feed(stream[split:], 2.0)
    assert p.banner_count == 1 and p.heartbeats == 5 and p.last_value == 5
    assert p.first_heartbeat_t == 2.0


def test_parser_timestamps_and_stalls() -> None:
    p = HeartbeatParser(stall_threshold=0.5)
    p.feed(BANNER, 0.0)
    p.feed(beats(1, 2), 1.0)
    p.feed(beats(3, 1), 1.1)
    p.feed(beats(4, 4), 3.0)            # a 1.9 s stall, e.g. a switchover
    assert p.heartbeats == 7 and p.last_value == 7
    assert p.first_heartbeat_t == 1.0 and p.last_heartbeat_t == 3.0
    assert p.max_gap == pytest.approx(1.9) and p.max_gap_end == 3.0
    assert len(p.stalls) == 1
    s = p.stalls[0]
    assert (s.start, s.end, s.value_before, s.value_after) == (1.1, 3.0, 3, 4)
    assert s.length == pytest.approx(1.9)
    assert p.rate() == pytest.approx(6 / 2.0)


@pytest.mark.parametrize("cut", [0, 1, 4, 10, 11])
def test_parser_restart_banner(cut: int) -> None:
    """A second banner is a restart; its bytes must not count as heartbeats."""
    p = HeartbeatParser(stall_threshold=0.01)
    p.feed(BANNER + beats(1, 40), 1.0)
    tail = BANNER + beats(1, 2)
    p.feed(tail[:cut], 2.0)
    p.feed(tail[cut:], 3.0)
    assert p.banner_count == 2 and p.restarts == 1
    assert p.heartbeats == 42
    assert p.last_value == 2 and p.last_heartbeat_t == 3.0
    assert p.sequence_errors == 0       # restart resets the expected value to 1
    assert p.banner_times == [1.0, 2.0 if cut == 11 else 3.0]
    # Only the real gap (1.0 -> 3.0) is a stall, not one ending at a banner byte.
    assert [(s.start, s.end) for s in p.stalls] == [(1.0, 3.0)]


def test_parser_heartbeat_values_that_look_like_banner() -> None:
    """Heartbeat 0x4D is 'M'; wrapping through all values must not confuse it."""
    stream = BANNER + beats(1, 1000)
    one = HeartbeatParser()
    one.feed(stream, 5.0)
    bytewise = HeartbeatParser()
    for i in range(len(stream)):
        bytewise.feed(stream[i:i + 1], 5.0)
    for p in (one, bytewise):
        assert p.heartbeats == 1000 and p.banner_count == 1
        assert p.sequence_errors == 0 and p.last_value == 1000 & 0xFF
    # "MH" then not "D": both bytes are heartbeats (the sequence check flags them).
    p = HeartbeatParser()
    p.feed(BANNER + b"MHX", 1.0)
    assert p.heartbeats == 3 and p.last_value == ord("X") and p.banner_count == 1


def test_parser_counts_sequence_errors() -> None:
    p = HeartbeatParser()
    p.feed(BANNER + bytes([1, 2, 3, 5, 6]), 1.0)      # 4 lost
    p.feed(bytes([8]), 2.0)                          # 7 lost at a chunk edge
    assert p.heartbeats == 6 and p.sequence_errors == 2
    p.feed(bytes([9, 10, 0x4D]), 3.0)                # per-byte path: 'M' present
    assert p.sequence_errors == 3


def test_parser_mid_stream_destination() -> None:
    p = HeartbeatParser(expect_banner=False)
    p.feed(beats(200, 100), 1.0)
    assert p.heartbeats == 100 and not p.banner_seen and p.restarts == 0
    assert p.sequence_errors == 0 and p.last_value == (299 & 0xFF)
    p.feed(BANNER, 2.0)
    assert p.restarts == 1 and p.heartbeats == 100


def test_parser_many_heartbeats_is_cheap() -> None:
    p = HeartbeatParser(stall_threshold=0.1)
    p.feed(BANNER, 0.0)
    for i in range(2000):                             # ~2 minutes of 1000/s in 60-byte reads
        p.feed(beats(1 + i * 60, 60), i * 0.06)
    assert p.heartbeats == 120000 and p.sequence_errors == 0
    assert len(p.stalls) == 0


# -- check_invariant -----------------------------------------------------------

def test_invariant_ok_cases() -> None:
    r = check_invariant([5, 5, 5, 4, 4])
    assert r.ok and (r.value_high, r.value_low, r.boundary) == (5, 4, 3)
    assert r.first_bad_page is None and r.bad_pages == 0 and r.pages == 5
    r = check_invariant([7] * 10)
    assert r.ok and (r.value_high, r.value_low, r.boundary) == (7, 6, 10)
    r = check_invariant([0, 0, 255, 255, 255])       # wrap
    assert r.ok and (r.value_high, r.value_low, r.boundary) == (0, 255, 2)
    r = check_invariant(np.array([0, 255], dtype=np.uint8))
    assert r.ok and r.boundary == 1
    r = check_invariant(bytes([1, 0, 0]))
    assert r.ok and (r.value_high, r.boundary) == (1, 1)
    r = check_invariant([3])
    assert r.ok


def test_invariant_stale_page() -> None:
    vals = [9] * 50 + [8] * 50
    vals[70] = 7                                      # two behind: lost update
    r = check_invariant(vals)
    assert not r.ok and r.first_bad_page == 70 and r.bad_pages == 1
    assert (r.value_high, r.value_low, r.boundary) == (9, 8, 50)
    assert "page 70" in r.reason and "stale" in r.reason


def test_invariant_first_page_stale() -> None:
    r = check_invariant([3, 5, 5, 5, 4, 4])
    assert not r.ok and r.first_bad_page == 0 and r.value_high == 5


def test_invariant_page_ahead_with_wrap() -> None:
    r = check_invariant([255, 255, 0, 254, 254])
    assert not r.ok and r.first_bad_page == 2 and "ahead" in r.reason


def test_invariant_two_boundaries() -> None:
    r = check_invariant([5, 5, 4, 4, 5, 5, 4, 4])
    assert not r.ok and r.first_bad_page == 4 and r.bad_pages == 2
    assert "second boundary" in r.reason
    # A high-part page one behind is also a second boundary.
    r = check_invariant([0] * 10 + [255] * 11)
    assert r.ok
    r = check_invariant([0, 0, 255, 0, 255, 255])
    assert not r.ok and r.first_bad_page == 3


def test_invariant_zero_region_is_ok_and_all_zero_is_detectable() -> None:
    # An all-zero destination is "ok" (0 passes); callers must also check
    # heartbeat_agrees() against the source's serial.
    r = check_invariant(np.zeros(100, dtype=np.uint8))
    assert r.ok and r.value_high == 0
    assert not d.heartbeat_agrees(r, 57)


def test_invariant_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        check_invariant([])
    with pytest.raises(ValueError):
        check_invariant([1, 256])


def test_heartbeat_agrees() -> None:
    mid = check_invariant([11, 11, 10])
    assert d.heartbeat_agrees(mid, 10) and not d.heartbeat_agrees(mid, 11)
    between = check_invariant([10, 10, 10])
    assert d.heartbeat_agrees(between, 10)            # pass 10 printed
    assert d.heartbeat_agrees(between, 9)             # pass 10 done, not yet printed
    assert not d.heartbeat_agrees(between, 8)
    assert d.heartbeat_agrees(check_invariant([0, 255]), 255)
    assert not d.heartbeat_agrees(check_invariant([1, 3]), 2)


# -- read_region_bytes ---------------------------------------------------------

def test_read_region_bytes_file_and_buffer(tmp_path: Path) -> None:
    ram = bytearray(8 * MIB)
    base = 0x200000 + 0x1000                           # not allocation-granularity aligned
    pages = 300
    for p in range(pages):
        ram[base + p * d.PAGE] = p & 0xFF
        ram[base + p * d.PAGE + 1] = 0xEE              # only the first byte is read
    f = tmp_path / "ram"
    f.write_bytes(ram)
    want = np.arange(pages, dtype=np.uint64).astype(np.uint8)
    got = d.read_region_bytes(f, base, pages)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert np.array_equal(d.read_region_bytes(str(f), base, pages), want)
    assert np.array_equal(d.read_region_bytes(bytes(ram), base, pages), want)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert np.array_equal(d.read_region_bytes(mm, base, pages), want)
    # The returned array owns its memory (the mapping is gone).
    assert got.flags.owndata


def test_read_region_bytes_too_short(tmp_path: Path) -> None:
    f = tmp_path / "ram"
    f.write_bytes(bytes(MIB))
    with pytest.raises(ValueError, match="region needs"):
        d.read_region_bytes(f, MIB - d.PAGE, 2)
    with pytest.raises(ValueError, match="region needs"):
        d.read_region_bytes(bytes(MIB), MIB - d.PAGE, 2)
    assert d.read_region_bytes(f, MIB - d.PAGE, 1).tolist() == [0]
