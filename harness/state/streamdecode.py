"""Decode a migration stream that QEMU saved to a file.

What ``migrate`` writes to ``exec:cat > FILE`` (every version) or to
``file:FILE`` (QEMU >= 8.2) is the same byte stream a socket would carry.
This module walks it section by section without loading it into memory (the
file is mmap'ed; only headers, RAM page headers and the trailing JSON are
copied out) and says what is in it: the stream version, the machine type of
the configuration section, every section with its id, idstr, instance, version,
kind and byte range, the RAM blocks and page counts, and the VM description
JSON QEMU appends after the end of the stream.

The layout, as the C source writes it (QEMU 6.0, 7.2 and 10.0 agree unless
noted; big-endian throughout):

* Header (``qemu_savevm_state_header``, migration/savevm.c): be32
  ``QEMU_VM_FILE_MAGIC`` 0x5145564d ("QEVM"), be32 ``QEMU_VM_FILE_VERSION`` 3.
  Then, when the migration property ``send-configuration`` is on (default true:
  ``migration_properties`` in migration/migration.c of 6.0 and 7.2,
  migration/options.c of 10.0; ``hw_compat_2_3`` in hw/core/machine.c turns
  it and the footers off for 2.3 and older machine types), byte
  ``QEMU_VM_CONFIGURATION`` 0x07 and the
  ``vmstate_configuration`` VMState: be32 length, the machine type name, and
  optional subsections (``configuration/target-page-bits``: be32;
  ``configuration/capabilities``: be32 count, then each a byte length and a
  capability name, ``get_capability``; ``configuration/uuid``: 16 bytes).
  Only "validatable" capabilities are listed there
  (``should_validate_capability``): x-ignore-shared, and mapped-ram in 10.0.
* Sections (``save_section_header``, migration/savevm.c): a type byte,
  ``QEMU_VM_SECTION_START`` 0x01 / ``PART`` 0x02 / ``END`` 0x03 / ``FULL``
  0x04, be32 section id; START and FULL add a byte length, the idstr, be32
  instance id and be32 version id.  The idstr is ``<qdev path>/<vmsd name>``
  for a device with a bus path (e.g. ``0000:00:1f.2/ich9_ahci``) and the bare
  vmsd name otherwise (``vmstate_register_with_alias_id``: instance ids then
  count up per idstr, ``calculate_new_instance_id``).  When the property
  ``send-section-footer`` is on (default true, same places) each section ends with
  ``QEMU_VM_SECTION_FOOTER`` 0x7e and the be32 section id again
  (``save_section_footer``; checked by ``check_section_footer`` on load).
* Iterable sections (RAM) come as START (``qemu_savevm_state_setup``), any
  number of PART (``qemu_savevm_state_iterate``) and one END
  (``qemu_savevm_state_complete_precopy_iterable``); device state as one FULL
  section each (``qemu_savevm_state_complete_precopy_non_iterable``; 10.0 also
  writes ``early_setup`` devices as FULL sections during setup).
* ``QEMU_VM_COMMAND`` 0x08: be16 command, be16 length, data
  (``qemu_savevm_command_send``).  10.0 sends ``SWITCHOVER_START`` (11) in
  plain precopy (``qemu_savevm_maybe_send_switchover_start``).
* ``QEMU_VM_EOF`` 0x00 ends the stream; then, unless the machine suppresses it
  (``should_send_vmdesc``), byte ``QEMU_VM_VMDESCRIPTION`` 0x06, be32 length
  and a JSON object: ``{"page_size": N, "devices": [...]}`` (6.0, 7.2); 10.0
  puts a ``"configuration"`` description first (``qemu_savevm_state_header``
  starts the object).  Each device is ``{"name": idstr, "instance_id": N, ...}``
  with either ``"size"`` (old-style ``save_state`` handlers,
  ``vmstate_save_old_style``) or ``vmsd_name``/``version``/``fields`` (each
  field with the bytes it wrote, ``"array_len"`` when an array's elements were
  folded into one entry) and ``subsections`` (``vmstate_save_state_v``,
  ``vmsd_desc_field_end``, ``vmstate_subsection_save`` in migration/vmstate.c).
* Subsections inside a device's state: byte ``QEMU_VM_SUBSECTION`` 0x05, byte
  length, name, be32 version, then its fields (``vmstate_subsection_save``).

Device sections carry no length.  The walk therefore gets each FULL section's
length from the trailing JSON (found first, from the end of the file: the
sum of its fields' sizes plus 6 + len(name) bytes per subsection header) and
checks it against the section footer; without the JSON (or where it does not
fit) it searches for the section's footer followed by a plausible next
section.  A stream saved without both cannot be walked past its first device
section, which is reported as an error.

RAM sections (idstr "ram") have their own format (``ram_save_setup``,
``save_page_header``, ``save_zero_page``, ``save_normal_page``,
``ram_save_iterate``, ``ram_save_complete`` in migration/ram.c; read back by
``ram_load_precopy``): a sequence of be64 words, a page offset with flags in
its low bits (below 0x400, as ram.h explains):

* ``RAM_SAVE_FLAG_MEM_SIZE`` 0x04: the total RAM size; then per block a byte
  length, the block idstr and be64 used length until the total is reached
  (x-ignore-shared adds be64 guest address; postcopy-ram may add a be64 page
  size, which a saved stream never has: postcopy needs a live destination);
  with mapped-ram (10.0, ``mapped_ram_setup_ramblock``) each block entry is
  followed by a 28-byte header (be32 version 1, be64 page size, be64 bitmap
  offset, be64 pages offset) and the stream continues at pages offset + block
  length: pages are written at fixed file offsets, not in the stream;
* ``RAM_SAVE_FLAG_ZERO`` 0x02: one fill byte; ``RAM_SAVE_FLAG_PAGE`` 0x08: one
  target page; ``RAM_SAVE_FLAG_XBZRLE`` 0x40: byte encoding, be16 length,
  data; ``RAM_SAVE_FLAG_COMPRESS_PAGE`` 0x100 (6.0, 7.2; removed in 9.1 as
  migration/ram.h of 10.0 says): be32 length, data.
  Each is preceded by the block's byte length + idstr unless
  ``RAM_SAVE_FLAG_CONTINUE`` 0x20 says "same block as before";
* ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` 0x200 (10.0; not in 6.0 or 7.2): nothing follows;
  ``RAM_SAVE_FLAG_EOS`` 0x10 ends the section's RAM data.
  ``RAM_SAVE_FLAG_HOOK`` 0x80 is RDMA-only and never in a file.

The target page size comes from the JSON's ``page_size``, else the
``configuration/target-page-bits`` subsection, else 4096.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StreamDecodeError", "DecodedStream", "Section", "RamBlockInfo", "RamPages",
           "MappedRamBlock", "Command", "decode_stream", "section_vmsd_name"]

# migration/savevm.h
MAGIC = 0x5145564D
FILE_VERSION = 3
FILE_VERSION_COMPAT = 2
VM_EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SUBSECTION = 0x05
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
COMMAND = 0x08
SECTION_FOOTER = 0x7E

KINDS = {SECTION_START: "start", SECTION_PART: "part", SECTION_END: "end",
         SECTION_FULL: "full"}

# migration/ram.c (6.0, 7.2), migration/ram.h (10.0)
RAM_ZERO = 0x002
RAM_MEM_SIZE = 0x004
RAM_PAGE = 0x008
RAM_EOS = 0x010
RAM_CONTINUE = 0x020
RAM_XBZRLE = 0x040
RAM_HOOK = 0x080
RAM_COMPRESS_PAGE = 0x100
RAM_MULTIFD_FLUSH = 0x200
RAM_FLAG_MASK = 0x3FF
MAPPED_RAM_HEADER = struct.Struct(">IQQQ")      # struct MappedRamHeader, QEMU_PACKED

# enum qemu_vm_cmd, migration/savevm.c (same numbering in 6.0, 7.2, 10.0;
# SWITCHOVER_START is new in 10.0)
COMMANDS = {0: "INVALID", 1: "OPEN_RETURN_PATH", 2: "PING", 3: "POSTCOPY_ADVISE",
            4: "POSTCOPY_LISTEN", 5: "POSTCOPY_RUN", 6: "POSTCOPY_RAM_DISCARD",
            7: "PACKAGED", 8: "ENABLE_COLO", 9: "POSTCOPY_RESUME", 10: "RECV_BITMAP",
            11: "SWITCHOVER_START"}
CMD_PACKAGED = 7

DEFAULT_PAGE_SIZE = 4096
#: How far back from the end of the file the VM description is looked for.
VMDESC_SEARCH_WINDOW = 32 << 20


class StreamDecodeError(Exception):
    """The stream cannot be decoded past ``offset``.

    ``partial`` is what was decoded up to there (a :class:`DecodedStream`
    with ``complete`` False), when anything was."""

    def __init__(self, message: str, offset: int, partial: "DecodedStream | None" = None) -> None:
        super().__init__(f"{message} (at offset {offset:#x} = {offset})")
        self.reason = message
        self.offset = offset
        self.partial = partial


@dataclass
class MappedRamBlock:
    """A RAM block's mapped-ram header: its pages live at fixed file offsets."""

    version: int
    page_size: int
    bitmap_offset: int
    pages_offset: int
    #: Pages marked present in the block's bitmap (None if unreadable).
    pages_present: int | None = None


