"""The migration-coverage report with the evidence of a saved stream, against
real QEMU: Debian's 7.2 and the 10.0 prefix (pc and q35, TCG, 64 MiB, two
vCPUs, paused with -S, -nodefaults), and a porter's e2k build.

Each machine saves its stream as the flow's save/restore transports do
(harness.migration.driver.save_restore_uris: ``exec:cat > FILE``; ``file:FILE`` and
file + mapped-ram on 10.0); harness.state.streamdecode decodes it and
harness.state.coverage maps its sections to the machine's QOM devices.  Negative
controls: a stream cut in the middle, and a stream with the APIC sections cut
out (and dropped from its VM description), are each reported.

Without the QEMU 10.0 prefix its cases are skipped with the build's reason;
the e2k case needs MHARNESS_E2K_QEMU (a qemu-system-e2k binary)."""
from __future__ import annotations

import asyncio
import json
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.cell import BuildSpec, TargetSpec
from harness.checks.vmstate_static import cached_dump, walk_devices
from harness.state.coverage import (CPU_COMMON_ONLY, IN_STREAM, NO_VMSTATE, NOT_SENT, UNSEEN,
                                    _types, coverage_report, stream_coverage)
from harness.migration.transports import save_restore_uris
from harness.migration.waits import TERMINAL
from harness.qemu.build import QemuBuild, discover
from harness.qemu.cmdline import RAM_BACKEND_ID, MachinePaths, firmware_args, machine_argv
from harness.qemu.machine import Machine
from harness.state.streamdecode import (DecodedStream, StreamDecodeError, decode_bytes,
                                        decode_stream)
from harness.waiting import poll_until
from qemu_builds import E2K, matrix_build, needs_e2k

MiB = 1 << 20
SAVE_TIMEOUT = 60.0

pytestmark = [pytest.mark.qemu]


@dataclass
class Saved:
    """One paused machine's saved stream and everything known about the machine."""

    stream: Path
    machine_type: str
    report: dict[str, Any]
    nodes: dict[str, str]
    dump: dict[str, Any]
    device_types: set[str]
    cpu_types: set[str]
    arch: str


async def _save(build: QemuBuild, machine: str, transport: str, outdir: Path,
                caps: tuple[str, ...] = (), smp: int = 2, memory: int = 64 * MiB) -> Saved:
    """Start a paused machine, save its stream with ``transport``, report coverage."""
    arch = build.arch
    machine_type = build.resolve_machine(machine) or machine
    workdir = Path(tempfile.mkdtemp(prefix="mharness-sc-", dir="/dev/shm"
                                    if Path("/dev/shm").is_dir() else None))
    target = TargetSpec(name=f"{arch}-{machine}", arch=arch, machine=machine_type,
                        memory=memory, smp=smp)
    paths = MachinePaths(qmp=workdir / "src.qmp", serial=workdir / "src.serial",
                         ram=workdir / "src.ram", disk=None)
    argv = machine_argv(build, target, paths, incoming=False, machine_type=machine_type,
                        extra=(*firmware_args(arch, workdir), "-S"))
    m = Machine("src", argv, build.env(), qmp_path=paths.qmp, serial_path=paths.serial,
                logdir=workdir, t0=time.monotonic())
    try:
        await m.start()
        if caps:
            await m.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": True} for c in caps]})
        uri, _ = save_restore_uris(transport, workdir)
        await m.execute("migrate", {"uri": uri})
        # No events capability here: query-migrate until the save ends.
        info = await poll_until(lambda: m.execute("query-migrate"),
                                lambda i: i.get("status") in TERMINAL, timeout=SAVE_TIMEOUT,
                                interval=0.05, what="saving the stream")
        assert info["status"] == "completed", f"saving the stream ended '{info['status']}': {info}"
        stream = outdir / f"{'-'.join((build.name, machine, transport, *caps))}.stream"
        shutil.move(str(workdir / "migration.stream"), stream)
        dump = (await asyncio.to_thread(cached_dump, build, machine_type)).dump
        report = await coverage_report(m, build, machine_type, dump=dump, stream=stream)
        nodes = (await walk_devices(m)).paths
        device_types, cpu_types = await _types(m, "device"), await _types(m, "cpu")
        return Saved(stream, machine_type, report, nodes, dump, device_types, cpu_types, arch)
    finally:
        await m.close()
        shutil.rmtree(workdir, ignore_errors=True)


