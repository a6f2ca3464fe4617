"""The static VMState compatibility check shown beside a cross-version cell.

For a cell whose source and destination are different QEMU builds, this asks
both binaries for their VMState descriptions (``-dump-vmstate``, see
``harness.state.vmstate``), restricts the comparison to the devices the cell's VM
really has (walked live over QMP), and reports what the descriptions predict
for source -> destination.

Why it is advisory.  The dumps describe what *could* be sent, not what was:
a subsection goes on the wire only when its ``needed()`` hook is true at
switchover (``vmstate_subsection_save`` in migration/vmstate.c), a field with a
``field_exists`` hook only when that says so.  So the static check is
pessimistic by design (10.0 -> 7.2 on pc-q35-7.2 flags the ``i8259/ltim``
subsection, which 10.0 sends only once the guest has programmed a PIC in
level-triggered mode: ``ltim_state_needed`` in hw/intc/i8259_common.c), and it
is blind to state that is not in the dumps at all (CPU, APIC, RAM, timers;
see ``UNMAPPED_REASONS``).  The live migration decides the cell; the static
result sits next to it, and ``agreement`` says when the two disagree, which
is the point of showing them side by side.  The result therefore never goes
into ``CellResult.checks`` (``harness.results.judge`` would make it a verdict):
the flow attaches it as ``figures["vmstate_static"]`` (``static_beside_live``).

Costs (measured on the project's 2-CPU host, 7.2 and 10.0 on pc-q35-7.2): a
cold dump takes 0.07-0.8 s per build, so dumps are cached per (binary path,
mtime, size, machine type, data dirs, extra args, env) in this process and as
JSON under ``harness.guest.images.cache_dir()/vmstate/`` (a check then takes ~5 ms
from memory, ~45 ms from disk); the comparison restricted to a VM's ~25
device types takes < 10 ms; the device walk 50-230 ms per VM (more while the
guest boots and the host is busy), ~40 ``qom-list`` calls.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence

from harness.errors import BuildError, HarnessError
from harness.fileio import write_atomic
from harness.guest.images import cache_dir
from harness.qemu.build import QemuBuild
from harness.results import ERROR, FAILED, SKIPPED, CellResult, CheckResult
from harness.state.vmstate import INFO, MACHINE_KEY, compare_vmstate, dump_vmstate

if TYPE_CHECKING:
    from harness.qemu.machine import Machine

__all__ = [
    "CHECK_NAME", "FIGURE_KEY", "Agreement", "DeviceWalk", "DeviceWalkError", "DumpFetch",
    "DumpKey", "SectionMap", "agreement", "builds_differ", "cached_dump",
    "clear_memory_cache", "judge_dumps", "live_outcome", "map_devices",
    "static_beside_live", "static_check", "unmapped_reason", "vm_device_types",
    "walk_devices",
]

CHECK_NAME = "vmstate-static"
#: Where the flow puts the result: a figure of the cell, not a verdict-bearing check.
FIGURE_KEY = "vmstate_static"
#: Bump when the cache file layout changes: older files are then ignored.
CACHE_FORMAT = 1

#: Bounds of the QOM walk.  A -nodefaults q35 or i440fx VM has ~40 devices
#: and containers to list (measured 50-230 ms, < 0.5 s); the timeout is a
#: guard against a stuck QEMU on a loaded host, not the expected cost.  A
#: tree past these bounds is not a VM this harness builds, and an incomplete
#: device list would make the restricted comparison unsound, so the walk
#: then fails instead of returning a part.
WALK_TIMEOUT = 2.0
WALK_MAX_NODES = 2000


# ------------------------------------------------------------------ device walk

class DeviceWalkError(HarnessError):
    """The QOM walk could not list the VM's devices completely."""


class QmpExecutor(Protocol):
    """What the walk needs from ``harness.qemu.machine.Machine``."""

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = ...) -> Any: ...


