"""The host side of the Linux workload, without QEMU: the agent's protocol,
the records' formats (checked against the agent's own C code), the network
peer's stream check, the disk check, the RAM record check and page owners,
and the checks' verdicts."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.checks import linux as lc
from harness.checks.ram import x86_layout
from harness.guest import linux_records as rec
from harness.guest.linux_disk import check_blocks, expected_seq
from harness.guest.linux_net import _Conn, analyse
from harness.guest.linux_options import LinuxOptions
from harness.guest.linux_proto import AgentStream, ConsoleWatch
from harness.guest.linux_ram import check_records, differing_pages, owner_table
from harness.cell import WorkloadSpec
from harness.units import MiB, PAGE

AGENT = Path(__file__).resolve().parent.parent / "images" / "linux" / "agent"


def _hb(seq: int, mono_ms: int = 0) -> bytes:
    return f"MH HB {seq} {mono_ms * 1_000_000} 0 1 0 5 7\n".encode()


# --- the protocol -------------------------------------------------------------

def test_stream_counts_heartbeats_across_qemus() -> None:
    s = AgentStream()
    s.feed(0, b"[ 1.0] kernel noise\nMH HELLO v=1 boot=00000000000000aa port=virtio mem=4096\n",
           1.0)
    s.feed(0, b"MH READY uptime_ms=10\n" + _hb(1, 10) + _hb(2, 20) + b"MH HB 3 30", 1.1)
    # The source's last line is finished by the destination's first bytes.
    s.feed(1, b"000000 0 1 0 5 7\n" + _hb(4, 40), 2.0)
    boot = s.boot
    assert boot is not None and boot.boot_id == "00000000000000aa" and boot.t_ready == 1.1
    assert boot.beats == 4 and boot.lost == 0 and boot.duplicated == 0
    assert s.carried_partial == 1
    before, after = s.switchover(0, 1)
    # Heartbeat 3, begun by the source and finished by the destination's
    # bytes, is the destination's: it delivered the line.
    assert (before.seq, after.seq) == (2, 3)
    assert boot.max_gap is not None and boot.max_gap[0] == pytest.approx(0.9)


def test_stream_sees_lost_and_repeated_heartbeats_and_reboots() -> None:
    s = AgentStream()
    s.feed(0, b"MH HELLO boot=1\n" + _hb(1) + _hb(2) + _hb(2) + _hb(5), 1.0)
    assert (s.boot.lost, s.boot.duplicated) == (2, 1)
    s.feed(0, b"MH ERR mem index=3 vaddr=0x1 paddr=0x2000 word=2 expected=0x1 observed=0x2\n"
              b"MH VERDICT boot=1 mem=fail mem_errors=1\nMH BYE reboot\n", 1.2)
    s.feed(0, b"MH HELLO boot=2\nMH DISKSCAN blocks=8 max_seq=5 mismatches=0\n" + _hb(1), 2.0)
    assert [b.boot_id for b in s.boots] == ["1", "2"]
    first = s.boots[0]
    assert first.errors[0].startswith("mem index=3") and first.bye == "reboot"
    assert first.verdicts[0][1]["mem"] == "fail"
    assert s.boot.diskscan == {"blocks": "8", "max_seq": "5", "mismatches": "0"}
    assert s.boot.beats == 1 and s.boot.lost == 0


def test_stream_reads_the_map_and_iomem() -> None:
    s = AgentStream()
    s.feed(0, b"MH HELLO boot=ab mem=12288\nMH IOMEM 0x1000000 0x1e01d31 Kernel code\n"
              b"MH MAP 0x7f0000000000 0x5000 2\nMH MAP 0x7f0000002000 0x9000 1\n"
              b"MH MAPEND runs=2 pages=3 unknown=0\n", 1.0)
    b = s.boot
    assert b.iomem == [(0x1000000, 0x1E01D31, "Kernel code")]
    assert b.agent_ranges() == [(0x5000, 0x7000), (0x9000, 0xA000)] and b.agent_pages == 3


def test_console_watch_panic_and_tail() -> None:
    c = ConsoleWatch()
    c.feed(b"[ 1.0] booting\r\n[ 2.0] Kernel panic - not syncing: Requested init /x failed (e", 1.0)
    assert c.panic is None
    c.feed(b"rror -2).\r\n", 2.0)
    assert c.panic == "Requested init /x failed (error -2)." and c.t_panic == 2.0
    assert "booting" in c.tail_text()


# --- record formats, against the agent's C ------------------------------------

@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_python_hash_matches_the_agent(tmp_path: Path) -> None:
    main = tmp_path / "t.c"
    main.write_text('#include "agent.h"\n#include <stdio.h>\n'
                    "struct config cfg; uint64_t boot_id;\n"
                    "int main(void) { uint64_t w[3] = {1, 2, 0xffffffffffffffffull};\n"
                    ' printf("%llu %llu\\n", (unsigned long long)mix64(12345),'
                    " (unsigned long long)checksum64(w, 3, 99)); return 0; }\n")
    exe = tmp_path / "t"
    subprocess.run(["gcc", "-O1", "-pthread", f"-I{AGENT}", str(main), str(AGENT / "util.c"),
                    "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert int(out[0]) == rec.mix64(12345)
    assert int(out[1]) == rec.checksum64([1, 2, (1 << 64) - 1], 99)
    rows = np.array([[1, 2, (1 << 64) - 1]], dtype=np.uint64)
    assert int(rec.checksum_rows(rows, 99)[0]) == int(out[1])


# --- network stream -----------------------------------------------------------

def _records(boot: int, seqs: list[int]) -> bytes:
    return b"".join(rec.net_record(boot, s) for s in seqs)


def test_stream_across_two_connections_is_intact() -> None:
    data = _records(0xAB, list(range(1, 101)))
    cut = 40 * 64 + 17                       # mid-record
    rep = analyse([_Conn(0, [(1.0, data[:cut])]), _Conn(1, [(1.4, data[cut:])])])
    assert (rep.records, rep.lost, rep.duplicated, rep.corrupt, rep.trailing_bytes) == \
        (100, 0, 0, 0, 0)
    assert rep.switchover_gap_ms == pytest.approx(400)
    assert rep.streams == {"000000ab": (1, 100, 100)}


def test_stream_problems_are_counted() -> None:
    data = bytearray(_records(0xAB, [1, 2, 3, 3, 6]) + _records(0xCD, [1, 2]))
    data[64 + 30] ^= 0xFF                    # record 2 corrupt
    rep = analyse([_Conn(0, [(1.0, bytes(data) + b"\x01\x02")])])
    # 1, [2 corrupt], 3 (so 2 counts as lost too), 3 again, 6 (4 and 5 lost)
    assert (rep.corrupt, rep.duplicated, rep.lost, rep.trailing_bytes) == (1, 1, 3, 2)
    assert rep.streams == {"000000ab": (1, 6, 3), "000000cd": (1, 2, 2)}


# --- disk ---------------------------------------------------------------------

def test_expected_seq_rule() -> None:
    assert expected_seq(3, 0, 8) == 0
    assert expected_seq(3, 2, 8) == 0          # not written yet
    assert expected_seq(3, 3, 8) == 3
    assert expected_seq(3, 12, 8) == 11
    assert expected_seq(0, 8, 8) == 8
    assert expected_seq(0, 7, 8) == 0


def test_disk_blocks_lost_torn_and_foreign() -> None:
    n, acked = 16, 20
    img = bytearray(n * 4096)
    for s in range(1, acked + 1):
        img[(s % n) * 4096:(s % n + 1) * 4096] = rec.disk_block(s, n)
    assert check_blocks(bytes(img), n, acked).mismatch_count == 0
    img[9 * 4096:10 * 4096] = bytes(4096)                   # lost first write
    img[10 * 4096 + 100] ^= 1                               # torn
    img[11 * 4096:11 * 4096 + 8] = struct.pack("<Q", 7)     # foreign
    rep = check_blocks(bytes(img), n, acked)
    found = {b: f for b, _, f in rep.mismatches}
    assert set(found) == {9, 10, 11}
    assert found[9] == "zeros" and found[10].startswith("torn") and found[11].startswith("foreign")


# --- RAM records and owners ---------------------------------------------------

def _ram_with_agent(tmp_path: Path, records: int,
                    gen_cursor: tuple[int, int]) -> tuple[Path, AgentStream]:
    """A 4 MiB RAM file with the agent's buffer on pages 0x100.., shuffled."""
    boot = 0x1234
    p, cursor = gen_cursor
    pages = records * 64 // PAGE
    gpas = [0x100000 + ((i * 7) % pages) * PAGE for i in range(pages)]  # scattered
    ram = bytearray(4 * MiB)
    for i in range(records):
        gen = p + 1 if i < cursor else p
        page, off = divmod(i * 64, PAGE)
        at = gpas[page] + off
        ram[at:at + 64] = rec.mem_record(boot, i, gen)
    path = tmp_path / "ram"
    path.write_bytes(bytes(ram))
    s = AgentStream()
    lines = [f"MH HELLO boot={boot:016x} mem={records * 64}",
             "MH IOMEM 0x300000 0x33ffff Kernel data"]
    lines += [f"MH MAP {0x7f0000000000 + k * PAGE:#x} {g:#x} 1" for k, g in enumerate(gpas)]
    lines.append(f"MH MAPEND runs={pages} pages={pages} unknown=0")
    s.feed(0, ("\n".join(lines) + "\n").encode(), 1.0)
    return path, s


