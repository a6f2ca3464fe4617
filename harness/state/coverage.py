"""Migration coverage: which devices of a running machine have state in the
migration stream, and which do not.

Evidence:

* the devices of the running machine's QOM composition tree
  (:func:`harness.checks.vmstate_static.walk_devices`: ``child<TYPE>``
  properties from ``/machine``, bounded in nodes and time);
* which of those objects are devices, CPUs or buses: ``qom-list-types`` with
  ``implements`` ``device`` / ``cpu`` / ``bus``;
* which device types carry a VMState: the build's ``-dump-vmstate`` for the
  same machine type (``dump_vmstate_json_to_file`` in migration/savevm.c walks
  every ``TYPE_DEVICE`` class and writes those whose ``DeviceClass::vmsd`` is
  set; the key is the QOM type name).

Mapping heuristics (explicit, in this order):

1. a device whose QOM type is a key of the dump is *covered* by that section
   (a subclass inherits its parent's ``vmsd`` and is dumped under its own name);
2. a CPU is never in the dump: its state is registered at realize time
   (``cpu_exec_realizefn``: ``CPUClass::sysemu_ops->legacy_vmsd`` as section
   "cpu", else only ``vmstate_cpu_common``, i.e. ``halted`` and
   ``exception_index``).  :data:`CPU_VMSTATE` says per arch which it is
   (x86: ``vmstate_x86_cpu``, target/i386/machine.c; e2k fork: none); an
   unknown arch is reported as unknown and left to the cpu-state check;
3. a device without a dump entry whose state lives in its parent (a drive on
   an IDE/AHCI controller: ``ide-hd`` is carried by the controller's
   ``ide_bus`` fields) or that has no guest-visible state (:data:`STATELESS`,
   each with its reason) is *not covered but fine*;
4. every other device without a dump entry is *not covered*: a porter must
   look at it.

Objects that are not devices (containers, buses, IRQ lines, memory regions)
have no state of their own and are only counted.

Stream evidence (optional): a migration stream the cell saved to a file
(``exec:cat > FILE`` or ``file:FILE``), decoded by
:mod:`harness.state.streamdecode`, says which state was really sent.  Sections are
named ``<qdev path>/<vmsd name>`` or just ``<vmsd name>`` with an instance id
(``vmstate_register_with_alias_id``, migration/savevm.c), never by QOM path,
so :func:`stream_coverage` maps them to devices by these rules, in order:

1. a section's vmsd name is the VM description's ``vmsd_name`` when the
   stream has one, else the idstr after its last '/';
2. each device expects the sections named by rule 1 of the ``-dump-vmstate``
   mapping (QOM type -> ``Description.name``), :data:`REALIZE_SECTION`, or,
   for a CPU, :data:`CPU_SECTION` of its arch plus ``cpu_common``
   (``cpu_vmstate_register`` in hw/core/cpu-system.c in 10.0,
   ``cpu_exec_realizefn`` in cpu.c in 6.0 and 7.2, registers
   ``vmstate_cpu_common`` as "cpu_common" for a CPU class without
   ``dc->vmsd`` and ``legacy_vmsd`` as "cpu" when the class has one, both with
   the CPU index as instance id);
3. devices expecting the same name share that name's sections by count: the
   devices in natural QOM-path order take the sections in (qdev path,
   instance id) order.  Which PCI function got which section is not checked,
   only that there are as many sections as devices;
4. a device with no expected name takes a leftover section named like its QOM
   type (e.g. a fork's device registered with ``vmstate_register`` under its
   type name);
5. sections left over are listed as unmatched, with what they hold when known
   (:data:`MACHINE_SECTIONS`: RAM, clocks, run state, bus state).

Per device the stream part says: a section was sent (``in-stream``); the
device's state is carried by its parent (``carried-by-parent``,
:data:`STATELESS`); it has a VMState but no section was sent (``not-sent``:
a section whose ``needed()`` hook was false at save time is skipped,
``vmstate_section_needed`` in migration/vmstate.c, e.g. an smbus-eeprom that
was never accessed); a CPU with ``cpu_common`` only (``cpu-common-only``: its
registers are not migrated); or no VMState at all (``no-vmstate``).  When the
stream could not be decoded to its end, a device with a VMState whose section
was not reached is ``unseen``.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from harness.checks.vmstate_static import DeviceWalkError, walk_devices
from harness.state.streamdecode import DecodedStream, Section, decode_stream
from harness.state.vmstate import MACHINE_KEY, dump_vmstate

if TYPE_CHECKING:
    from harness.qemu.build import QemuBuild
    from harness.qemu.machine import Machine


#: arch -> the CPU's migration section, or None when the target has none.
CPU_VMSTATE: dict[str, str | None] = {
    "x86_64": "cpu (vmstate_x86_cpu, target/i386/machine.c, via legacy_vmsd)",
    "i386": "cpu (vmstate_x86_cpu, target/i386/machine.c, via legacy_vmsd)",
    "aarch64": "cpu (vmstate_arm_cpu, target/arm/machine.c)",
    "arm": "cpu (vmstate_arm_cpu, target/arm/machine.c)",
    "riscv64": "cpu (vmstate_riscv_cpu, target/riscv/machine.c)",
    "e2k": None,  # qemu-e2k: E2KCPU sets neither dc->vmsd nor legacy_vmsd
}

#: Device types that register their VMState explicitly at realize (so
#: -dump-vmstate, which lists DeviceClass::vmsd only, does not show it).
REALIZE_VMSTATE: dict[str, str] = {
    "apic": "apic (vmstate_apic_common, registered in apic_common_realize, hw/intc/apic_common.c)",
    "kvm-apic": "apic (vmstate_apic_common, registered in apic_common_realize, hw/intc/apic_common.c)",
    "piix3-ide": "ide (vmstate_ide_pci, registered in pci_piix_ide_realize, hw/ide/piix.c)",
    "piix4-ide": "ide (vmstate_ide_pci, registered in pci_piix_ide_realize, hw/ide/piix.c)",
}
#: Of those, the type names other targets reuse for their own device (the
#: e2k fork has an 'apic' of its own that registers nothing).
X86_ONLY = frozenset({"apic", "kvm-apic"})

#: Device types without their own VMState, and why that loses nothing.
STATELESS: dict[str, str] = {
    "ide-hd": "drive state is migrated by its IDE/AHCI controller's ide_bus fields",
    "ide-cd": "drive state is migrated by its IDE/AHCI controller's ide_bus fields",
    "scsi-hd": "request state is migrated by the SCSI bus/HBA",
    "i440FX-pcihost": "host bridge config lives in the 'i440FX' device's VMState",
    "vmport": "VMware backdoor I/O port: no guest-visible state",
    "serial": "the UART core: migrated inside its isa-serial/pci-serial wrapper",
    "isa-debugcon": "write-only debug port",
    "loader": "generic loader: its image is copied into RAM at reset; RAM carries it",
    "pc-dimm": "its RAM is migrated as a RAM block",
    # A virtio PCI proxy has no vmsd: its PCI config space and MSI-X state go
    # inside its virtio backend's section (virtio_save -> k->save_config, i.e.
    # virtio_pci_save_config: hw/virtio/virtio.c, hw/virtio/virtio-pci.c).
    "virtio-net-pci": "PCI proxy: saved inside its virtio-net backend's section "
                      "(virtio_pci_save_config)",
    "virtio-blk-pci": "PCI proxy: saved inside its virtio-blk backend's section "
                      "(virtio_pci_save_config)",
    "virtio-serial-pci": "PCI proxy: saved inside its virtio-serial backend's section "
                         "(virtio_pci_save_config)",
    "virtserialport": "a port of virtio-serial: saved by the bus's device "
                      "(virtio_serial_save_device, hw/char/virtio-serial-bus.c)",
}

#: The section name of the state in :data:`REALIZE_VMSTATE` (the vmsd name).
REALIZE_SECTION: dict[str, str] = {
    "apic": "apic", "kvm-apic": "apic", "piix3-ide": "ide", "piix4-ide": "ide",
}

#: arch -> the name of the CPU's own section in the stream (its
#: ``legacy_vmsd``), or None when the CPU class has none.
CPU_SECTION: dict[str, str | None] = {
    "x86_64": "cpu", "i386": "cpu",     # vmstate_x86_cpu, target/i386/machine.c
    "aarch64": "cpu", "arm": "cpu",     # vmstate_arm_cpu, target/arm/machine.c
    "riscv64": "cpu",                   # vmstate_riscv_cpu, target/riscv/machine.c
    "e2k": None,                        # qemu-e2k: no dc->vmsd, no legacy_vmsd
}

#: Sections that belong to the machine or a bus, not to a device of the QOM
#: tree, and what they hold.
MACHINE_SECTIONS: dict[str, str] = {
    "ram": "guest RAM blocks (iterable section, migration/ram.c)",
    "timer": "guest clock offsets (vmstate_timers, cpu-timers.c)",
    "globalstate": "the run state handed to the destination (migration/global_state.c)",
    "PCIBUS": "a PCI bus's IRQ levels (vmstate_pcibus, hw/pci/pci.c pci_bus_realize)",
    "i2c_bus": "an I2C bus (vmstate_i2c_bus, hw/i2c/core.c i2c_init_bus)",
    "acpi_build": "ACPI table patching state (hw/i386/acpi-build.c acpi_setup)",
    "cpu_common": "generic CPU state (halted, interrupt_request) of a CPU beyond "
                  "the CPUs of the QOM tree",
    "block": "block migration (iterable, migration/block.c)",
    "dirty-bitmap": "block dirty bitmaps (iterable, migration/block-dirty-bitmap.c)",
}

IN_STREAM = "in-stream"
CARRIED = "carried-by-parent"
NOT_SENT = "not-sent"
CPU_COMMON_ONLY = "cpu-common-only"
NO_VMSTATE = "no-vmstate"
UNSEEN = "unseen"
UNSEEN_WHY = "no section before the point where the stream could not be decoded further"


async def _types(m: "Machine", implements: str) -> set[str]:
    return {t["name"] for t in await m.execute(
        "qom-list-types", {"implements": implements, "abstract": True})}


def classify(nodes: dict[str, str], dump: dict[str, Any], device_types: set[str],
             cpu_types: set[str], arch: str) -> dict[str, Any]:
    """Pure part of the report: nodes + dump + type sets -> covered/not covered."""
    sections = {k: (v.get("Description", {}) or {}).get("name", k)
                for k, v in dump.items() if k != MACHINE_KEY and isinstance(v, dict)}
    devices, covered, fine, not_covered = [], [], [], []
    other: dict[str, int] = {}
    for path, qtype in sorted(nodes.items()):
        if qtype not in device_types and qtype not in cpu_types:
            other[qtype] = other.get(qtype, 0) + 1
            continue
        entry: dict[str, Any] = {"path": path, "type": qtype}
        devices.append(entry)
        if qtype in sections:
            entry["section"] = sections[qtype]
            covered.append(entry)
        elif qtype in REALIZE_VMSTATE and (qtype not in X86_ONLY or arch in ("x86_64", "i386")):
            entry["section"] = REALIZE_VMSTATE[qtype]
            covered.append(entry)
        elif qtype in cpu_types:
            if arch in CPU_VMSTATE and CPU_VMSTATE[arch] is not None:
                entry["section"] = CPU_VMSTATE[arch]
                covered.append(entry)
            elif arch in CPU_VMSTATE:
                entry["why"] = f"{arch} CPU class registers no VMState"
                not_covered.append(entry)
            else:
                entry["why"] = ("CPU state is registered at realize (legacy_vmsd), not "
                                "visible in -dump-vmstate: see the cpu-state check")
                not_covered.append(entry)
        elif qtype in STATELESS:
            entry["why"] = STATELESS[qtype]
            fine.append(entry)
        else:
            entry["why"] = "no VMState for this device type in -dump-vmstate"
            not_covered.append(entry)
    return {"devices": devices, "covered": covered, "not_covered_fine": fine,
            "not_covered": not_covered, "other_objects": other}


def summary_line(report: dict[str, Any]) -> str:
    missing = report["not_covered"]
    fine = len(report["not_covered_fine"])
    head = (f"{len(report['covered'])} of {len(report['devices'])} devices have VMState"
            + (f", {fine} need none" if fine else ""))
    if not missing:
        return head
    names: list[str] = []
    for e in missing:
        label = f"{e['type']} CPU" if "CPU" in e.get("why", "") else e["type"]
        if label not in names:
            names.append(label)
    return f"{head}; no VMState: {', '.join(names)}"


# ------------------------------------------------------------ stream evidence

def _natural(text: str) -> list[Any]:
    """Sort key: device[2] before device[10]."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _label(sec: Section) -> str:
    return f"{sec.idstr}#{sec.instance_id}"


