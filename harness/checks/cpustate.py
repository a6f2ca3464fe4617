"""CPU-state fidelity: the destination's vCPUs must hold exactly the source's
registers at switchover.

When both sides are stopped (source ``postmigrate``, destination paused after
the incoming migration) nothing can change a register on either side, so for
an architecture whose CPU state is migrated the two dumps are identical.  A
target whose CPU has no VMState (the e2k fork: its ``E2KCPU`` class registers
no ``vmsd``/``sysemu_ops->legacy_vmsd``) arrives with the CPU as the
destination's reset left it: the guest would restart from the reset vector
while QEMU reports a successful migration.  This check tells the two apart.

How the state is read, per architecture (a :class:`CpuStateReader`):

* HMP ``info registers -a`` through QMP ``human-monitor-command``
  (``hmp_info_registers`` in monitor/hmp-cmds-target.c -> ``cpu_dump_state``
  with ``CPU_DUMP_FPU``, which calls the target's ``CPUClass::dump_state``:
  x86 ``x86_cpu_dump_state`` in target/i386/cpu-dump.c, e2k
  ``e2k_cpu_dump_state`` in target/e2k/cpu-dump.c of qemu-e2k).  ``-a`` dumps
  every vCPU, each after a ``CPU#<index>`` line.  Reading is a pure dump: it
  does not run the vCPU nor change its state.
* x86 output is ``NAME=VALUE`` tokens; e2k's mixes ``name value`` pairs,
  ``name=value`` and ``r0 <tags>value``; other targets are parsed by the
  generic parser (``NAME=VALUE`` where a line has ``=``, else ``name value``
  pairs).
* A reader that fails is told apart from one that reads differing state:
  :class:`CpuStateUnavailable` says whether QEMU *crashed* doing it (the
  process is gone: the cell must fail with the signal and stderr tail and the
  run go on) or merely refused the command.  Commands known to crash a build
  (``query-cpus-fast``, ``query-target``, HMP ``info cpus`` on the e2k fork:
  'e2k' is missing from its QAPI ``SysEmuTarget`` enum) are never used here;
  the vCPU indices come from the dump's own ``CPU#`` lines.

Fields that legitimately differ between a ``postmigrate`` source and a paused
destination: none were seen for x86 (QEMU 7.2 and 10.0, TCG and KVM, q35 and
pc, measured with testcases/test_cpustate.py).  :data:`ALLOWED_DIFFS` is the
place to declare one, with its reason, should a target need it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from harness.results import CheckResult

if TYPE_CHECKING:
    from harness.qemu.machine import Machine

CpuState = dict[str, dict[str, str]]  # "cpu0" -> {register: value text}

NOT_MIGRATED = "CPU state not migrated"
#: Fraction of compared registers that must differ for the diagnosis
#: "not migrated" (rather than a list of a few wrong registers).
NOT_MIGRATED_FRACTION = 0.5
#: Registers listed in a failure summary (all of them are in the figures).
SUMMARY_REGISTERS = 8

#: arch -> {register: reason} for registers that may differ at switchover.
ALLOWED_DIFFS: dict[str, dict[str, str]] = {}


class CpuStateUnavailable(Exception):
    """The CPU state of one side could not be read.

    ``crashed`` is True when QEMU died doing it (an arch whose dump aborts), so
    a report can say "reading CPU state crashed QEMU" instead of "differs".
    """

    def __init__(self, role: str, reason: str, crashed: bool) -> None:
        self.role, self.reason, self.crashed = role, reason, crashed
        super().__init__(f"{role}: {reason}")


# ----------------------------------------------------------------- parsing

_CPU_HEADER = re.compile(r"^\s*CPU#(\d+)\s*$")
_EQ_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9_.]*)\s*=\s*")


def split_cpus(text: str) -> dict[str, str]:
    """Split an ``info registers -a`` dump into {"cpu<N>": text}; a dump with no
    ``CPU#`` line (plain ``info registers``) is one vCPU, "cpu0"."""
    cpus: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _CPU_HEADER.match(line)
        if m:
            current = cpus.setdefault(f"cpu{m.group(1)}", [])
            continue
        if current is None:
            if not line.strip():
                continue
            current = cpus.setdefault("cpu0", [])
        current.append(line)
    return {k: "\n".join(v) for k, v in cpus.items()}