@dataclass
class RamBlockInfo:
    idstr: str
    length: int
    offset: int                      # where the block's entry starts in the stream
    guest_address: int | None = None  # x-ignore-shared only
    mapped: MappedRamBlock | None = None


@dataclass
class RamPages:
    """Page records of one RAM section (or of the whole stream)."""

    pages: int = 0          # RAM_SAVE_FLAG_PAGE: full pages in the stream
    zero: int = 0           # RAM_SAVE_FLAG_ZERO
    xbzrle: int = 0
    compressed: int = 0
    multifd_flush: int = 0
    per_block: dict[str, int] = field(default_factory=dict)

    def add(self, other: "RamPages") -> None:
        self.pages += other.pages
        self.zero += other.zero
        self.xbzrle += other.xbzrle
        self.compressed += other.compressed
        self.multifd_flush += other.multifd_flush
        for k, v in other.per_block.items():
            self.per_block[k] = self.per_block.get(k, 0) + v


@dataclass
class Section:
    section_id: int
    idstr: str
    instance_id: int | None
    version_id: int | None
    kind: str                     # start / part / end / full
    offset: int                   # of the section type byte
    body_offset: int
    body_size: int | None = None
    #: From the type byte to the end of the footer (or of the body).
    size: int | None = None
    footer: bool | None = None    # footer present and naming this section
    #: How the body's length was known: "ram" (walked), "vmdesc" (JSON sizes),
    #: "footer-scan" (searched for the footer), or None.
    size_from: str | None = None
    vmsd_name: str | None = None  # from the VM description
    ram: RamPages | None = None

    @property
    def name(self) -> str:
        """The vmsd name: the description's, else the idstr after its qdev path."""
        return self.vmsd_name or section_vmsd_name(self.idstr)


