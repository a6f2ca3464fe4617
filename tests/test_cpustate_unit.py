"""Parsing and diffing for the cpu-state check, on real ``info registers -a``
dumps captured from QEMU 7.2 (q35, TCG) and 10.0 (pc, KVM) after a migration."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.checks.cpustate import (NOT_MIGRATED, CpuStateUnavailable, check_cpu_state,
                                     collect_cpu_state, parse_e2k, parse_generic, parse_x86,
                                     read_cpu_state, split_cpus, unavailable_result)
from harness.errors import QemuError

DATA = Path(__file__).parent / "data" / "cpustate"


def _state(name: str) -> dict[str, dict[str, str]]:
    return {cpu: parse_x86(body) for cpu, body in split_cpus((DATA / name).read_text()).items()}


@pytest.mark.parametrize("capture", ["x86_64-q35-tcg-system", "x86_64-pc-kvm-10"])
def test_real_source_and_destination_are_identical(capture):
    src, dst = _state(f"{capture}.src.txt"), _state(f"{capture}.dst.txt")
    assert list(src) == ["cpu0"]
    regs = src["cpu0"]
    assert regs["EIP"] == "00007c9b"
    assert regs["CS"].startswith("0008 00000000 ffffffff")
    assert regs["CS.DPL"].startswith("0 CS32") and regs["TR.DPL"] == "0 TSS32-busy"
    assert regs["FSW"] == "0000" and regs["ST"] == "0"
    assert regs["XMM07"] == "0000000000000000 0000000000000000"
    assert len(regs) == 65
    result = check_cpu_state(src, dst, "x86_64")
    assert result.passed and result.name == "cpu-state"
    assert result.figures["registers_compared"] == 65


def test_one_register_differs_is_named_with_both_values():
    src = _state("x86_64-q35-tcg-system.src.txt")
    dst = _state("x86_64-q35-tcg-system.dst.txt")
    dst["cpu0"]["EAX"] = "deadbeef"
    result = check_cpu_state(src, dst, "x86_64")
    assert not result.passed
    assert result.figures["diagnosis"] == "registers-differ"
    assert result.summary == "1 of 65 registers differ: EAX 00000000 -> deadbeef"
    assert result.figures["differences"] == [
        {"cpu": "cpu0", "register": "EAX", "src": "00000000", "dst": "deadbeef"}]


RESET_X86 = """CPU#0
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
ESI=00000000 EDI=00000000 EBP=00000000 ESP=00000000
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 00000000 0000ffff 00009300
CS =f000 ffff0000 0000ffff 00009b00
"""


def test_destination_at_reset_vector_is_not_migrated():
    src = _state("x86_64-q35-tcg-system.src.txt")
    dst = {c: parse_x86(b) for c, b in split_cpus(RESET_X86).items()}
    result = check_cpu_state(src, dst, "x86_64")
    assert not result.passed
    assert result.summary.startswith(f"{NOT_MIGRATED} (")
    assert result.figures["diagnosis"] == "not-migrated"
    assert "EIP 00007c9b -> 0000fff0" in result.summary


def test_mostly_different_state_is_not_migrated_without_signature():
    src = {"cpu0": {f"r{i}": f"{i:016x}" for i in range(10)}}
    dst = {"cpu0": {f"r{i}": "0" * 16 for i in range(10)}}
    dst["cpu0"]["r0"] = src["cpu0"]["r0"]
    result = check_cpu_state(src, dst, "riscv64")
    assert result.summary.startswith(NOT_MIGRATED + " (9 of 10 registers differ)")
    assert "and 1 more" in result.summary


def test_missing_vcpu_is_reported():
    src = {"cpu0": {"a": "1"}, "cpu1": {"a": "1"}}
    dst = {"cpu0": {"a": "1"}}
    result = check_cpu_state(src, dst)
    assert not result.passed
    assert result.figures["differences"][0]["register"] == "<vcpu>"


def test_split_cpus_orders_and_plain_dump():
    text = "CPU#0\nA=1\nCPU#1\nA=2\n"
    assert split_cpus(text) == {"cpu0": "A=1", "cpu1": "A=2"}
    assert split_cpus("A=1 B=2\n") == {"cpu0": "A=1 B=2"}


def test_generic_parser_both_forms():
    assert parse_generic(" pc       0000000080000000\n mhartid  0000000000000000\n") == {
        "pc": "0000000080000000", "mhartid": "0000000000000000"}
    assert parse_generic("R00=00000000 R01=00000001\nPSTATE=400003c5 -Z-- EL1h\n") == {
        "R00": "00000000", "R01": "00000001", "PSTATE": "400003c5 -Z-- EL1h"}




def test_e2k_parser_on_its_dump_format():
    # The layout of e2k_cpu_dump_state (qemu-e2k target/e2k/cpu-dump.c).
    text = (
        "   ip 0000000100000000 ctpr1 0000000000000000  ctpr2 0000000000000000  ctpr3 0000000000000000\n"
        "  sbr 0000000000000000  osr0 0000000000000000 psr=00 upsr=0000\n"
        "  usd 0000000000000000  base 0000000000000000 curptr 00000000 size 00000000    \n"
        " pcsp 0000000000000000  base 0000000000000000  index 00000000 size 00000000  RW itag=0\n"
        " wsz=0 wbdl=0 rbs=0 rsz=0 rcur=0 psz=0 pcur=0\n"
        "pred 0 1 2\n     0 *1 0\n"
        "   r0 <00>0000000000000001  r1 <00>0000000000000002\n")
    regs = parse_e2k(text)
    assert regs["ip"] == "0000000100000000" and regs["ctpr3"] == "0000000000000000"
    assert regs["psr"] == "00" and regs["upsr"] == "0000"
    assert regs["usd"] == "0000000000000000" and regs["usd.base"] == "0000000000000000"
    assert regs["pcsp.base"] == "0000000000000000" and regs["pcsp.index"] == "00000000"
    assert regs["pcsp.flags"] == "RW" and regs["pcsp.itag"] == "0"
    assert regs["wsz"] == "0" and regs["pcur"] == "0"
    assert regs["pred1"] == "*1"
    assert regs["r0"] == "<00>0000000000000001" and regs["r1"] == "<00>0000000000000002"


class FakeMachine:
    def __init__(self, role: str, reply=None, exc: Exception | None = None, dies=False):
        self.role, self.reply, self.exc, self.alive = role, reply, exc, True
        self.dies = dies
        self.commands: list[str] = []

    async def hmp(self, line: str) -> str:
        self.commands.append(line)
        if self.dies:
            self.alive = False
        if self.exc is not None:
            raise self.exc
        return self.reply


def test_crashing_dump_is_told_apart_from_a_difference():
    src = FakeMachine("src", exc=QemuError("src QEMU died during 'human-monitor-command'"),
                      dies=True)
    dst = FakeMachine("dst", reply="CPU#0\nA=1\n")
    result = asyncio.run(collect_cpu_state(src, dst, "x86_64"))
    assert not result.passed
    assert result.summary.startswith("reading CPU state crashed QEMU on the src")
    assert result.figures["diagnosis"] == "crashed"
    assert dst.commands == []  # the destination was spared


def test_unparsable_dump_is_unreadable():
    m = FakeMachine("dst", reply="unknown command: 'info registers'")
    with pytest.raises(CpuStateUnavailable) as info:
        asyncio.run(read_cpu_state(m, "x86_64"))
    assert not info.value.crashed
    assert unavailable_result(info.value).figures["diagnosis"] == "unreadable"
    assert m.commands == ["info registers -a"]


def test_real_e2k_reset_dump_parses():
    """Captured from qemu-system-e2k (qemu-e2k 6.0.91, e8c) paused at reset."""
    state = {c: parse_e2k(b) for c, b in split_cpus((DATA / "e2k-reset.txt").read_text()).items()}
    regs = state["cpu0"]
    assert regs["ip"] == "0000000100000000"
    assert regs["usd.size"] == "00004000" and regs["usd.flags"] == "RW"
    assert regs["wsz"] == "16" and regs["pred31"] == "0"
    assert regs["g31"] == "<00>0000000000000000" and regs["b7"] == "<00>0000000000000000"
    moved = {c: dict(r, ip="00000001010ef718") for c, r in state.items()}
    result = check_cpu_state(moved, state, "e2k")
    assert result.summary == (f"{NOT_MIGRATED} (the destination is at the reset vector): "
                              "ip 00000001010ef718 -> 0000000100000000")