def test_record_check_finds_a_corrupt_page(tmp_path: Path) -> None:
    path, s = _ram_with_agent(tmp_path, records=256, gen_cursor=(4, 100))
    layout = x86_layout(4 * MiB)
    rep = check_records(path, s.boot, layout)
    assert rep.ok and (rep.generation, rep.cursor, rep.bad) == (4, 100, 0)
    data = bytearray(path.read_bytes())
    page = s.boot.map_runs[2][1]
    data[page + 200] ^= 0x55                    # one byte in the third page
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    rep = check_records(bad, s.boot, layout)
    assert not rep.ok and rep.bad == 1 and rep.first_bad[0]["index"] == 2 * 64 + 3
    assert differing_pages(path, bad, layout) == [page]
    assert owner_table(s.boot).owner(page).startswith("agent buffer (records 128..191)")
    assert owner_table(s.boot).owner(0x300000) == "kernel image: data"
    assert owner_table(s.boot).owner(0x1000).startswith("below 1 MiB")


def test_record_check_allows_the_record_in_flight(tmp_path: Path) -> None:
    path, s = _ram_with_agent(tmp_path, records=128, gen_cursor=(2, 50))
    data = bytearray(path.read_bytes())
    # Record 50 half rewritten: its generation says 3, its data is still 2's.
    at = s.boot.map_runs[0][1] + 50 * 64
    data[at + 8:at + 16] = struct.pack("<Q", 3)
    path.write_bytes(bytes(data))
    rep = check_records(path, s.boot, x86_layout(4 * MiB))
    assert rep.ok and rep.in_flight == 1