_saved: dict[tuple[str, str, str, tuple[str, ...]], Saved] = {}


@pytest.fixture(scope="module")
def outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streams")


def saved(outdir: Path, build_name: str, machine: str, transport: str,
          caps: tuple[str, ...] = ()) -> Saved:
    """Each stream is saved once per session, whichever test asks first."""
    key = (build_name, machine, transport, caps)
    if key not in _saved:
        build = matrix_build(build_name)
        _saved[key] = asyncio.run(_save(build, machine, transport, outdir, caps))
    return _saved[key]


CASES = [("system", "pc", "exec", ()), ("system", "q35", "exec", ()),
         ("debian-10.0", "pc", "exec", ()), ("debian-10.0", "q35", "exec", ()),
         ("debian-10.0", "q35", "file", ()), ("debian-10.0", "q35", "file", ("mapped-ram",))]
CHIPSET = {
    "pc": {"0000:00:00.0/I440FX", "0000:00:01.0/PIIX3", "0000:00:01.1/ide",
           "0000:00:01.3/piix4_pm"},
    "q35": {"0000:00:00.0/mch", "0000:00:1f.0/ICH9LPC", "0000:00:1f.2/ich9_ahci",
            "0000:00:1f.3/ich9_smb"},
}


def _case_id(case: tuple[str, str, str, tuple[str, ...]]) -> str:
    build, machine, transport, caps = case
    return "-".join([{"system": "7.2", "debian-10.0": "10.0"}[build], machine, transport, *caps])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_saved_stream_decodes(case, outdir) -> None:
    build_name, machine, transport, caps = case
    s = saved(outdir, *case)
    d = decode_stream(s.stream)
    print(f"\n{_case_id(case)}: {d.summary()}")
    assert d.complete and d.version == 3
    assert d.machine == s.machine_type
    assert d.vmdesc_found and d.footers
    assert d.page_size == 4096
    # RAM: a START, PARTs and an END of the iterable "ram" section; guest RAM
    # is the 64 MiB block of the harness's memory backend (RAM_BACKEND_ID).
    ram = [x for x in d.sections if x.idstr == "ram"]
    assert ram[0].kind == "start" and ram[-1].kind == "end"
    assert all(x.size_from == "ram" and x.footer for x in ram)
    blocks = {b.idstr: b.length for b in d.ram_blocks}
    assert blocks[RAM_BACKEND_ID] == 64 * MiB
    if "mapped-ram" in caps:
        assert d.mapped_ram and d.ram.pages == 0 and d.ram.zero == 0
        assert all(b.mapped is not None and b.mapped.pages_offset % MiB == 0
                   for b in d.ram_blocks)
        # ROM pages were written at their file offsets; the zero RAM was not.
        assert sum(b.mapped.pages_present for b in d.ram_blocks) > 0
    else:
        # Every page of every block is sent once, as a page or a zero page.
        assert d.ram.pages + d.ram.zero == sum(blocks.values()) // 4096
    # Device sections: sized from the VM description, each with its footer.
    full = d.device_sections()
    assert all(x.size_from == "vmdesc" and x.footer for x in full), \
        [(x.idstr, x.size_from) for x in full if x.size_from != "vmdesc"]
    assert [(x.idstr, x.instance_id) for x in full] == \
        [(e["name"], e["instance_id"]) for e in d.devices]
    names = {(x.idstr, x.instance_id) for x in full}
    for vcpu in (0, 1):
        assert {("cpu", vcpu), ("cpu_common", vcpu), ("apic", vcpu)} <= names
    assert CHIPSET[machine] <= {x.idstr for x in full}
    assert {"timer", "globalstate", "serial", "mc146818rtc", "hpet"} <= {x.idstr for x in full}
    # Sections and commands tile the stream up to QEMU_VM_EOF (with
    # mapped-ram the RAM START section spans the page areas it skips).
    spans = sorted([(x.offset, x.offset + x.size) for x in d.sections]
                   + [(c.offset, c.offset + 5 + c.length) for c in d.commands])
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans
    assert spans[-1][1] == d.eof_offset
    if build_name == "debian-10.0":
        assert [c.name for c in d.commands] == ["SWITCHOVER_START"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_coverage_report_with_stream(case, outdir) -> None:
    s = saved(outdir, *case)
    rep = s.report
    sc = rep["stream"]
    print(f"\n{_case_id(case)}: {rep['summary']}")
    assert sc["complete"] and rep["passed"], rep["summary"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in sc["devices"]:
        by_type.setdefault(e["type"], []).append(e)
    cpus = by_type["qemu64-x86_64-cpu"]
    assert len(cpus) == 2 and all(e["state"] == IN_STREAM for e in cpus)
    assert sorted(e["sections"][0] for e in cpus) == ["cpu#0", "cpu#1"]
    assert [e["state"] for e in by_type["apic"]] == [IN_STREAM, IN_STREAM]
    assert sorted(e["sections"][0] for e in by_type["apic"]) == ["apic#0", "apic#1"]
    chip = ("PIIX3", "piix3-ide", "PIIX4_PM") if case[1] == "pc" else \
        ("ICH9-LPC", "ich9-ahci", "ICH9-SMB")
    for qtype in chip:
        assert by_type[qtype][0]["state"] == IN_STREAM, by_type[qtype]
    # An eeprom nobody read sends nothing (its needed() is false): named, not failed.
    assert {e["state"] for e in by_type["smbus-eeprom"]} == {NOT_SENT}
    assert "VMState not sent: smbus-eeprom x8" in rep["summary"]
    unmatched = {u["idstr"] for u in sc["unmatched_sections"]}
    assert {"ram", "timer", "globalstate", "PCIBUS"} <= unmatched
    assert all(u["why"] for u in sc["unmatched_sections"])
    # The per-device entries of the main report carry the stream evidence.
    cpu_entry = next(e for e in rep["devices"] if e["type"] == "qemu64-x86_64-cpu")
    assert cpu_entry["in_stream"] and cpu_entry["stream_sections"]
    assert rep["summary"].startswith(f"{len(rep['covered'])} of {len(rep['devices'])} devices")
    assert "saved stream: " in rep["summary"]


def test_old_machine_type_stream_without_footers(outdir) -> None:
    """pc-i440fx-2.3 turns off the configuration section and the section footers
    (hw_compat_2_3, hw/core/machine.c): device sections are then sized from the
    VM description alone."""
    s = saved(outdir, "system", "pc-i440fx-2.3", "exec")
    d = decode_stream(s.stream)
    print(f"\n{d.summary()}\n{s.report['summary']}")
    assert d.complete and d.machine is None and d.footers is False
    assert {x.size_from for x in d.device_sections()} == {"vmdesc"}
    assert not any(x.footer for x in d.sections)
    assert {("cpu", 0), ("cpu", 1), ("apic", 0), ("apic", 1)} <= set(d.section_names())
    assert s.report["stream"]["passed"], s.report["summary"]
    # Without the description such a stream cannot be walked past its first
    # device section: reported as an error there, not misparsed.
    data = s.stream.read_bytes()
    with pytest.raises(StreamDecodeError, match="no section footers") as err:
        decode_bytes(data[:d.vmdesc_offset])
    assert err.value.offset == d.device_sections()[0].body_offset


def test_truncated_stream_is_reported(outdir) -> None:
    s = saved(outdir, "system", "q35", "exec")
    data = s.stream.read_bytes()
    full = decode_bytes(data)
    apic = next(x for x in full.device_sections() if x.idstr == "apic")
    cut = apic.offset + 7                       # inside the first APIC section's header
    with pytest.raises(StreamDecodeError) as err:
        decode_bytes(data[:cut])
    assert err.value.offset >= apic.offset and err.value.offset <= cut
    partial = err.value.partial
    assert partial is not None and not partial.complete
    assert ("cpu", 0) in partial.section_names()
    # The report built from it says so, and the devices after the cut are missing.
    path = outdir / "truncated.stream"
    path.write_bytes(data[:cut])
    decoded = decode_stream(path, strict=False)
    sc = stream_coverage(s.nodes, decoded, s.arch, s.dump, s.device_types, s.cpu_types)
    print(f"\n{sc['summary']}")
    assert not sc["passed"]
    assert "stream undecodable at offset" in sc["summary"]
    states: dict[str, list[str]] = {}
    for e in sc["devices"]:
        states.setdefault(e["type"], []).append(e["state"])
    # vCPU 0's sections come before the cut, vCPU 1's and the APICs' after it.
    assert states["qemu64-x86_64-cpu"] == [IN_STREAM, UNSEEN]
    assert states["apic"] == [UNSEEN, UNSEEN] and states["hpet"] == [UNSEEN]
    unseen = sum(1 for e in sc["devices"] if e["state"] == UNSEEN)
    assert sc["summary"].endswith(f"; {unseen} devices not reached")
    # A cut in the middle of RAM data: the error points into that RAM section.
    part = next(x for x in full.sections if x.idstr == "ram" and x.kind == "part")
    mid = part.offset + part.size // 2
    with pytest.raises(StreamDecodeError, match="truncated") as err2:
        decode_bytes(data[:mid])
    assert part.offset < err2.value.offset <= mid


def _without(data: bytes, d: DecodedStream, idstr: str) -> bytes:
    """The stream with every FULL section of ``idstr`` cut out and dropped from
    its VM description (whose length is rewritten)."""
    assert d.vmdesc_offset is not None and d.vmdesc is not None
    drop = [x for x in d.device_sections() if x.idstr == idstr]
    assert drop
    out, pos = bytearray(), 0
    for x in drop:
        out += data[pos:x.offset]
        pos = x.offset + x.size
    out += data[pos:d.vmdesc_offset]
    desc = dict(d.vmdesc)
    desc["devices"] = [e for e in d.vmdesc["devices"] if e.get("name") != idstr]
    text = json.dumps(desc).encode()
    out += bytes([0x06]) + struct.pack(">I", len(text)) + text
    return bytes(out)


def test_removed_section_is_reported(outdir) -> None:
    s = saved(outdir, "debian-10.0", "q35", "exec")
    data = s.stream.read_bytes()
    d = decode_bytes(data)
    path = outdir / "no-apic.stream"
    path.write_bytes(_without(data, d, "apic"))
    cut = decode_stream(path)
    assert cut.complete and cut.vmdesc_found
    assert "apic" not in {x.idstr for x in cut.device_sections()}
    assert len(cut.device_sections()) == len(d.device_sections()) - 2
    sc = stream_coverage(s.nodes, cut, s.arch, s.dump, s.device_types, s.cpu_types)
    print(f"\n{sc['summary']}")
    apics = [e for e in sc["devices"] if e["type"] == "apic"]
    assert [e["state"] for e in apics] == [NOT_SENT, NOT_SENT]
    assert "apic x2" in sc["summary"]
    # Everything else is still found.
    before = stream_coverage(s.nodes, d, s.arch, s.dump, s.device_types, s.cpu_types)
    assert len(sc["in_stream"]) == len(before["in_stream"]) - 2


@needs_e2k
def test_e2k_stream_has_no_cpu_state(outdir) -> None:
    assert E2K is not None
    build = discover(BuildSpec(name="e2k", binary=E2K))
    if build.missing:
        pytest.fail(f"MHARNESS_E2K_QEMU is set but unusable: {build.missing}")
    s = asyncio.run(_save(build, "e2k", "exec", outdir, memory=128 * MiB))
    d = decode_stream(s.stream)
    print(f"\n{d.summary()}\n{s.report['summary']}")
    assert d.complete and d.machine == "e2k" and d.vmdesc_found
    names = {(x.idstr, x.instance_id) for x in d.device_sections()}
    assert {("cpu_common", 0), ("cpu_common", 1)} <= names
    assert not any(x.idstr in ("cpu", "apic") for x in d.device_sections())
    sc = s.report["stream"]
    states = {}
    for e in sc["devices"]:
        states.setdefault(e["type"], set()).add(e["state"])
    cpu_type = next(iter(s.cpu_types & set(s.nodes.values())))
    assert states[cpu_type] == {CPU_COMMON_ONLY}
    assert states["apic"] == {NO_VMSTATE} and states["iohub"] == {NO_VMSTATE}
    assert not s.report["passed"] and not sc["passed"]
    assert f"no VMState in the stream: {cpu_type} CPU (cpu_common only) x2" in sc["summary"]
    assert "apic x2" in sc["summary"] and "iohub" in sc["summary"]