@dataclass
class DeviceWalk:
    """The devices found under ``/machine`` of a running VM."""

    #: Distinct QOM types of the devices, sorted.
    types: tuple[str, ...]
    #: QOM path -> QOM type, for every device found.
    paths: dict[str, str]
    #: ``qom-list`` calls made (devices and containers listed).
    nodes: int
    seconds: float


async def walk_devices(machine: QmpExecutor, *, root: str = "/machine",
                       max_nodes: int = WALK_MAX_NODES,
                       timeout: float = WALK_TIMEOUT) -> DeviceWalk:
    """List the devices of a running VM by walking its QOM composition tree.

    Every object is a ``child<TYPE>`` property of its parent, and TYPE is the
    child's concrete type name (``object_property_try_add_child`` in
    qom/object.c, the same string as the object's ``type`` property,
    ``object_instance_init`` there), so one ``qom-list`` per node gives the
    types of all its children without a ``qom-get`` each.  Board-created
    devices hang under ``/machine/unattached`` or a named child of the
    machine, ``-device`` ones under ``/machine/peripheral[-anon]``; devices
    embedded in a device (``object_initialize_child``) under that device.

    Only devices (``qom-list-types implements=device``) and containers are
    descended into: buses, IRQ pins and memory regions (~200 of the ~250
    children of a q35 VM) carry no devices of their own in the composition
    tree.  Each level of the tree is listed with pipelined QMP requests.
    Raises ``DeviceWalkError`` past ``max_nodes`` or ``timeout`` seconds.
    """
    t0 = time.monotonic()

    async def walk() -> DeviceWalk:
        kinds = await machine.execute("qom-list-types", {"implements": "device",
                                                         "abstract": False})
        device_types = {k["name"] for k in kinds}
        found: dict[str, str] = {}
        level, nodes = [root], 0
        while level:
            nodes += len(level)
            if nodes > max_nodes:
                raise DeviceWalkError(f"QOM tree under {root} has more than {max_nodes} "
                                      f"devices and containers; not walking further")
            listings = await asyncio.gather(
                *(machine.execute("qom-list", {"path": p}) for p in level))
            nxt: list[str] = []
            for parent, props in zip(level, listings):
                for prop in props:
                    kind = str(prop.get("type", ""))
                    if not (kind.startswith("child<") and kind.endswith(">")):
                        continue
                    qom_type = kind[len("child<"):-1]
                    path = f"{parent.rstrip('/')}/{prop['name']}"
                    if qom_type in device_types:
                        found[path] = qom_type
                        nxt.append(path)
                    elif qom_type == "container":
                        nxt.append(path)
            level = nxt
        return DeviceWalk(tuple(sorted(set(found.values()))), found, nodes,
                          time.monotonic() - t0)

    try:
        return await asyncio.wait_for(walk(), timeout)
    except asyncio.TimeoutError:
        raise DeviceWalkError(f"QOM walk of {root} took more than {timeout:g} s") from None


async def vm_device_types(machine: "Machine") -> list[str]:
    """The QOM types of the devices in the running VM, sorted, each once.

    Bounded (``WALK_TIMEOUT``, ``WALK_MAX_NODES``); raises ``DeviceWalkError``
    rather than returning an incomplete list, and ``QemuError`` when QEMU dies.
    """
    return list((await walk_devices(machine)).types)


# -------------------------------------------------------- QOM type -> sections

#: QOM types with migrated state that ``-dump-vmstate`` cannot show.  The dump
#: lists exactly the device classes with a ``DeviceClass.vmsd``, keyed by class
#: name (``dump_vmstate_json_to_file`` in migration/savevm.c); these register
#: their state another way, at realize time.
UNMAPPED_REASONS: dict[str, str] = {
    "cpu": ("CPU state is registered by cpu_exec_realizefn (cpu.c in 7.2, cpu-target.c "
            "in 10.0; cpu_vmstate_register later) with vmstate_register of the CPU "
            "class's legacy_vmsd and cpu_common, not DeviceClass.vmsd: not in the "
            "dumps; only the live migration checks it"),
    "apic": ("APIC state is registered by apic_common_realize (hw/intc/apic_common.c) "
             "with vmstate_register_with_alias_id, not DeviceClass.vmsd: not in the "
             "dumps; only the live migration checks it"),
    "other": ("no DeviceClass.vmsd in either build: the device has no section of its "
              "own (its state, if any, travels in its parent's section, e.g. ide-hd in "
              "the IDE/AHCI controller's, 'serial' in isa-serial's) or registers one at "
              "realize time, which the dumps cannot show"),
}
_APIC_TYPES = frozenset({"apic", "kvm-apic", "xen-apic", "whpx-apic", "hvf-apic",
                         "apic-common"})