# --- options ------------------------------------------------------------------

def test_linux_options_defaults_and_kernel_args() -> None:
    o = LinuxOptions.of(WorkloadSpec(kind="linux", region_size=16 * MiB, warmup_passes=1,
                                     options=(("net", False), ("reboot", False))))
    assert (o.memory, o.dirty_rate, o.heartbeat_ms, o.net, o.reboot, o.boot) == \
        (16 * MiB, 64, 10, False, False, "pvh")
    args = o.kernel_args("10.0.2.100:5000")
    assert f"mh.mem={16 * MiB}" in args and not any(a.startswith("mh.net=") for a in args)


# --- verdicts -----------------------------------------------------------------

def test_guest_data_quotes_the_agents_mismatch() -> None:
    v = lc.AgentVerdict({"mem": "fail", "mem_records": "10", "mem_errors": "1",
                         "mem_bad_records": "1"},
                        ("mem when=verify index=3 vaddr=0x7f paddr=0x2000 expected=0x1 "
                         "observed=0x2",))
    c = lc.check_guest_data(v)
    assert not c.passed and "paddr=0x2000" in c.summary and "1 of 10" in c.summary
    assert lc.check_guest_data(lc.AgentVerdict({"mem": "ok", "mem_records": "10"})).passed
    assert not lc.check_guest_data(lc.AgentVerdict(None)).passed