def _count_names(entries: Iterable[dict[str, Any]], label: Any = None) -> str:
    """'apic x2, iohub' from device entries, in first-seen order."""
    counts: dict[str, int] = {}
    for e in entries:
        name = label(e) if label else e["type"]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(n if c == 1 else f"{n} x{c}" for n, c in counts.items())


def stream_coverage(nodes: dict[str, str], decoded: DecodedStream, arch: str,
                    dump: dict[str, Any] | None = None,
                    device_types: set[str] | None = None,
                    cpu_types: set[str] | None = None) -> dict[str, Any]:
    """Map the sections of a decoded saved stream to the devices in ``nodes``.

    ``nodes`` is QOM path -> QOM type (``walk_devices(...).paths``); ``dump`` the
    build's ``-dump-vmstate`` for the machine type (QOM type -> vmsd name);
    ``device_types``/``cpu_types`` the ``qom-list-types`` answers (without
    them every node counts as a device and none as a CPU).  Pure: the rules are
    in the module docstring.  The result has ``devices`` (each with path,
    type, ``state``, ``sections`` and ``why`` when no section), ``in_stream``,
    ``not_in_stream``, ``unmatched_sections``, the stream's own facts and
    ``passed`` (stream complete and no device without any VMState)."""
    vmsd_of = {k: str((v.get("Description") or {}).get("name", k))
               for k, v in (dump or {}).items()
               if k != MACHINE_KEY and isinstance(v, dict)}
    cpus = cpu_types or set()
    x86 = arch in ("x86_64", "i386")
    pool: dict[str, list[Section]] = {}
    for sec in decoded.device_sections():
        pool.setdefault(sec.name, []).append(sec)
    for secs in pool.values():
        secs.sort(key=lambda s: (_natural(s.idstr), s.instance_id or 0))

    def take(name: str | None) -> Section | None:
        secs = pool.get(name or "")
        return secs.pop(0) if secs else None

    devices: list[dict[str, Any]] = []
    for path, qtype in sorted(nodes.items(), key=lambda kv: _natural(kv[0])):
        if device_types is not None and qtype not in device_types and qtype not in cpus:
            continue
        devices.append({"path": path, "type": qtype, "sections": []})

    # Rule 2-3: the names each device's state is known to go by.
    pending: list[dict[str, Any]] = []
    for e in devices:
        qtype = e["type"]
        if qtype in cpus:
            own = CPU_SECTION.get(arch, "cpu")
            sec = take(own) if own else None
            common = take("cpu_common")
            e["sections"] = [_label(s) for s in (sec, common) if s is not None]
            if sec is not None:
                e["state"] = IN_STREAM
            elif common is not None:
                e["state"] = CPU_COMMON_ONLY
                e["why"] = ("only cpu_common (halted, interrupt_request) is in the stream: "
                            f"the {arch} CPU class registers no VMState of its own, so its "
                            "registers are not migrated")
            elif not decoded.complete:
                e["state"] = UNSEEN
                e["why"] = UNSEEN_WHY
            else:
                e["state"] = NO_VMSTATE
                e["why"] = "no cpu or cpu_common section for this CPU"
            e["cpu"] = True
            continue
        name = vmsd_of.get(qtype)
        if name is None and qtype in REALIZE_SECTION and (qtype not in X86_ONLY or x86):
            name = REALIZE_SECTION[qtype]
        if name is None:
            pending.append(e)
            continue
        e["vmsd"] = name
        sec = take(name)
        if sec is not None:
            e["sections"] = [_label(sec)]
            e["state"] = IN_STREAM
        elif qtype in STATELESS:
            e["state"] = CARRIED
            e["why"] = STATELESS[qtype]
        elif not decoded.complete:
            e["state"] = UNSEEN
            e["why"] = UNSEEN_WHY
        else:
            e["state"] = NOT_SENT
            e["why"] = (f"has a VMState ('{name}') but no section in this stream: its "
                        f"needed() hook was false when saved, or there are fewer "
                        f"'{name}' sections than devices")
    # Rule 4: a leftover section named like the device's type.
    for e in pending:
        sec = take(e["type"]) if e["type"] not in STATELESS else None
        if sec is not None:
            e["sections"] = [_label(sec)]
            e["state"] = IN_STREAM
        elif e["type"] in STATELESS:
            e["state"] = CARRIED
            e["why"] = STATELESS[e["type"]]
        else:
            e["state"] = NO_VMSTATE
            e["why"] = "no VMState known for this device type and no section named like it"

    unmatched: list[dict[str, Any]] = []
    for sec in decoded.sections:
        if sec.kind == "start":
            unmatched.append({"idstr": sec.idstr, "instance_id": sec.instance_id,
                              "kind": "iterable",
                              "why": MACHINE_SECTIONS.get(sec.name,
                                                          "iterable state of no device")})
    for secs in pool.values():
        for sec in secs:
            unmatched.append({"idstr": sec.idstr, "instance_id": sec.instance_id,
                              "kind": "full", "vmsd": sec.name,
                              "why": MACHINE_SECTIONS.get(
                                  sec.name, "matches no device of the QOM tree")})
    in_stream = [e for e in devices if e["state"] == IN_STREAM]
    missing = [e for e in devices if e["state"] not in (IN_STREAM, CARRIED)]
    out: dict[str, Any] = {
        "path": decoded.path,
        "version": decoded.version,
        "machine": decoded.machine,
        "complete": decoded.complete,
        "error": decoded.error,
        "error_offset": decoded.error_offset,
        "vmdesc": decoded.vmdesc_found,
        "mapped_ram": decoded.mapped_ram,
        "device_sections": len(decoded.device_sections()),
        "ram_blocks": [b.idstr for b in decoded.ram_blocks],
        "decoded": decoded.summary(),
        "devices": devices,
        "in_stream": in_stream,
        "carried_by_parent": [e for e in devices if e["state"] == CARRIED],
        "not_in_stream": missing,
        "unmatched_sections": unmatched,
        "passed": decoded.complete and not any(
            e["state"] in (NO_VMSTATE, CPU_COMMON_ONLY) for e in devices),
    }
    out["summary"] = stream_summary(out)
    return out