def unmapped_reason(qom_type: str) -> str:
    """Why a QOM type found in the VM has no section in either dump."""
    if qom_type.endswith("-cpu") or qom_type == "cpu":
        return UNMAPPED_REASONS["cpu"]
    if qom_type in _APIC_TYPES:
        return UNMAPPED_REASONS["apic"]
    return UNMAPPED_REASONS["other"]


@dataclass
class SectionMap:
    """How a VM's device types map onto the dumps' sections.

    Mapping limits, all stemming from what ``-dump-vmstate`` writes:

    * a dump key is a device *class* name with a ``DeviceClass.vmsd``
      (subclasses inherit the parent's vmsd and are listed under their own
      name), so a device type maps to the key of the same name or to nothing;
    * on the wire a section is named ``<device path>/<vmsd name>`` (e.g.
      ``0000:00:1f.0/ICH9LPC``; ``vmstate_register_with_alias_id`` in
      migration/savevm.c), and one type can have several instances (two
      ``isa-i8259``); the dump has one description per type, so instance
      counts and ids are not compared (``vmsd_names`` gives the vmsd part);
    * CPUs and APICs register their sections at realize time and are absent
      from the dumps; RAM, ``timer``, ``globalstate``, ``configuration``,
      ``acpi_build`` and other non-device sections are not devices at all:
      none of these are compared (``unmapped`` lists the types found);
    * a device may be described by one build's dump only because the other
      build registers the same state at realize time: ``piix3-ide`` in 7.2
      (``pci_piix_ide_realize`` in hw/ide/piix.c calls ``vmstate_register``;
      QEMU 8.1 moved it to ``DeviceClass.vmsd``).  When the VM on the
      undescribed side has the device, its format cannot be compared from the
      dumps (``one_sided``); when that side's VM is unknown or lacks it, the
      type is compared and reported missing, as a real gap would be;
    * devices come from the VMs' QOM trees, so a device only one VM has is
      found only when both VMs were walked (``only_in_src_vm``: the live load
      fails on it with "Unknown savevm section"; ``only_in_dst_vm``: never
      sent, the destination keeps its reset state).
    """

    #: Dump keys to compare: the VM's types described by both dumps, or by
    #: one dump when the other side is not known to have the device.
    sections: list[str]
    #: Dump key -> vmsd name (the part of the section id after the device path).
    vmsd_names: dict[str, str]
    #: QOM type found in the VM -> why it has no section in either dump.
    unmapped: dict[str, str] = field(default_factory=dict)
    #: QOM type -> why only one dump describes it although both VMs have it.
    one_sided: dict[str, str] = field(default_factory=dict)
    #: Device types with a dump section that only one side's VM has.
    only_in_src_vm: list[str] = field(default_factory=list)
    only_in_dst_vm: list[str] = field(default_factory=list)