def _put(regs: dict[str, str], line_name: str | None, name: str, value: str) -> None:
    """Store ``name``; a name already seen (DPL on every segment line, base on
    every e2k descriptor line) is qualified with its line's first name."""
    if name in regs and line_name and name != line_name:
        name = f"{line_name}.{name}"
    n, key = 1, name
    while key in regs:
        n += 1
        key = f"{name}#{n}"
    regs[key] = value


def parse_eq_line(line: str, regs: dict[str, str], qualify: bool = False) -> None:
    """``NAME=VALUE NAME2=VALUE ...``; a value runs to the next ``NAME=``.
    With ``qualify`` every later name is prefixed by the line's first one."""
    matches = list(_EQ_TOKEN.finditer(line))
    if not matches:
        return
    first = matches[0].group(1)
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        name = m.group(1)
        if qualify and i:
            name = f"{first}.{name}"
        _put(regs, first, name, " ".join(line[m.end():end].split()))


#: x86 descriptor lines: ``ES =0010 00000000 ffffffff 00cf9300 DPL=0 DS [-WA]``.
_X86_SEGMENT = re.compile(r"^\s*(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=")


def parse_x86(text: str) -> dict[str, str]:
    """One vCPU of ``x86_cpu_dump_state`` (target/i386/cpu-dump.c)."""
    regs: dict[str, str] = {}
    for line in text.splitlines():
        # "FSW=0000 [ST=0]": the bracketed top-of-stack is a field of its own.
        line = re.sub(r"\[ST=(\d+)\]", r"ST=\1", line)
        parse_eq_line(line, regs, qualify=bool(_X86_SEGMENT.match(line)))
    return regs


_E2K_REG = re.compile(r"^([rbg]\d+)$")


def parse_e2k(text: str) -> dict[str, str]:
    """One vCPU of ``e2k_cpu_dump_state`` (target/e2k/cpu-dump.c, qemu-e2k).

    Lines mix ``name value`` pairs (``ip``, ``ctpr1``, the descriptor lines
    ``usd VALUE base B curptr C size S flags``), ``name=value`` (``psr=``,
    ``wsz=``), a two-line predicate table (``pred 0 1 ..`` then values) and
    registers ``r0 <hilo>value``."""
    regs: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        tokens = lines[i].split()
        i += 1
        if not tokens:
            continue
        if tokens[0] == "pred" and i < len(lines):
            values = re.findall(r"[ *]\d", lines[i].rstrip("\n")[4:])
            for n, v in enumerate(values):
                regs[f"pred{n}"] = v.strip() or v
            i += 1
            continue
        first = tokens[0].split("=")[0]
        # Descriptor lines ("usd V base B curptr C size S flags"): every
        # later name belongs to the descriptor.
        prefix = f"{first}." if "base" in tokens[1:] else ""
        j = 0
        while j < len(tokens):
            tok = tokens[j]
            if "=" in tok:
                name, _, value = tok.partition("=")
                _put(regs, first, prefix + name, value)
                j += 1
            elif _E2K_REG.match(tok) and j + 1 < len(tokens) and tokens[j + 1].startswith("<"):
                _put(regs, None, tok, tokens[j + 1])
                j += 2
            elif j + 1 < len(tokens) and re.match(r"^[A-Za-z]", tok) and \
                    re.match(r"^[0-9a-fA-F]+$", tokens[j + 1]):
                _put(regs, first, tok if j == 0 else prefix + tok, tokens[j + 1])
                j += 2
            else:  # flags such as "RW" or "PRW" after a descriptor
                _put(regs, first, prefix + "flags", tok)
                j += 1
    return regs


