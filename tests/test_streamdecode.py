"""harness.state.streamdecode on synthetic streams built here from the documented
layout (migration/savevm.c save_section_header / save_section_footer /
qemu_savevm_state_header, migration/ram.c ram_save_setup / save_page_header),
and harness.state.coverage.stream_coverage on e2k- and x86-like machines."""
from __future__ import annotations

import json
import struct

import pytest

from harness.state.coverage import (CARRIED, CPU_COMMON_ONLY, IN_STREAM, NO_VMSTATE, NOT_SENT,
                              stream_coverage)
from harness.state.streamdecode import (DecodedStream, StreamDecodeError, decode_bytes,
                                  decode_stream, section_vmsd_name)

PAGE = 4096


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def be64(v: int) -> bytes:
    return struct.pack(">Q", v)


def counted(s: str) -> bytes:
    return bytes([len(s)]) + s.encode()


def header(machine: str | None = "pc-q35-7.2", subsections: bytes = b"") -> bytes:
    out = be32(0x5145564D) + be32(3)
    if machine is not None:
        out += b"\x07" + be32(len(machine)) + machine.encode() + subsections
    return out


def subsection(name: str, body: bytes, version: int = 1) -> bytes:
    return b"\x05" + counted(name) + be32(version) + body


def start_or_full(kind: int, sid: int, idstr: str, instance: int, version: int) -> bytes:
    return bytes([kind]) + be32(sid) + counted(idstr) + be32(instance) + be32(version)


def part_or_end(kind: int, sid: int) -> bytes:
    return bytes([kind]) + be32(sid)


def footer(sid: int) -> bytes:
    return b"\x7e" + be32(sid)


def ram_setup(blocks: list[tuple[str, int]]) -> bytes:
    out = be64(sum(n for _, n in blocks) | 0x04)
    for name, length in blocks:
        out += counted(name) + be64(length)
    return out + be64(0x10)


def page(offset: int, block: str | None, fill: int = 0xAB) -> bytes:
    flags = 0x08 | (0x20 if block is None else 0)
    return be64(offset | flags) + (counted(block) if block else b"") + bytes([fill]) * PAGE


def zero(offset: int, block: str | None) -> bytes:
    flags = 0x02 | (0x20 if block is None else 0)
    return be64(offset | flags) + (counted(block) if block else b"") + b"\x00"


EOS = be64(0x10)

#: Device state as a VMState writes it: fields, then a subsection.
SERIAL_BODY = b"\x01\x02" + be32(7) + subsection("serial/fifo", b"\x09" * 3)
SERIAL_DESC = {"name": "serial", "instance_id": 0, "vmsd_name": "serial", "version": 3,
               "fields": [{"name": "divider", "type": "uint16", "size": 2},
                          {"name": "count", "type": "uint32", "size": 4}],
               "subsections": [{"vmsd_name": "serial/fifo", "version": 1,
                                "fields": [{"name": "fifo", "array_len": 3, "type": "uint8",
                                            "size": 1}]}]}
# An old-style handler: one opaque blob whose size the description gives.
OLD_BODY = b"\x55" * 10
OLD_DESC = {"name": "slirp", "instance_id": 0, "size": 10,
            "fields": [{"name": "data", "size": 10, "type": "buffer"}]}


def vmdesc(devices: list[dict], **extra) -> bytes:
    text = json.dumps({**extra, "page_size": PAGE, "devices": devices}).encode()
    return b"\x06" + be32(len(text)) + text


def stream(with_desc: bool = True, footers: bool = True, machine: str = "pc-q35-7.2",
           subs: bytes = b"") -> bytes:
    f = footer if footers else (lambda sid: b"")
    s = header(machine, subs)
    s += start_or_full(0x01, 2, "ram", 0, 4) + ram_setup([("pc.ram", 4 * PAGE),
                                                          ("pc.bios", PAGE)]) + f(2)
    s += (part_or_end(0x02, 2) + page(0, "pc.ram") + zero(PAGE, None) + page(2 * PAGE, None)
          + zero(0, "pc.bios") + EOS + f(2))
    s += part_or_end(0x03, 2) + zero(3 * PAGE, "pc.ram") + EOS + f(2)
    s += start_or_full(0x04, 7, "serial", 0, 3) + SERIAL_BODY + f(7)
    s += start_or_full(0x04, 9, "slirp", 0, 4) + OLD_BODY + f(9)
    s += b"\x00"
    if with_desc:
        s += vmdesc([SERIAL_DESC, OLD_DESC])
    return s