def map_devices(types: Sequence[str], src_dump: Mapping[str, Any],
                dst_dump: Mapping[str, Any],
                dst_types: Sequence[str] | None = None) -> SectionMap:
    """Map the source VM's QOM device types onto the sections of two dumps.

    ``types`` are the source VM's device types (the side that sends);
    ``dst_types``, when known, the destination VM's.
    """
    smap = SectionMap([], {})
    dst_vm = None if dst_types is None else set(dst_types)

    def described(dump: Mapping[str, Any], qom_type: str) -> Mapping[str, Any] | None:
        entry = dump.get(qom_type)
        return entry if qom_type != MACHINE_KEY and isinstance(entry, Mapping) else None

    for qom_type in dict.fromkeys(types):
        s, d = described(src_dump, qom_type), described(dst_dump, qom_type)
        if s is None and d is None:
            smap.unmapped[qom_type] = unmapped_reason(qom_type)
            continue
        if s is None:
            # The source VM has the device (it was walked there), so the
            # source build registers its state some other way.
            smap.one_sided[qom_type] = (
                "described only by the destination's dump; the source has the device "
                "but registers its state at realize time (not DeviceClass.vmsd), so "
                "the two formats cannot be compared statically")
            continue
        if d is None and dst_vm is not None and qom_type in dst_vm:
            smap.one_sided[qom_type] = (
                "described only by the source's dump; the destination VM has the "
                "device but registers its state at realize time (not "
                "DeviceClass.vmsd), so the two formats cannot be compared statically")
            continue
        if dst_vm is not None and qom_type not in dst_vm and d is not None:
            smap.only_in_src_vm.append(qom_type)
        smap.sections.append(qom_type)
        name = ((s or d or {}).get("Description") or {}).get("name")
        if name:
            smap.vmsd_names[qom_type] = str(name)
    if dst_vm is not None:
        src_vm = set(types)
        smap.only_in_dst_vm = sorted(t for t in dst_vm - src_vm
                                     if described(src_dump, t) or described(dst_dump, t))
    return smap


# ----------------------------------------------------------------- dump cache

def _resolve(binary: str) -> str:
    """The file a build's binary names: looked up in PATH as QEMU is started
    (``harness.qemu.build.discover`` does the same), then symlinks resolved."""
    return os.path.realpath(shutil.which(binary) or binary)