def stream_summary(sc: dict[str, Any]) -> str:
    """One line: how many devices have a section in the saved stream, which not."""
    devices = sc["devices"]
    carried = len(sc["carried_by_parent"])
    head = (f"saved stream: {len(sc['in_stream'])} of {len(devices)} devices have a section"
            + (f", {carried} carried by their parent" if carried else ""))
    if not sc["complete"]:
        head += (f" (stream undecodable at offset {sc['error_offset']}: {sc['error']}; "
                 f"sections after it unseen)")
    parts = []
    nostate = [e for e in sc["not_in_stream"] if e["state"] in (NO_VMSTATE, CPU_COMMON_ONLY)]
    if nostate:
        parts.append("no VMState in the stream: " + _count_names(
            nostate, lambda e: (f"{e['type']} CPU (cpu_common only)"
                                if e["state"] == CPU_COMMON_ONLY else
                                f"{e['type']} CPU" if e.get("cpu") else e["type"])))
    unsent = [e for e in sc["not_in_stream"] if e["state"] == NOT_SENT]
    if unsent:
        parts.append("VMState not sent: " + _count_names(unsent))
    unseen = [e for e in sc["not_in_stream"] if e["state"] == UNSEEN]
    if unseen:
        parts.append(f"{len(unseen)} devices not reached")
    return "; ".join([head] + parts)