# ---------------------------------------------------------------- decoding


def test_full_synthetic_stream():
    data = stream()
    d = decode_bytes(data)
    assert d.complete and d.error is None and d.version == 3
    assert d.machine == "pc-q35-7.2"
    assert d.vmdesc_found and d.footers is True and d.page_size == PAGE
    assert [(s.kind, s.idstr, s.section_id) for s in d.sections] == [
        ("start", "ram", 2), ("part", "ram", 2), ("end", "ram", 2),
        ("full", "serial", 7), ("full", "slirp", 9)]
    assert [(b.idstr, b.length) for b in d.ram_blocks] == [("pc.ram", 4 * PAGE),
                                                          ("pc.bios", PAGE)]
    assert (d.ram.pages, d.ram.zero) == (2, 3)
    assert d.ram.per_block == {"pc.ram": 4, "pc.bios": 1}
    serial = d.sections[3]
    assert serial.size_from == "vmdesc" and serial.vmsd_name == "serial"
    assert serial.body_size == len(SERIAL_BODY) and serial.footer
    assert serial.size == 1 + 4 + 1 + 6 + 8 + len(SERIAL_BODY) + 5
    assert data[serial.offset] == 0x04 and data[serial.body_offset:][:2] == b"\x01\x02"
    # Sections tile the stream from the configuration to QEMU_VM_EOF.
    ends = [s.offset + s.size for s in d.sections]
    assert ends[:-1] == [s.offset for s in d.sections[1:]] and ends[-1] == d.eof_offset
    assert d.sections[4].size_from == "vmdesc" and d.sections[4].body_size == 10
    assert d.vmdesc_offset == d.eof_offset + 1
    assert [x["name"] for x in d.devices] == ["serial", "slirp"]
    assert not d.notes
    assert "2 device sections" in d.summary()


def test_decode_file_matches_bytes(tmp_path):
    p = tmp_path / "s.bin"
    p.write_bytes(stream())
    d = decode_stream(p)
    assert d.complete and d.path == str(p)
    assert [s.idstr for s in d.sections] == [s.idstr for s in decode_bytes(stream()).sections]
    assert d.to_dict()["devices"][0] == {"name": "serial", "instance_id": 0,
                                         "vmsd_name": "serial"}


def test_without_description_footers_delimit_devices():
    d = decode_bytes(stream(with_desc=False))
    assert d.complete and not d.vmdesc_found
    assert [s.size_from for s in d.device_sections()] == ["footer-scan", "footer-scan"]
    assert d.device_sections()[0].body_size == len(SERIAL_BODY)
    assert any("searching for their footer" in n for n in d.notes)
    assert any("no VM description" in n for n in d.notes)


def test_description_without_footers():
    d = decode_bytes(stream(footers=False))
    assert d.complete and d.footers is False
    assert all(s.footer is False for s in d.sections)
    assert d.device_sections()[0].size_from == "vmdesc"


def test_no_footers_no_description_is_an_error_at_the_device():
    data = stream(with_desc=False, footers=False)
    with pytest.raises(StreamDecodeError, match="cannot find the end of section 7") as err:
        decode_bytes(data)
    serial_body = data.index(b"\x06serial") + 7 + 8
    assert err.value.offset == serial_body
    assert [s.idstr for s in err.value.partial.sections] == ["ram", "ram", "ram", "serial"]


def test_wrong_description_size_falls_back_to_the_footer():
    bad = dict(SERIAL_DESC, fields=[{"name": "divider", "type": "uint16", "size": 2}])
    data = stream(with_desc=False)[:-1] + b"\x00" + vmdesc([bad, OLD_DESC])
    d = decode_bytes(data)
    assert d.complete
    assert [s.size_from for s in d.device_sections()] == ["footer-scan", "vmdesc"]