def parse_generic(text: str) -> dict[str, str]:
    """Any other target: ``NAME=VALUE`` lines, else ``name value`` pairs."""
    regs: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            parse_eq_line(line, regs)
            continue
        tokens = line.split()
        first = tokens[0] if tokens else None
        for k in range(0, len(tokens) - 1, 2):
            _put(regs, first, tokens[k], tokens[k + 1])
    return regs


# ----------------------------------------------------------------- readers

class CpuStateReader(Protocol):
    """Reads every vCPU's registers from a stopped machine."""

    name: str

    async def read(self, m: "Machine") -> CpuState: ...


@dataclass
class HmpInfoRegisters:
    """HMP ``info registers -a`` (every vCPU), parsed by ``parse``."""

    parse: "object" = parse_generic
    name: str = "hmp-info-registers"

    async def read(self, m: "Machine") -> CpuState:
        from harness.errors import QemuError
        from qemu.qmp import ExecuteError

        try:
            text = await m.hmp("info registers -a")
        except ExecuteError as exc:
            raise CpuStateUnavailable(m.role, f"'info registers -a' refused: {exc}", False) from exc
        except QemuError as exc:
            raise CpuStateUnavailable(m.role, f"'info registers -a' failed: {exc}",
                                      not m.alive) from exc
        if not text.strip() or "unknown command" in text.lower():
            raise CpuStateUnavailable(m.role, f"'info registers -a' gave no dump: {text.strip()!r}",
                                      False)
        parse = self.parse
        state = {cpu: parse(body) for cpu, body in split_cpus(text).items()}  # type: ignore[operator]
        if not any(state.values()):
            raise CpuStateUnavailable(m.role, "no register could be parsed from "
                                      f"'info registers -a': {text[:200]!r}", False)
        return state


@dataclass(frozen=True)
class ArchProfile:
    """How to read and judge one architecture's CPU state."""

    readers: tuple[CpuStateReader, ...]
    #: Register values a CPU has straight after reset: a destination showing
    #: them while the source does not was never given the source's state.
    reset_signature: dict[str, str] = field(default_factory=dict)


ARCH_PROFILES: dict[str, ArchProfile] = {
    # x86 reset: CS:IP = f000:fff0 (x86_cpu_reset in target/i386/cpu.c sets
    # env->eip = 0xfff0 and the CS base 0xffff0000).
    "x86_64": ArchProfile((HmpInfoRegisters(parse_x86),),
                          {"RIP": "000000000000fff0", "EIP": "0000fff0"}),
    "i386": ArchProfile((HmpInfoRegisters(parse_x86),), {"EIP": "0000fff0"}),
    # e2k: a CPU starts at the firmware entry 0x100000000 (hw/e2k/e2k.c loads
    # -bios there and sets the PC to it).
    "e2k": ArchProfile((HmpInfoRegisters(parse_e2k),), {"ip": "0000000100000000"}),
}
DEFAULT_PROFILE = ArchProfile((HmpInfoRegisters(parse_generic),))


def profile_for(arch: str) -> ArchProfile:
    return ARCH_PROFILES.get(arch, DEFAULT_PROFILE)


async def read_cpu_state(m: "Machine", arch: str) -> CpuState:
    """Every vCPU's registers of a stopped machine, {"cpu0": {reg: value}}.

    Tries the arch's readers in order; raises :class:`CpuStateUnavailable` with
    the last reader's reason when none works (``crashed`` when QEMU died: then
    no further reader is tried)."""
    last: CpuStateUnavailable | None = None
    for reader in profile_for(arch).readers:
        try:
            return await reader.read(m)
        except CpuStateUnavailable as exc:
            last = exc
            if exc.crashed:
                break
    assert last is not None
    raise last


# ----------------------------------------------------------------- judging