def test_guest_downtime_verdicts() -> None:
    base = dict(period_ms=10.0, heartbeats=100, lost=0, duplicated=0, held_ms=1000.0,
                qemu_downtime_ms=40.0, limit_ms=300.0, tolerance_ms=250.0)
    ok = lc.check_guest_downtime(lc.HeartbeatEvidence(
        src_last=(50, 10.0, 5_000_000_000), dst_first=(51, 11.1, 5_010_000_000), **base))
    assert ok.passed and ok.figures["gap_ms"] == pytest.approx(100)
    gap = lc.check_guest_downtime(lc.HeartbeatEvidence(
        src_last=(50, 10.0, 0), dst_first=(51, 12.0, 0), **base))
    assert not gap.passed and "silent 1000 ms" in gap.summary
    lost = lc.check_guest_downtime(lc.HeartbeatEvidence(
        src_last=(50, 10.0, 0), dst_first=(53, 11.0, 0), **base))
    assert not lost.passed and "50 -> 53" in lost.summary


def test_disk_net_clock_reboot_verdicts() -> None:
    good = {"blocks": 8, "acked": 5, "intact": 5, "zero": 3, "mismatches": 0,
            "first_mismatches": [], "qemu_img_check": "No errors", "image_consistent": True}
    v = lc.AgentVerdict({"disk": "ok", "net": "ok", "clock": "ok", "mem": "ok"})
    assert lc.check_disk(good, v).passed
    bad = dict(good, mismatches=1, first_mismatches=[{"block": 3, "expected_seq": 3,
                                                      "found": "zeros"}])
    c = lc.check_disk(bad, v)
    assert not c.passed and "block 3: expected write 3, found zeros" in c.summary
    report = {"records": 10, "lost": 0, "duplicated": 0, "corrupt": 0, "trailing_bytes": 0,
              "switchover_gap_ms": 900.0, "switchover_stall_ms": 40.0, "problems": []}
    assert lc.check_net(report, v, switched=True).passed
    assert "stall 40 ms" in lc.check_net(report, v, switched=True).summary
    assert not lc.check_net(dict(report, lost=2), v, switched=True).passed
    assert not lc.check_net(dict(report, switchover_gap_ms=None), v, switched=True).passed
    assert not lc.check_clock(lc.AgentVerdict({"clock": "fail", "mono_back": "1"}), 1.0,
                              2.0).passed
    assert lc.check_clock(v, 12.0, 300.0).passed
    r = lc.check_reboot(lc.RebootEvidence(requested=True, new_boot="b", old_boot="a",
                                          ready_s=4.0, diskscan={"max_seq": "9",
                                                                 "mismatches": "0"},
                                          acked_before=9, verdict=v))
    assert r.passed
    r = lc.check_reboot(lc.RebootEvidence(requested=True, new_boot="b", old_boot="a",
                                          ready_s=4.0, diskscan={"max_seq": "7",
                                                                 "mismatches": "0"},
                                          acked_before=9, verdict=v))
    assert not r.passed and "last write is 7" in r.summary
    assert not lc.check_reboot(lc.RebootEvidence(requested=True, old_boot="a",
                                                 timeout_s=30)).passed


# --- KVM probe ----------------------------------------------------------------

def _fake_qemu(tmp_path: Path, script: str) -> Path:
    exe = tmp_path / "fake-qemu"
    exe.write_text("#!/bin/sh\n" + script + "\n")
    exe.chmod(0o755)
    return exe


def test_kvm_probe_boots_or_names_the_problem(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cell import BuildSpec
    from harness.guest import linux_kvm

    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "cache"))
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    good = _fake_qemu(tmp_path, 'echo "[ 1.0] Run /init as init process"; sleep 30')
    assert linux_kvm.probe([str(good)], timeout=5) is None
    silent = _fake_qemu(tmp_path, "sleep 30")
    said = linux_kvm.probe([str(silent)], timeout=1)
    assert said is not None and "does not boot under this host's KVM" in said
    assert "no console output" in said
    # Asked once per host and build: the second answer comes from the cache.
    spec = BuildSpec("fake", str(silent))
    monkeypatch.setattr(linux_kvm, "PROBE_TIMEOUT", 1.0)
    calls = []
    real = linux_kvm.probe
    monkeypatch.setattr(linux_kvm, "probe", lambda argv, env=None, timeout=1.0:
                        calls.append(argv) or real(argv, env, 1.0))
    first = linux_kvm.kvm_boot_problem(spec, kernel, kernel, None)
    again = linux_kvm.kvm_boot_problem(spec, kernel, kernel, None)
    assert first == again and first is not None and len(calls) == 1
    assert "-accel" in calls[0] and "kvm" in calls[0]