async def coverage_report(m: "Machine", build: "QemuBuild", machine_type: str,
                          dump: dict[str, Any] | None = None,
                          stream: Path | None = None) -> dict[str, Any]:
    """Walk ``m``'s QOM tree and say which devices the migration stream carries.

    ``dump`` may be passed in (a cached ``-dump-vmstate`` of ``build`` for
    ``machine_type``); else it is made here (one short QEMU run, no guest).
    The result has ``devices``, ``covered``, ``not_covered`` (each entry with
    path, type and section or reason), ``not_covered_fine``, ``other_objects``
    (non-device objects by type), ``truncated``, ``passed`` and ``summary``.

    ``stream``: a migration stream of this machine saved to a file.  It is
    decoded (:func:`harness.state.streamdecode.decode_stream`) and mapped to the
    devices (:func:`stream_coverage`): the result then also has ``stream``
    (that mapping), each device entry ``in_stream`` and ``stream_sections``,
    ``passed`` also needs the stream part to pass, and the summary says which
    devices have no state in the stream."""
    if dump is None:
        dump = dump_vmstate(build.spec.binary, machine_type, build.spec.data_dirs,
                            build.env(), build.spec.extra_args)
    # The devices of the QOM composition tree, from the same bounded walk the
    # static VMState check uses.
    try:
        nodes, truncated = (await walk_devices(m)).paths, False
    except DeviceWalkError:
        nodes, truncated = {}, True
    device_types, cpu_types = await _types(m, "device"), await _types(m, "cpu")
    report = classify(nodes, dump, device_types, cpu_types, build.arch)
    report["truncated"] = truncated
    report["machine_type"] = machine_type
    report["passed"] = not report["not_covered"] and not truncated
    report["summary"] = summary_line(report)
    if stream is not None:
        decoded = await asyncio.to_thread(decode_stream, stream, strict=False)
        sc = stream_coverage(nodes, decoded, build.arch, dump, device_types, cpu_types)
        by_path = {e["path"]: e for e in sc["devices"]}
        for e in report["devices"]:
            s = by_path.get(e["path"])
            if s is not None:
                e["in_stream"] = s["state"] == IN_STREAM
                e["stream_state"] = s["state"]
                e["stream_sections"] = s["sections"]
        report["stream"] = sc
        report["passed"] = report["passed"] and sc["passed"]
        report["summary"] += "; " + sc["summary"]
    return report