def diff_cpu_state(src: CpuState, dst: CpuState,
                   allowed: dict[str, str] | None = None) -> tuple[list[dict[str, str]], int]:
    """Differing registers [{cpu, register, src, dst}] and how many were compared."""
    allowed = allowed or {}
    diffs: list[dict[str, str]] = []
    compared = 0
    for cpu in sorted(set(src) | set(dst), key=_cpu_order):
        s, d = src.get(cpu), dst.get(cpu)
        if s is None or d is None:
            diffs.append({"cpu": cpu, "register": "<vcpu>",
                          "src": "present" if s is not None else "missing",
                          "dst": "present" if d is not None else "missing"})
            continue
        for reg in [*s, *(r for r in d if r not in s)]:  # dump order
            if reg in allowed:
                continue
            compared += 1
            if s.get(reg) != d.get(reg):
                diffs.append({"cpu": cpu, "register": reg, "src": s.get(reg, "<absent>"),
                              "dst": d.get(reg, "<absent>")})
    return diffs, compared


def _cpu_order(cpu: str) -> tuple[int, str]:
    digits = cpu[3:] if cpu.startswith("cpu") else ""
    return (int(digits) if digits.isdigit() else 1 << 30, cpu)


def _looks_reset(src: CpuState, dst: CpuState, signature: dict[str, str]) -> bool:
    """The destination sits on the reset vector and the source does not."""
    for cpu, regs in dst.items():
        for reg, value in signature.items():
            if regs.get(reg) == value and src.get(cpu, {}).get(reg) != value:
                return True
    return False


def check_cpu_state(src: CpuState, dst: CpuState, arch: str = "") -> CheckResult:
    """``cpu-state``: the paused destination's vCPUs equal the source's.

    Fails with "CPU state not migrated" when at least half the registers
    differ or the destination sits on the reset vector while the source does
    not; otherwise names each differing register with both values."""
    profile = profile_for(arch)
    diffs, compared = diff_cpu_state(src, dst, ALLOWED_DIFFS.get(arch))
    figures: dict[str, object] = {
        "vcpus": len(src), "registers_compared": compared, "differing": len(diffs),
        "differences": diffs[:200],
    }
    if ALLOWED_DIFFS.get(arch):
        figures["allowed_to_differ"] = ALLOWED_DIFFS[arch]
    # The program counter first: it tells most about where the guest would resume.
    diffs.sort(key=lambda d: d["register"] not in profile.reset_signature)
    if not diffs:
        return CheckResult("cpu-state", True,
                           f"{compared} registers identical on {len(src)} vCPU(s)", figures)
    names = ", ".join(f"{d['register']} {d['src']} -> {d['dst']}" if len(src) <= 1 else
                      f"{d['cpu']}.{d['register']} {d['src']} -> {d['dst']}"
                      for d in diffs[:SUMMARY_REGISTERS])
    more = f" and {len(diffs) - SUMMARY_REGISTERS} more" if len(diffs) > SUMMARY_REGISTERS else ""
    reset = _looks_reset(src, dst, profile.reset_signature)
    if reset or (compared and len(diffs) / compared >= NOT_MIGRATED_FRACTION):
        figures["diagnosis"] = "not-migrated"
        why = ("the destination is at the reset vector" if reset
               else f"{len(diffs)} of {compared} registers differ")
        return CheckResult("cpu-state", False, f"{NOT_MIGRATED} ({why}): {names}{more}", figures)
    figures["diagnosis"] = "registers-differ"
    return CheckResult("cpu-state", False,
                       f"{len(diffs)} of {compared} registers differ: {names}{more}", figures)


def unavailable_result(exc: CpuStateUnavailable) -> CheckResult:
    """The check's verdict when one side's state could not be read."""
    what = "reading CPU state crashed QEMU" if exc.crashed else "CPU state unreadable"
    return CheckResult("cpu-state", False, f"{what} on the {exc.role}: {exc.reason}",
                       {"diagnosis": "crashed" if exc.crashed else "unreadable",
                        "side": exc.role})


async def collect_cpu_state(src: "Machine", dst: "Machine", arch: str) -> CheckResult:
    """Read both stopped sides (source first: if the dump crashes the build,
    the migrated destination is spared) and judge them."""
    try:
        s = await read_cpu_state(src, arch)
        d = await read_cpu_state(dst, arch)
    except CpuStateUnavailable as exc:
        return unavailable_result(exc)
    return check_cpu_state(s, d, arch)