def test_configuration_subsections_and_commands():
    subs = (subsection("configuration/target-page-bits", be32(12))
            + subsection("configuration/capabilities",
                         be32(1) + counted("x-ignore-shared"))
            + subsection("configuration/uuid", bytes(range(16))))
    s = header("pc-q35-10.0", subs)
    # x-ignore-shared: each RAM block entry carries its guest address.
    s += start_or_full(0x01, 2, "ram", 0, 4) + be64(PAGE | 0x04) + counted("pc.ram") \
        + be64(PAGE) + be64(0x100000) + EOS + footer(2)
    s += b"\x08" + struct.pack(">HH", 11, 0)                       # SWITCHOVER_START
    s += part_or_end(0x03, 2) + be64(0x200) + EOS + footer(2)      # a MULTIFD_FLUSH
    s += b"\x00"
    d = decode_bytes(s)
    assert d.complete and d.target_page_bits == 12
    assert d.capabilities == ["x-ignore-shared"] and d.uuid == bytes(range(16)).hex()
    assert d.ram_blocks[0].guest_address == 0x100000
    assert [(c.name, c.length) for c in d.commands] == [("SWITCHOVER_START", 0)]
    assert d.ram.multifd_flush == 1


def test_unknown_configuration_subsection_sized_by_description():
    s = header("pc-q35-10.0", subsection("configuration/future", b"\x01\x02\x03"))
    s += b"\x00"
    conf = {"vmsd_name": "configuration", "version": 1,
            "fields": [{"name": "len", "type": "uint32", "size": 4}],
            "subsections": [{"vmsd_name": "configuration/future", "version": 1,
                             "fields": [{"name": "x", "type": "buffer", "size": 3}]}]}
    s += vmdesc([], configuration=conf)
    d = decode_bytes(s)
    assert d.complete and d.machine == "pc-q35-10.0"
    with pytest.raises(StreamDecodeError, match="unknown configuration subsection"):
        decode_bytes(s[:s.index(b"\x00\x06")] + b"\x00")


def test_xbzrle_and_compressed_pages():
    s = header()
    s += start_or_full(0x01, 2, "ram", 0, 4) + ram_setup([("pc.ram", 2 * PAGE)]) + footer(2)
    s += part_or_end(0x03, 2)
    s += be64(0 | 0x40) + counted("pc.ram") + b"\x01" + struct.pack(">H", 5) + b"abcde"
    s += be64(PAGE | 0x100 | 0x20) + be32(3) + b"xyz"
    s += EOS + footer(2) + b"\x00"
    d = decode_bytes(s)
    assert d.complete and (d.ram.xbzrle, d.ram.compressed) == (1, 1)


def test_mapped_ram_layout():
    """10.0 mapped-ram: header after each block entry, stream resumes after the
    block's page area (mapped_ram_setup_ramblock)."""
    s = bytearray(header("pc-q35-10.0", subsection("configuration/capabilities",
                                                   be32(1) + counted("mapped-ram"))))
    s += start_or_full(0x01, 2, "ram", 0, 4) + be64(4 * PAGE | 0x04) + counted("pc.ram") \
        + be64(4 * PAGE)
    hdr_at = len(s)
    bitmap_at = hdr_at + 28
    pages_at = 1 << 20
    s += struct.pack(">IQQQ", 1, PAGE, bitmap_at, pages_at)
    s += b"\x05" + bytes(7)                 # bitmap: pages 0 and 2 present (host-endian long)
    s += bytes(pages_at - len(s))
    s += b"\x11" * (4 * PAGE)
    s += EOS + footer(2)
    s += part_or_end(0x03, 2) + EOS + footer(2) + b"\x00"
    d = decode_bytes(bytes(s))
    assert d.complete and d.mapped_ram
    m = d.ram_blocks[0].mapped
    assert m is not None and (m.pages_offset, m.bitmap_offset, m.pages_present) == \
        (pages_at, bitmap_at, 2)
    assert d.ram.pages == 0
    assert d.sections[1].offset == pages_at + 4 * PAGE + 8 + 5


@pytest.mark.parametrize("cut,what", [
    (3, "file magic"), (10, "configuration"), (40, "RAM"), (200, "RAM page")])
def test_truncated_stream_error_has_offset(cut, what):
    data = stream()
    with pytest.raises(StreamDecodeError, match="truncated") as err:
        decode_bytes(data[:cut])
    assert 0 <= err.value.offset <= cut
    assert f"offset {err.value.offset:#x}" in str(err.value)
    assert err.value.partial is not None and not err.value.partial.complete


