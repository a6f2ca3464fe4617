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
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.checks.vmstate_static import DeviceWalkError, walk_devices
from harness.vmstate import MACHINE_KEY, dump_vmstate

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
}


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


async def coverage_report(m: "Machine", build: "QemuBuild", machine_type: str,
                          dump: dict[str, Any] | None = None) -> dict[str, Any]:
    """Walk ``m``'s QOM tree and say which devices the migration stream carries.

    ``dump`` may be passed in (a cached ``-dump-vmstate`` of ``build`` for
    ``machine_type``); else it is made here (one short QEMU run, no guest).
    The result has ``devices``, ``covered``, ``not_covered`` (each entry with
    path, type and section or reason), ``not_covered_fine``, ``other_objects``
    (non-device objects by type), ``truncated``, ``passed`` and ``summary``."""
    if dump is None:
        dump = dump_vmstate(build.spec.binary, machine_type, build.spec.data_dirs,
                            build.env(), build.spec.extra_args)
    # The devices of the QOM composition tree, from the same bounded walk the
    # static VMState check uses.
    try:
        nodes, truncated = (await walk_devices(m)).paths, False
    except DeviceWalkError:
        nodes, truncated = {}, True
    report = classify(nodes, dump, await _types(m, "device"), await _types(m, "cpu"),
                      build.arch)
    report["truncated"] = truncated
    report["machine_type"] = machine_type
    report["passed"] = not report["not_covered"] and not truncated
    report["summary"] = summary_line(report)
    return report