@dataclass(frozen=True)
class DumpKey:
    """What a ``-dump-vmstate`` output depends on.

    The binary is identified by its resolved path, mtime and size (a rebuilt
    or upgraded binary gets a new dump); data dirs, extra args and environment
    are included because they are passed to the dump run.
    """

    binary: str
    mtime_ns: int
    size: int
    machine: str
    data_dirs: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, build: QemuBuild, machine: str) -> "DumpKey":
        binary = _resolve(build.spec.binary)
        try:
            st = os.stat(binary)
        except OSError as exc:
            raise BuildError(build.name, f"cannot dump VMState: {exc}") from None
        return cls(binary, st.st_mtime_ns, st.st_size, machine, tuple(build.spec.data_dirs),
                   tuple(build.spec.extra_args), tuple(sorted(build.spec.env)))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def filename(self) -> str:
        """``qemu-system-x86_64-pc-q35-7.2-<hash>.json``: readable and unique."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.machine)
        return f"{os.path.basename(self.binary)}-{safe}-{self.digest()}.json"


@dataclass
class DumpFetch:
    """A dump and where it came from (for the cost figures)."""

    dump: dict[str, Any]
    source: Literal["memory", "disk", "qemu"]
    seconds: float
    path: str | None = None


_MEMORY: dict[DumpKey, dict[str, Any]] = {}


def clear_memory_cache() -> None:
    """Forget the in-process dumps (the disk cache stays)."""
    _MEMORY.clear()


def dump_cache_dir() -> Path:
    return cache_dir() / "vmstate"


def cached_dump(build: QemuBuild, machine: str) -> DumpFetch:
    """The build's VMState dump for ``machine``: from memory, disk, or QEMU.

    A disk file that is unreadable, of another format or for another key is
    ignored and rewritten.  Writing is atomic (temporary file + rename), so
    concurrent cells never read half a file; a cache directory that cannot be
    written only costs the next run a dump.  The dump is shared with later
    callers: copy it before editing.  Raises ``BuildError`` when the binary
    is missing or the dump fails.
    """
    t0 = time.monotonic()
    key = DumpKey.of(build, machine)
    if key in _MEMORY:
        return DumpFetch(_MEMORY[key], "memory", time.monotonic() - t0)
    path = dump_cache_dir() / key.filename()
    dump = _read_cache(path, key)
    if dump is not None:
        _MEMORY[key] = dump
        return DumpFetch(dump, "disk", time.monotonic() - t0, str(path))
    dump = dump_vmstate(build.spec.binary, machine, data_dirs=build.spec.data_dirs,
                        env=dict(build.spec.env), extra_args=build.spec.extra_args)
    _MEMORY[key] = dump
    written = _write_cache(path, key, build, dump)
    return DumpFetch(dump, "qemu", time.monotonic() - t0, str(path) if written else None)


def _read_cache(path: Path, key: DumpKey) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("format") != CACHE_FORMAT
            or data.get("key") != json.loads(json.dumps(asdict(key)))
            or not isinstance(data.get("dump"), dict)):
        return None
    return data["dump"]


def _write_cache(path: Path, key: DumpKey, build: QemuBuild, dump: dict[str, Any]) -> bool:
    try:
        write_atomic(path, json.dumps({"format": CACHE_FORMAT, "key": asdict(key),
                                       "qemu_version": build.version_text, "dump": dump}))
    except OSError:
        return False
    return True


# --------------------------------------------------------------------- the check

def builds_differ(src: QemuBuild, dst: QemuBuild) -> bool:
    """Whether two builds can hold different VMState descriptions.

    Same resolved binary (and the same data dirs, arguments and environment)
    means the same code on both sides: nothing to compare.  Build names do
    not matter; two names for one binary are the same build.
    """
    def ident(b: QemuBuild) -> tuple[Any, ...]:
        return (_resolve(b.spec.binary), tuple(b.spec.data_dirs),
                tuple(b.spec.extra_args), tuple(sorted(b.spec.env)))
    return ident(src) != ident(dst)


def _label(build: QemuBuild) -> str:
    return f"{build.name} {build.version_text}" if build.version != (0, 0, 0) else build.name


def static_check(src: QemuBuild, dst: QemuBuild, machine_type: str,
                 devices: Sequence[str] | None, *,
                 dst_devices: Sequence[str] | None = None) -> CheckResult:
    """Predict from both builds' VMState dumps whether src -> dst can load.

    ``machine_type`` must be the concrete type the cell runs (an alias would
    name a different machine in each build).  ``devices``: the QOM types of
    the running source VM's devices (``vm_device_types``); None compares
    every device type both builds know, which flags devices the VM does not
    have.  ``dst_devices``, the destination VM's, sharpens the mapping
    (``SectionMap``).

    Returns a ``CheckResult`` named ``vmstate-static`` that passes when the
    comparison finds no error.  It is advisory (module docstring): attach it
    with ``static_beside_live``, never to ``CellResult.checks``.  Same build
    on both sides: passes at once without dumping anything.  A dump that
    fails gives a non-passing result with verdict ``unknown``.
    """
    t0 = time.monotonic()
    if not builds_differ(src, dst):
        return CheckResult(CHECK_NAME, True,
                           f"same build on both sides ({src.name}): nothing to compare",
                           {"advisory": True, "verdict": "skipped", "seconds": 0.0})
    try:
        fetched = {"src": cached_dump(src, machine_type), "dst": cached_dump(dst, machine_type)}
    except BuildError as exc:
        return CheckResult(CHECK_NAME, False, f"no static verdict: {exc}",
                           {"advisory": True, "verdict": "unknown", "error": str(exc),
                            "seconds": round(time.monotonic() - t0, 4)})
    result = judge_dumps(fetched["src"].dump, fetched["dst"].dump, devices,
                         dst_devices=dst_devices, src_name=_label(src), dst_name=_label(dst))
    result.figures["machine_type"] = machine_type
    result.figures["dumps"] = {side: {"source": f.source, "seconds": round(f.seconds, 4),
                                      "path": f.path} for side, f in fetched.items()}
    result.figures["seconds"] = round(time.monotonic() - t0, 4)
    return result


def judge_dumps(src_dump: Mapping[str, Any], dst_dump: Mapping[str, Any],
                devices: Sequence[str] | None, *, dst_devices: Sequence[str] | None = None,
                src_name: str = "src", dst_name: str = "dst") -> CheckResult:
    """The ``vmstate-static`` verdict on two dumps: the part of ``static_check``
    after fetching them, so that edited dumps can be judged the same way."""
    smap = map_devices(devices, src_dump, dst_dump, dst_devices) if devices is not None else None
    # A device list with nothing in the dumps (only CPUs and buses?) would make
    # a restricted comparison vacuous: compare every device type instead.
    restricted = smap is not None and bool(smap.sections or smap.one_sided)
    report = compare_vmstate(src_dump, dst_dump,
                             sections=smap.sections if restricted and smap else None,
                             src_name=src_name, dst_name=dst_name)
    errors, warnings = report.errors, report.warnings
    notes = [f for f in report.findings if f.severity == INFO]
    # Errors inside a subsection bite only when the source's needed() hook
    # sends that subsection: the usual reason a static "broken" is not hit live.
    conditional = [f for f in errors if "{" in f.path]
    missing_instances = list(smap.only_in_src_vm) if restricted and smap else []
    n_errors = len(errors) + len(missing_instances)
    ok = n_errors == 0
    lines = report.summary(max_lines=12).splitlines()
    if restricted and smap:
        scope = f"restricted to the {len(smap.sections)} device types of the running VM"
        extra = []
        if smap.one_sided:
            extra.append(f"described by one dump only, not compared: "
                         f"{', '.join(sorted(smap.one_sided))}")
        if smap.unmapped:
            extra.append(f"not in the dumps: {', '.join(sorted(smap.unmapped))}")
        scope_lines = [scope, *(f"  {x}" for x in extra)]
        for t in missing_instances:
            lines.insert(1, f"  error: {t}: the source VM has this device and the destination "
                            f"VM does not: its section will be refused")
    else:
        scope = "every device type both builds know (no device list of the VM)"
        scope_lines = [scope]
    verdict = "compatible" if ok else "incompatible"
    summary = (f"{verdict}: {report.sections_compared} sections, {n_errors} errors"
               + (f" ({len(conditional)} in subsections sent only when needed)"
                  if conditional else "")
               + f", {len(warnings)} warnings; {scope}"
               + (f", {len(smap.one_sided)} one-sided" if restricted and smap and smap.one_sided
                  else "")
               + " (advisory: the live migration decides)")
    figures: dict[str, Any] = {
        "advisory": True,
        "verdict": verdict,
        "scope": "vm-devices" if restricted else "all-device-types",
        "errors": n_errors,
        "warnings": len(warnings),
        "notes": len(notes),
        "conditional_errors": len(conditional),
        "summary_lines": [*lines, *scope_lines],
        "sections": list(smap.sections) if smap else None,
        "vmsd_names": dict(smap.vmsd_names) if smap else None,
        "unmapped": dict(smap.unmapped) if smap else None,
        "one_sided": dict(smap.one_sided) if smap else None,
        "only_in_src_vm": list(smap.only_in_src_vm) if smap else None,
        "only_in_dst_vm": list(smap.only_in_dst_vm) if smap else None,
        "report": report.to_dict(),
    }
    return CheckResult(CHECK_NAME, ok, summary, figures)


# ------------------------------------------------------ side by side with live

LiveOutcome = Literal["accepted", "rejected", "inconclusive"]


def live_outcome(live: CellResult) -> LiveOutcome:
    """What the live cell says about loading the state on the destination.

    ``accepted``: the guest ran on after ``cont`` (``liveness`` passed), or,
    when the cell stopped before that check, the destination reported its
    own MIGRATION ``completed``, which it does only after every section has
    loaded (``process_incoming_migration_co`` schedules
    ``process_incoming_migration_bh``, which sets it, only once
    ``qemu_loadvm_state`` succeeded; migration/migration.c).
    ``rejected``: the guest did not run on, the destination reported
    ``failed``, or the source saw the migration fail.  ``inconclusive``: the
    cell was skipped, did not converge, or stopped for a reason that says
    nothing about device state.  A failed downtime check, or a harness
    complaint after the destination completed, does not make state rejected.
    """
    if live.verdict == SKIPPED:
        return "inconclusive"
    liveness = live.check("liveness")
    if liveness is not None:
        return "accepted" if liveness.passed else "rejected"
    dst_states = [str(x) for x in live.figures.get("destination_states") or []]
    if "completed" in dst_states:
        return "accepted"
    if "failed" in dst_states:
        return "rejected"
    converged = live.check("converged")
    if converged is not None and not converged.passed:
        return "inconclusive"
    if live.verdict in (FAILED, ERROR) and _LOAD_FAILURE.search(live.reason):
        return "rejected"
    return "inconclusive"


#: Cell failure reasons that mean the state did not arrive (harness.migration.flow wording).
_LOAD_FAILURE = re.compile(r"migration failed|destination (QEMU )?died", re.IGNORECASE)


@dataclass(frozen=True)
class Agreement:
    """The static prediction next to the live result, and whether they agree."""

    static: str
    live: LiveOutcome
    live_verdict: str
    #: None when either side has no verdict to compare.
    agree: bool | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(static: CheckResult, live: CellResult) -> Agreement:
    """Compare the static verdict with the live cell's outcome."""
    verdict = str(static.figures.get("verdict", "compatible" if static.passed else "incompatible"))
    outcome = live_outcome(live)
    errors = int(static.figures.get("errors", 0))
    conditional = int(static.figures.get("conditional_errors", 0))
    unmapped = sorted((static.figures.get("unmapped") or {}))
    if verdict not in ("compatible", "incompatible") or outcome == "inconclusive":
        why = (f"static check {verdict}" if verdict not in ("compatible", "incompatible")
               else f"live result inconclusive ({live.verdict}: {live.reason or 'no reason'})")
        return Agreement(verdict, outcome, live.verdict, None, f"nothing to compare: {why}")
    if verdict == "compatible" and outcome == "accepted":
        return Agreement(verdict, outcome, live.verdict, True,
                         "both say compatible")
    if verdict == "incompatible" and outcome == "rejected":
        return Agreement(verdict, outcome, live.verdict, True,
                         f"both say broken; live: {live.reason}")
    if verdict == "incompatible":
        return Agreement(verdict, outcome, live.verdict, False,
                         f"static check flags {errors} errors that this migration did not hit"
                         + (f" ({conditional} in subsections the source sends only when their "
                            f"needed() hook is true, which this guest's state did not trigger)"
                            if conditional else "")
                         + "; a guest in another state may hit them")
    return Agreement(verdict, outcome, live.verdict, False,
                     "the live migration failed where the static check saw nothing: the cause "
                     "is outside the dumped device VMState (CPU, APIC, RAM, timers, the "
                     "harness)" + (f" or in a type not in the dumps ({', '.join(unmapped)})"
                                   if unmapped else "") + f"; live: {live.reason}")


async def static_beside_live(src: QemuBuild, dst: QemuBuild, machine_type: str | None,
                             devices: Sequence[str] | None, live: CellResult, *,
                             dst_devices: Sequence[str] | None = None
                             ) -> dict[str, Any] | None:
    """The ``figures["vmstate_static"]`` entry for a finished cell, or None.

    None when the builds are the same or the cell never got a machine type.
    Runs the check in a worker thread (dumps are subprocesses) after the VMs
    are gone, so a cold dump cannot disturb the migration being measured.
    Never raises for a check problem and never changes the cell's verdict.
    """
    if machine_type is None or not builds_differ(src, dst):
        return None
    try:
        check = await asyncio.to_thread(static_check, src, dst, machine_type, devices,
                                        dst_devices=dst_devices)
    except (HarnessError, OSError, ValueError) as exc:
        check = CheckResult(CHECK_NAME, False, f"no static verdict: {exc}",
                            {"advisory": True, "verdict": "unknown", "error": str(exc)})
    entry = asdict(check)
    entry.pop("expected_to_fail", None)
    entry["agreement"] = agreement(check, live).to_dict()
    return entry