def test_truncated_before_eof_and_inside_description():
    data = stream()
    d = decode_bytes(data)
    with pytest.raises(StreamDecodeError, match="before QEMU_VM_EOF") as err:
        decode_bytes(data[:d.eof_offset])
    assert err.value.offset == d.eof_offset
    with pytest.raises(StreamDecodeError, match="VM description") as err:
        decode_bytes(data[:d.vmdesc_offset + 20])
    assert err.value.offset == d.vmdesc_offset + 5


@pytest.mark.parametrize("mutate,match,where", [
    (lambda b: b"XXXX" + b[4:], "not a QEMU migration stream", lambda d: 0),
    (lambda b: b[:4] + be32(2) + b[8:], "version 2", lambda d: 4),
    (lambda b: b[:4] + be32(9) + b[8:], "unknown stream version", lambda d: 4),
])
def test_garbage_header(mutate, match, where):
    data = stream()
    with pytest.raises(StreamDecodeError, match=match) as err:
        decode_bytes(mutate(data))
    assert err.value.offset == where(None)


def test_corrupt_section_type_and_footer():
    data = bytearray(stream())
    d = decode_bytes(bytes(data))
    slirp = d.sections[4]
    bad = bytearray(data)
    bad[slirp.offset] = 0x42
    with pytest.raises(StreamDecodeError, match="unknown section type byte 0x42") as err:
        decode_bytes(bytes(bad))
    assert err.value.offset == slirp.offset
    # A RAM footer naming another section: the RAM data was misparsed.
    ram_end = d.sections[2]
    bad = bytearray(data)
    foot = ram_end.offset + ram_end.size - 4
    bad[foot:foot + 4] = be32(99)
    with pytest.raises(StreamDecodeError, match="names section 99") as err:
        decode_bytes(bytes(bad))
    assert err.value.offset == foot - 1
    # Unknown RAM flags.
    bad = bytearray(data)
    part = d.sections[1]
    bad[part.body_offset:part.body_offset + 8] = be64(0x01)
    with pytest.raises(StreamDecodeError, match="RAM flags 0x1") as err:
        decode_bytes(bytes(bad))
    assert err.value.offset == part.body_offset


def test_random_garbage_and_empty(tmp_path):
    with pytest.raises(StreamDecodeError, match="not a QEMU migration stream"):
        decode_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(StreamDecodeError, match="empty"):
        decode_stream(empty)
    d = decode_stream(tmp_path / "missing", strict=False)
    assert not d.complete and "cannot open" in (d.error or "")


def test_non_strict_returns_partial():
    data = stream()
    d = decode_bytes(data[:300], strict=False)
    assert not d.complete and d.error and d.error_offset is not None
    assert "INCOMPLETE" in d.summary()


def test_section_vmsd_name():
    assert section_vmsd_name("0000:00:1f.2/ich9_ahci") == "ich9_ahci"
    assert section_vmsd_name("apic") == "apic"


# ---------------------------------------------------------------- coverage


def _decoded(full: list[tuple[str, int, str | None]], complete: bool = True) -> DecodedStream:
    """A DecodedStream with the given (idstr, instance, vmsd_name) FULL sections."""
    s = header()
    s += start_or_full(0x01, 1, "ram", 0, 4) + ram_setup([("ram0", PAGE)]) + footer(1)
    devices = []
    for i, (idstr, inst, vmsd) in enumerate(full, start=10):
        s += start_or_full(0x04, i, idstr, inst, 1) + b"\x00" * 4 + footer(i)
        entry = {"name": idstr, "instance_id": inst,
                 "fields": [{"name": "x", "type": "uint32", "size": 4}]}
        if vmsd:
            entry["vmsd_name"] = vmsd
        devices.append(entry)
    s += b"\x00" + vmdesc(devices)
    return decode_bytes(s, strict=False) if complete else decode_bytes(s[:-200], strict=False)


def _dump(**names: str) -> dict:
    return {"vmschkmachine": {"Name": "m"},
            **{t: {"Name": t, "Description": {"name": n}} for t, n in names.items()}}