@dataclass
class Command:
    offset: int
    cmd: int
    name: str
    length: int


@dataclass
class DecodedStream:
    path: str
    file_size: int
    version: int | None = None
    machine: str | None = None
    target_page_bits: int | None = None
    capabilities: list[str] = field(default_factory=list)
    uuid: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    sections: list[Section] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    ram_blocks: list[RamBlockInfo] = field(default_factory=list)
    ram: RamPages = field(default_factory=RamPages)
    mapped_ram: bool = False
    footers: bool | None = None
    eof_offset: int | None = None
    vmdesc_found: bool = False
    vmdesc_offset: int | None = None
    vmdesc: dict[str, Any] | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    error: str | None = None
    error_offset: int | None = None
    notes: list[str] = field(default_factory=list)

    def device_sections(self) -> list[Section]:
        """FULL sections: device (non-iterable) state."""
        return [s for s in self.sections if s.kind == "full"]

    def section_names(self) -> list[tuple[str, int | None]]:
        """(idstr, instance id) of every START/FULL section, in stream order."""
        return [(s.idstr, s.instance_id) for s in self.sections if s.kind in ("start", "full")]

    def to_dict(self, with_vmdesc: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_vmdesc:
            d.pop("vmdesc")
            d["devices"] = [{"name": x.get("name"), "instance_id": x.get("instance_id"),
                             "vmsd_name": x.get("vmsd_name")} for x in self.devices]
        return d

    def summary(self) -> str:
        full = len(self.device_sections())
        iters = sorted({s.idstr for s in self.sections if s.kind != "full"})
        head = (f"stream v{self.version} ({self.machine or 'no configuration section'}): "
                f"{full} device sections, iterable {', '.join(iters) or 'none'}; "
                f"{self.ram.pages} RAM pages, {self.ram.zero} zero pages"
                + (", mapped-ram" if self.mapped_ram else "")
                + ("; VM description found" if self.vmdesc_found else "; no VM description"))
        if not self.complete:
            head += f"; INCOMPLETE: {self.error}"
        return head


def section_vmsd_name(idstr: str) -> str:
    """The vmsd name in a section idstr: what follows the qdev path, if any.

    ``0000:00:1f.2/ich9_ahci`` -> ``ich9_ahci``; ``apic`` -> ``apic``.  (A vmsd
    name containing '/' would be cut; use the VM description's vmsd_name
    where the stream has one.)"""
    return idstr.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------


class _Walker:
    def __init__(self, mm: "mmap.mmap | bytes", size: int, info: DecodedStream) -> None:
        self.mm = mm
        self.size = size
        self.info = info
        self.iterables: dict[int, Section] = {}      # section id -> its START
        self.desc_by_key: dict[tuple[str, int], dict[str, Any]] = {}
        self.last_block: str | None = None
        self.scanned: list[str] = []          # sections sized by searching for a footer
        self.vmdesc_range: tuple[int, int] | None = None

    # -- primitive reads ---------------------------------------------------
    def need(self, pos: int, n: int, what: str) -> None:
        if n < 0 or pos + n > self.size:
            raise StreamDecodeError(
                f"stream truncated: {what} needs {n} bytes but the file ends at {self.size}",
                pos)

    def u8(self, pos: int, what: str) -> int:
        self.need(pos, 1, what)
        return self.mm[pos]

    def be16(self, pos: int, what: str) -> int:
        self.need(pos, 2, what)
        return struct.unpack_from(">H", self.mm, pos)[0]

    def be32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return struct.unpack_from(">I", self.mm, pos)[0]

    def be64(self, pos: int, what: str) -> int:
        self.need(pos, 8, what)
        return struct.unpack_from(">Q", self.mm, pos)[0]

    def text(self, pos: int, n: int, what: str) -> str:
        self.need(pos, n, what)
        raw = bytes(self.mm[pos:pos + n])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise StreamDecodeError(f"{what} is not ASCII: {raw[:40]!r}", pos) from None

    def counted(self, pos: int, what: str) -> tuple[str, int]:
        """A byte length and that many characters; returns (text, next pos)."""
        n = self.u8(pos, f"length of {what}")
        return self.text(pos + 1, n, what), pos + 1 + n

    # -- the trailing VM description ---------------------------------------
    def find_vmdesc(self) -> None:
        """Locate ``EOF, VMDESCRIPTION, be32 len, JSON`` ending at the end of file."""
        lo = max(0, self.size - VMDESC_SEARCH_WINDOW)
        end = self.size
        while True:
            c = self.mm.rfind(b"{", lo, end)
            if c < 6:
                return
            end = c
            if self.mm[c - 5] != VMDESCRIPTION or self.mm[c - 6] != VM_EOF:
                continue
            if struct.unpack_from(">I", self.mm, c - 4)[0] != self.size - c:
                continue
            try:
                desc = json.loads(bytes(self.mm[c:self.size]).decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(desc, dict) and isinstance(desc.get("devices"), list):
                self.use_vmdesc(desc, c - 5)
                return

    def use_vmdesc(self, desc: dict[str, Any], offset: int) -> None:
        info = self.info
        info.vmdesc_found = True
        info.vmdesc_offset = offset
        info.vmdesc = desc
        info.devices = [d for d in desc["devices"] if isinstance(d, dict)]
        self.vmdesc_range = (offset, self.size)
        for d in info.devices:
            key = (str(d.get("name")), int(d.get("instance_id", 0)))
            self.desc_by_key.setdefault(key, d)
        if isinstance(desc.get("page_size"), int) and desc["page_size"] > 0:
            info.page_size = desc["page_size"]

    # -- header and configuration -------------------------------------------
    def header(self) -> int:
        magic = self.be32(0, "file magic")
        if magic != MAGIC:
            raise StreamDecodeError(f"not a QEMU migration stream: magic {magic:#010x}, "
                                    f"expected {MAGIC:#010x} ('QEVM')", 0)
        version = self.be32(4, "file version")
        self.info.version = version
        if version == FILE_VERSION_COMPAT:
            # qemu_loadvm_state refuses it too ("SaveVM v2 format is obsolete").
            raise StreamDecodeError("stream version 2 (QEMU_VM_FILE_VERSION_COMPAT, an "
                                    "obsolete layout QEMU itself no longer loads) is not "
                                    "supported", 4)
        if version != FILE_VERSION:
            raise StreamDecodeError(f"unknown stream version {version}", 4)
        pos = 8
        if self.size > pos and self.mm[pos] == CONFIGURATION:
            pos = self.configuration(pos + 1)
        return pos

    def configuration(self, pos: int) -> int:
        """vmstate_configuration (migration/savevm.c): be32 len, name, subsections."""
        n = self.be32(pos, "configuration name length")
        if n > 256:
            raise StreamDecodeError(f"configuration name length {n} is implausible", pos)
        self.info.machine = self.text(pos + 4, n, "machine type name")
        pos += 4 + n
        while pos < self.size and self.mm[pos] == SUBSECTION:
            start = pos
            name, pos = self.counted(pos + 1, "configuration subsection name")
            pos += 4                                          # be32 version
            self.need(start, pos - start, "configuration subsection header")
            if name == "configuration/target-page-bits":
                self.info.target_page_bits = self.be32(pos, "target page bits")
                pos += 4
            elif name == "configuration/capabilities":
                count = self.be32(pos, "capability count")
                pos += 4
                if count > 1024:
                    raise StreamDecodeError(f"capability count {count} is implausible", pos - 4)
                for _ in range(count):
                    cap, pos = self.counted(pos, "capability name")
                    self.info.capabilities.append(cap)
            elif name == "configuration/uuid":
                self.need(pos, 16, "uuid")
                self.info.uuid = bytes(self.mm[pos:pos + 16]).hex()
                pos += 16
            else:
                size = self._config_sub_size(name)
                if size is None:
                    raise StreamDecodeError(
                        f"unknown configuration subsection '{name}' and no VM description "
                        f"to size it", start)
                self.need(pos, size, f"configuration subsection '{name}'")
                pos += size
        if self.info.target_page_bits and not self.info.vmdesc_found:
            self.info.page_size = 1 << self.info.target_page_bits
        if "mapped-ram" in self.info.capabilities:
            self.info.mapped_ram = True
        return pos

    def _config_sub_size(self, name: str) -> int | None:
        conf = (self.info.vmdesc or {}).get("configuration")
        if not isinstance(conf, dict):
            return None
        for sub in conf.get("subsections", []) or []:
            if sub.get("vmsd_name") == name:
                return vmdesc_body_size(sub)
        return None

    # -- the section loop -----------------------------------------------------
    def walk(self) -> None:
        info = self.info
        pos = self.header()
        while True:
            if pos >= self.size:
                raise StreamDecodeError("stream ends before QEMU_VM_EOF", pos)
            kind = self.mm[pos]
            if kind in (SECTION_START, SECTION_FULL):
                pos = self.section_full_or_start(pos, kind)
            elif kind in (SECTION_PART, SECTION_END):
                pos = self.section_part_or_end(pos, kind)
            elif kind == COMMAND:
                pos = self.command(pos)
            elif kind == VM_EOF:
                info.eof_offset = pos
                pos += 1
                break
            else:
                raise StreamDecodeError(f"unknown section type byte {kind:#04x}", pos)
        self.after_eof(pos)
        info.complete = True

    def after_eof(self, pos: int) -> None:
        info = self.info
        if pos == self.size:
            if info.vmdesc_found:   # cannot happen: the JSON lies after EOF
                info.notes.append("VM description located but the walk ended at the end of file")
            else:
                info.notes.append("no VM description after QEMU_VM_EOF (suppressed or "
                                  "a postcopy stream)")
            return
        if self.mm[pos] != VMDESCRIPTION:
            raise StreamDecodeError(f"byte {self.mm[pos]:#04x} after QEMU_VM_EOF: expected "
                                    f"QEMU_VM_VMDESCRIPTION or end of file", pos)
        n = self.be32(pos + 1, "VM description length")
        self.need(pos + 5, n, "VM description")
        if not info.vmdesc_found or info.vmdesc_offset != pos:
            try:
                desc = json.loads(bytes(self.mm[pos + 5:pos + 5 + n]).decode("utf-8", "replace"))
            except ValueError as exc:
                raise StreamDecodeError(f"VM description is not valid JSON: {exc}", pos + 5) \
                    from None
            if not isinstance(desc, dict):
                raise StreamDecodeError("VM description is not a JSON object", pos + 5)
            desc.setdefault("devices", [])
            self.use_vmdesc(desc, pos)
        if pos + 5 + n != self.size:
            info.notes.append(f"{self.size - pos - 5 - n} bytes after the VM description")

    def command(self, pos: int) -> int:
        cmd = self.be16(pos + 1, "command")
        n = self.be16(pos + 3, "command length")
        self.need(pos + 5, n, "command data")
        name = COMMANDS.get(cmd, f"unknown-{cmd}")
        self.info.commands.append(Command(pos, cmd, name, n))
        end = pos + 5 + n
        if cmd == CMD_PACKAGED and n == 4:
            # Postcopy's wrapped stream (loadvm_handle_cmd_packaged): skipped
            # whole; a stream saved to a file never has one.
            inner = self.be32(pos + 5, "package length")
            self.need(end, inner, "packaged stream")
            self.info.notes.append(f"packaged sub-stream of {inner} bytes at {end:#x} not decoded")
            end += inner
        return end

    def section_full_or_start(self, pos: int, kind: int) -> int:
        sid = self.be32(pos + 1, "section id")
        idstr, p = self.counted(pos + 5, "section idstr")
        instance = self.be32(p, "instance id")
        version = self.be32(p + 4, "version id")
        body = p + 8
        sec = Section(sid, idstr, instance, version, KINDS[kind], pos, body)
        self.info.sections.append(sec)
        if kind == SECTION_START:
            self.iterables[sid] = sec
        return self.body(sec)

    def section_part_or_end(self, pos: int, kind: int) -> int:
        sid = self.be32(pos + 1, "section id")
        start = self.iterables.get(sid)
        if start is None:
            raise StreamDecodeError(f"{KINDS[kind]} section {sid} has no START section", pos)
        sec = Section(sid, start.idstr, start.instance_id, start.version_id, KINDS[kind],
                      pos, pos + 5)
        self.info.sections.append(sec)
        return self.body(sec)

    def body(self, sec: Section) -> int:
        """Find the end of a section's body; check its footer; return the next pos."""
        end: int | None = None
        if sec.kind != "full" and sec.idstr == "ram":
            sec.ram = RamPages()
            end = self.ram(sec, sec.body_offset)
            sec.size_from = "ram"
        elif sec.kind == "full":
            desc = self.desc_for(sec)
            if desc is not None:
                size = device_body_size(desc)
                if size is not None and self.footer_ok(sec, sec.body_offset + size):
                    end = sec.body_offset + size
                    sec.size_from = "vmdesc"
        if end is None:
            end = self.scan_footer(sec)
            sec.size_from = "footer-scan"
        sec.body_size = end - sec.body_offset
        return self.footer(sec, end)

    def desc_for(self, sec: Section) -> dict[str, Any] | None:
        d = self.desc_by_key.get((sec.idstr, sec.instance_id or 0))
        if d is not None:
            if isinstance(d.get("vmsd_name"), str):
                sec.vmsd_name = d["vmsd_name"]
        return d

    def footer_ok(self, sec: Section, end: int) -> bool:
        """Whether the body may end at ``end``: a footer naming the section, or,
        in a stream without footers, a plausible next section."""
        if self.info.footers is not False:
            if end + 5 <= self.size and self.mm[end] == SECTION_FOOTER and \
                    struct.unpack_from(">I", self.mm, end + 1)[0] == sec.section_id:
                return True
            if self.info.footers:
                return False
        return self.plausible_next(end)

    def footer(self, sec: Section, end: int) -> int:
        info = self.info
        has = (end + 5 <= self.size and self.mm[end] == SECTION_FOOTER)
        if has:
            fid = struct.unpack_from(">I", self.mm, end + 1)[0]
            if fid != sec.section_id:
                raise StreamDecodeError(
                    f"footer of section {sec.section_id} ('{sec.idstr}') names section {fid}: "
                    f"the section's data was misparsed or corrupt", end)
            sec.footer = True
            if info.footers is None:
                info.footers = True
            end += 5
        else:
            if info.footers:
                what = self.u8(end, "section footer") if end < self.size else None
                raise StreamDecodeError(
                    f"section {sec.section_id} ('{sec.idstr}') has no footer "
                    f"(found {what:#04x} instead of 0x7e)" if what is not None else
                    f"stream truncated after section {sec.section_id} ('{sec.idstr}')", end)
            sec.footer = False
            if info.footers is None:
                info.footers = False
        sec.size = end - sec.offset
        return end

    def plausible_next(self, pos: int) -> bool:
        """Does what starts at ``pos`` look like the next top-level record?

        A record cut off by the end of the file counts when what is there
        fits: the walk then reports the truncation where it is, not at the
        start of the section before it."""
        if pos >= self.size:
            return pos == self.size
        b = self.mm[pos]
        if b == VM_EOF:
            return pos + 1 == self.size or self.mm[pos + 1] == VMDESCRIPTION
        if b in (SECTION_FULL, SECTION_START):
            if pos + 6 > self.size:
                return True
            n = self.mm[pos + 5]
            if n == 0:
                return False
            name = bytes(self.mm[pos + 6:min(pos + 6 + n, self.size)])
            return all(0x20 < c < 0x7F for c in name)
        if b in (SECTION_PART, SECTION_END):
            return pos + 5 > self.size or \
                struct.unpack_from(">I", self.mm, pos + 1)[0] in self.iterables
        if b == COMMAND:
            return pos + 3 > self.size or \
                struct.unpack_from(">H", self.mm, pos + 1)[0] in COMMANDS
        return False

    def scan_footer(self, sec: Section) -> int:
        """Search for this section's footer followed by a plausible next record."""
        if self.info.footers is False:
            raise StreamDecodeError(
                f"cannot find the end of section {sec.section_id} ('{sec.idstr}'): device "
                f"sections carry no length, the stream has no section footers and "
                + ("the VM description does not fit it" if self.info.vmdesc_found
                   else "no VM description"), sec.body_offset)
        pat = bytes([SECTION_FOOTER]) + struct.pack(">I", sec.section_id)
        limit = self.vmdesc_range[0] if self.vmdesc_range else self.size
        at = sec.body_offset
        while True:
            at = self.mm.find(pat, at, limit)
            if at < 0:
                raise StreamDecodeError(
                    f"cannot find the end of section {sec.section_id} ('{sec.idstr}'): "
                    f"no footer for it "
                    + ("and the VM description does not fit it" if self.info.vmdesc_found
                       else "and no VM description (the stream may be truncated)"),
                    sec.body_offset)
            if self.plausible_next(at + 5):
                self.scanned.append(sec.idstr)
                return at
            at += 1

    # -- RAM --------------------------------------------------------------------
    def ram(self, sec: Section, pos: int) -> int:
        info = self.info
        pages = sec.ram
        assert pages is not None
        psize = info.page_size
        mm = self.mm
        unpack = struct.unpack_from
        per_block = pages.per_block
        while True:
            self.need(pos, 8, "RAM record")
            word = unpack(">Q", mm, pos)[0]
            flags = word & RAM_FLAG_MASK
            rec = pos
            pos += 8
            base = flags & ~RAM_CONTINUE
            if base in (RAM_ZERO, RAM_PAGE, RAM_XBZRLE, RAM_COMPRESS_PAGE):
                if flags & RAM_CONTINUE:
                    if self.last_block is None:
                        raise StreamDecodeError("RAM page says 'same block' before any block "
                                                "was named", rec)
                else:
                    self.need(pos, 1, "RAM block name length")
                    n = mm[pos]
                    self.last_block = self.text(pos + 1, n, "RAM block name")
                    pos += 1 + n
                blk = self.last_block
                if base == RAM_ZERO:
                    self.need(pos, 1, "zero page fill byte")
                    pos += 1
                    pages.zero += 1
                elif base == RAM_PAGE:
                    self.need(pos, psize, "RAM page")
                    pos += psize
                    pages.pages += 1
                elif base == RAM_XBZRLE:
                    self.need(pos, 3, "XBZRLE header")
                    n = unpack(">H", mm, pos + 1)[0]
                    self.need(pos + 3, n, "XBZRLE data")
                    pos += 3 + n
                    pages.xbzrle += 1
                else:
                    n = self.be32(pos, "compressed page length")
                    self.need(pos + 4, n, "compressed page")
                    pos += 4 + n
                    pages.compressed += 1
                per_block[blk] = per_block.get(blk, 0) + 1
                continue
            if flags & RAM_CONTINUE:
                raise StreamDecodeError(f"RAM flags {flags:#x}: 'same block' on a record "
                                        f"that names no page", rec)
            if base == RAM_MEM_SIZE:
                pos = self.ram_blocks(word & ~RAM_FLAG_MASK, pos)
            elif base == RAM_EOS:
                break
            elif base == RAM_MULTIFD_FLUSH:
                pages.multifd_flush += 1
            elif base == RAM_HOOK:
                raise StreamDecodeError("RDMA hook record (RAM_SAVE_FLAG_HOOK) in a saved "
                                        "stream", rec)
            else:
                raise StreamDecodeError(f"unknown combination of RAM flags {flags:#x}", rec)
        info.ram.add(pages)
        return pos

    def ram_blocks(self, total: int, pos: int) -> int:
        """The block list after RAM_SAVE_FLAG_MEM_SIZE (ram_save_setup / parse_ramblocks)."""
        info = self.info
        remaining = total
        ignore_shared = "x-ignore-shared" in info.capabilities
        while remaining:
            entry = pos
            name, pos = self.counted(pos, "RAM block name")
            length = self.be64(pos, "RAM block length")
            pos += 8
            if length > remaining:
                raise StreamDecodeError(f"RAM block '{name}' is {length} bytes, more than the "
                                        f"{remaining} left of the announced {total}", entry)
            blk = RamBlockInfo(name, length, entry)
            if ignore_shared:
                blk.guest_address = self.be64(pos, "RAM block guest address")
                pos += 8
            if info.mapped_ram:
                self.need(pos, MAPPED_RAM_HEADER.size, "mapped-ram header")
                ver, psize, bmap, pages_at = MAPPED_RAM_HEADER.unpack_from(self.mm, pos)
                hdr_end = pos + MAPPED_RAM_HEADER.size
                if ver != 1 or bmap != hdr_end or pages_at < bmap:
                    raise StreamDecodeError(f"bad mapped-ram header for block '{name}' "
                                            f"(version {ver}, bitmap at {bmap:#x}, pages at "
                                            f"{pages_at:#x})", pos)
                blk.mapped = MappedRamBlock(ver, psize, bmap, pages_at,
                                            self.bitmap_count(bmap, length, psize))
                # The stream goes on after the block's page area
                # (mapped_ram_setup_ramblock: qemu_set_offset).
                pos = pages_at + length
            info.ram_blocks.append(blk)
            remaining -= length
        return pos

    def bitmap_count(self, at: int, length: int, psize: int) -> int | None:
        npages = length // psize if psize else 0
        nbytes = (npages + 63) // 64 * 8          # BITS_TO_LONGS * sizeof(long)
        if at + nbytes > self.size:
            return None
        bits = int.from_bytes(self.mm[at:at + nbytes], "little").bit_count()
        return bits


def vmdesc_body_size(desc: dict[str, Any]) -> int | None:
    """Bytes a VMState wrote: its fields, then each subsection's header and body."""
    total = 0
    for f in desc.get("fields", []) or []:
        size = f.get("size")
        if not isinstance(size, int):
            return None
        n = f.get("array_len", 1)
        total += size * (n if isinstance(n, int) else 1)
    for sub in desc.get("subsections", []) or []:
        name = sub.get("vmsd_name")
        inner = vmdesc_body_size(sub)
        if not isinstance(name, str) or inner is None:
            return None
        total += 1 + 1 + len(name.encode()) + 4 + inner
    return total


def device_body_size(entry: dict[str, Any]) -> int | None:
    """A device entry of the VM description: old-style 'size' or its VMState."""
    if "vmsd_name" not in entry and isinstance(entry.get("size"), int):
        return entry["size"]
    return vmdesc_body_size(entry)


def decode_stream(path: str | os.PathLike[str], *, page_size: int | None = None,
                  strict: bool = True) -> DecodedStream:
    """Decode the migration stream saved in ``path``.

    ``page_size`` is the target page size to assume when the stream does not say
    it (no VM description, no target-page-bits subsection).  With ``strict``
    (the default) an undecodable stream raises :class:`StreamDecodeError`;
    otherwise the partial result comes back with ``complete`` False and
    ``error``/``error_offset`` set."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        return _fail(DecodedStream(path=str(p), file_size=0),
                     StreamDecodeError(f"cannot open {p}: {exc.strerror}", 0), strict)
    with f:
        size = os.fstat(f.fileno()).st_size
        info = DecodedStream(path=str(p), file_size=size)
        if page_size:
            info.page_size = page_size
        if size == 0:
            return _fail(info, StreamDecodeError("empty file", 0), strict)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            mm.madvise(mmap.MADV_SEQUENTIAL)      # one pass: let the kernel drop pages
        try:
            return _walk_all(_Walker(mm, size, info), info, strict)
        finally:
            mm.close()


def decode_bytes(data: bytes, *, page_size: int | None = None, strict: bool = True,
                 name: str = "<bytes>") -> DecodedStream:
    """:func:`decode_stream` for a stream already in memory (tests, small streams)."""
    info = DecodedStream(path=name, file_size=len(data))
    if page_size:
        info.page_size = page_size
    if not data:
        return _fail(info, StreamDecodeError("empty stream", 0), strict)
    return _walk_all(_Walker(data, len(data), info), info, strict)


def _walk_all(walker: "_Walker", info: DecodedStream, strict: bool) -> DecodedStream:
    """Find the trailing VM description, walk every section, check both agree."""
    try:
        walker.find_vmdesc()
        walker.walk()
        _check_against_vmdesc(info, walker)
    except StreamDecodeError as exc:
        return _fail(info, exc, strict)
    return info


def _fail(info: DecodedStream, exc: StreamDecodeError, strict: bool) -> DecodedStream:
    info.complete = False
    info.error = exc.reason
    info.error_offset = exc.offset
    if strict:
        exc.partial = info
        raise exc
    return info


def _check_against_vmdesc(info: DecodedStream, walker: _Walker) -> None:
    """The description lists every FULL section the walk found, in order."""
    if walker.scanned:
        info.notes.append(f"{len(walker.scanned)} sections sized by searching for their "
                          f"footer (first: '{walker.scanned[0]}')")
    if not info.vmdesc_found:
        return
    walked = [(s.idstr, s.instance_id) for s in info.device_sections()]
    described = [(str(d.get("name")), int(d.get("instance_id", 0))) for d in info.devices]
    if walked != described:
        only_w = sorted(set(walked) - set(described))
        only_d = sorted(set(described) - set(walked))
        info.notes.append(
            "VM description and stream disagree: "
            + (f"sections not described: {only_w[:8]}; " if only_w else "")
            + (f"described but not in the stream: {only_d[:8]}" if only_d else "order differs"))