def test_stream_coverage_e2k_like():
    nodes = {"/machine/unattached/device[0]": "e8c",
             "/machine/unattached/device[0]/lapic": "apic",
             "/machine/unattached/device[1]": "e8c",
             "/machine/unattached/device[1]/lapic": "apic",
             "/machine/unattached/device[2]": "iohub",
             "/machine/iohub": "iohub-pcihost",
             "/machine/unattached/device[4]/escc": "escc"}
    dec = _decoded([("timer", 0, "timer"), ("cpu_common", 0, "cpu_common"),
                    ("cpu_common", 1, "cpu_common"), ("PCIHost", 0, "PCIHost"),
                    ("PCIBUS", 0, "PCIBUS"), ("escc", 0, "escc"), ("globalstate", 0, None)])
    dump = _dump(**{"iohub-pcihost": "PCIHost", "escc": "escc"})
    sc = stream_coverage(nodes, dec, "e2k", dump, set(nodes.values()) - {"e8c"}, {"e8c"})
    state = {e["path"]: e["state"] for e in sc["devices"]}
    assert state["/machine/unattached/device[0]"] == CPU_COMMON_ONLY
    assert state["/machine/unattached/device[1]/lapic"] == NO_VMSTATE
    assert state["/machine/iohub"] == IN_STREAM and state["/machine/unattached/device[2]"] \
        == NO_VMSTATE
    assert not sc["passed"]
    assert sc["summary"] == ("saved stream: 2 of 7 devices have a section; no VMState in the "
                             "stream: e8c CPU (cpu_common only) x2, apic x2, iohub")
    assert {u["idstr"] for u in sc["unmatched_sections"]} == {"ram", "timer", "PCIBUS",
                                                              "globalstate"}


def test_stream_coverage_x86_like():
    nodes = {"/machine/unattached/device[0]": "qemu64-x86_64-cpu",
             "/machine/unattached/device[0]/lapic": "apic",
             "/machine/unattached/device[2]": "qemu64-x86_64-cpu",
             "/machine/unattached/device[2]/lapic": "apic",
             "/machine/unattached/device[10]": "isa-serial",
             "/machine/unattached/device[10]/serial": "serial",
             "/machine/unattached/device[11]": "ich9-ahci",
             "/machine/unattached/device[12]": "smbus-eeprom",
             "/machine/unattached/device[13]": "mystery"}
    cpu = "qemu64-x86_64-cpu"
    dec = _decoded([("cpu_common", 0, "cpu_common"), ("cpu", 0, "cpu"), ("apic", 0, "apic"),
                    ("cpu_common", 1, "cpu_common"), ("cpu", 1, "cpu"), ("apic", 1, "apic"),
                    ("serial", 0, "serial"), ("0000:00:1f.2/ich9_ahci", 0, None),
                    ("mystery", 0, None)])
    dump = _dump(**{"isa-serial": "serial", "ich9-ahci": "ich9_ahci",
                    "smbus-eeprom": "smbus-eeprom"})
    sc = stream_coverage(nodes, dec, "x86_64", dump, set(nodes.values()) - {cpu}, {cpu})
    by = {e["path"]: e for e in sc["devices"]}
    assert by["/machine/unattached/device[0]"]["sections"] == ["cpu#0", "cpu_common#0"]
    assert by["/machine/unattached/device[2]"]["sections"] == ["cpu#1", "cpu_common#1"]
    assert by["/machine/unattached/device[2]/lapic"]["sections"] == ["apic#1"]
    assert by["/machine/unattached/device[10]"]["sections"] == ["serial#0"]
    assert by["/machine/unattached/device[10]/serial"]["state"] == CARRIED
    assert by["/machine/unattached/device[11]"]["sections"] == ["0000:00:1f.2/ich9_ahci#0"]
    assert by["/machine/unattached/device[12]"]["state"] == NOT_SENT
    # Rule 4: a type without a known VMState takes a section named like it.
    assert by["/machine/unattached/device[13]"]["state"] == IN_STREAM
    assert sc["passed"] and sc["unmatched_sections"] == [
        {"idstr": "ram", "instance_id": 0, "kind": "iterable",
         "why": "guest RAM blocks (iterable section, migration/ram.c)"}]
    assert sc["summary"] == ("saved stream: 7 of 9 devices have a section, 1 carried by "
                             "their parent; VMState not sent: smbus-eeprom")
