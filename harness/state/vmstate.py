"""Static VMState compatibility check between two QEMU builds.

``qemu-system-* -M MACHINE -dump-vmstate FILE`` writes, for every device type
the binary knows, the VMState description its migration code walks.  Comparing
the description of a source build with that of a destination build predicts,
before any VM is started, whether the destination can parse what the source
sends.  This module reads that format directly; it shares no code with QEMU's
``scripts/vmstate-static-checker.py``.

The dump format (QEMU 7.2 and 10.0, ``dump_vmstate_json`` in migration/savevm.c)::

    {
      "vmschkmachine": {"Name": "pc-q35-7.2"},
      "<QOM type>": {
        "Name": "<QOM type>", "version_id": 5, "minimum_version_id": 3,
        "Description": {
          "name": "<vmsd name>", "version_id": 5, "minimum_version_id": 3,
          "Fields": [
            {"field": "phys", "version_id": 0, "field_exists": false,
             "size": 1, "num": 6},                 # "num": arrays, QEMU >= 8.1
            {"field": "parent_obj", ..., "size": 2608,
             "Description": {...}}                # a VMSTATE_STRUCT
          ],
          "Subsections": [ {"name": "<vmsd name>/<sub>", ...}, ... ]
        }
      }, ...
    }

``size`` is the size of one element in the source's C struct; ``num`` the array
length.  Field names may repeat within one description (QEMU then tells them
apart by occurrence number, as we do: ``config#1``).

How QEMU's loader reads a section (``vmstate_load_state`` in migration/vmstate.c)
decides what is compatible:

* The stream carries the section's ``version_id`` as the source saved it.  The
  destination refuses it when it is greater than its own ``version_id`` ("too new
  for local version_id") or smaller than its ``minimum_version_id`` ("too old for
  local minimum version_id").  So src -> dst works only if
  ``dst.minimum_version_id <= src.version_id <= dst.version_id``.
* Fields carry no names or lengths on the wire: both sides walk their field list
  in order and take a field when its ``version_id`` is <= the *incoming* version
  (or its ``field_exists`` hook says so at run time).  The two filtered lists must
  match element by element in size and count; a field one side has and the other
  lacks, a reordering or a size change misparses the stream.  A renamed field of
  the same size is harmless.
* A ``VMSTATE_STRUCT`` field is loaded with the *local* struct's own
  ``version_id`` (not transmitted), so nested descriptions are filtered by each
  side's own struct version; their C ``size`` is the in-memory struct size and
  does not reach the wire.
* Subsections follow the fields, each sent only when its ``needed()`` hook says
  so, as (name, version_id, fields).  ``vmstate_subsection_load`` looks each
  incoming name up in the destination's list and fails the whole load with
  -ENOENT when it does not know it; a subsection the destination knows but the
  source never sends is simply not loaded (the loop stops at the first byte that
  is not QEMU_VM_SUBSECTION).  An incoming subsection is then loaded with its
  transmitted version, under the same version rules as a section.
* The machine type travels in the "configuration" section and must match exactly
  ("Machine type received is ... and local is ...", ``configuration_post_load``
  in migration/savevm.c).

A dump lists every device type compiled in, not only those a VM uses, so a
device type the destination lacks is a warning (a VM with that device cannot
even be started there) unless the caller names the sections its VM uses.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from harness.errors import BuildError

__all__ = [
    "ERROR", "WARNING", "INFO", "Finding", "VmstateReport",
    "dump_vmstate", "compare_vmstate", "load_dump",
]

Severity = Literal["error", "warning", "info"]
ERROR: Severity = "error"
WARNING: Severity = "warning"
INFO: Severity = "info"
_SEVERITY_RANK = {ERROR: 0, WARNING: 1, INFO: 2}

MACHINE_KEY = "vmschkmachine"

# Finding kinds (stable strings: tests and reports match on them).
MACHINE_MISMATCH = "machine-mismatch"
SECTION_MISSING_IN_DST = "section-missing-in-dst"
SECTION_MISSING_IN_SRC = "section-missing-in-src"
SECTION_RENAMED = "section-renamed"
SECTION_UNKNOWN = "section-unknown"
VERSION_TOO_NEW = "version-too-new"
VERSION_TOO_OLD = "version-too-old"
VERSION_CHANGED = "version-changed"
MINIMUM_VERSION_CHANGED = "minimum-version-changed"
FIELD_MISSING_IN_DST = "field-missing-in-dst"
FIELD_MISSING_IN_SRC = "field-missing-in-src"
FIELD_RENAMED = "field-renamed"
FIELD_ORDER = "field-order"
FIELD_SIZE = "field-size"
FIELD_NUM = "field-num"
FIELD_VERSION = "field-version"
FIELD_EXISTS_CHANGED = "field-exists-changed"
FIELD_TYPE = "field-type"
STRUCT_SIZE = "struct-size"
STRUCT_VERSION = "struct-version"
STRUCT_RENAMED = "struct-renamed"
SUBSECTION_MISSING_IN_DST = "subsection-missing-in-dst"
SUBSECTION_MISSING_IN_SRC = "subsection-missing-in-src"

DEFAULT_DUMP_TIMEOUT = 60.0


# --------------------------------------------------------------------------- dump

def dump_vmstate(binary: str, machine: str, data_dirs: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                 timeout: float = DEFAULT_DUMP_TIMEOUT) -> dict[str, Any]:
    """Run ``BINARY -M MACHINE -dump-vmstate FILE`` and return the parsed JSON.

    ``data_dirs`` become ``-L`` options (before ``extra_args``); ``env`` is added to
    (and overrides) the current environment.  QEMU writes the file and exits
    without creating the machine, so no accelerator or firmware is started.
    Raises :class:`BuildError` naming the binary, with the tail of its stderr,
    when it is missing, times out, exits non-zero or writes no valid JSON.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with tempfile.TemporaryDirectory(prefix="mharness-vmstate-") as tmp:
        out = Path(tmp) / "vmstate.json"
        argv = [binary, "-M", machine, "-dump-vmstate", str(out),
                "-nodefaults", "-display", "none"]
        for d in data_dirs:
            argv += ["-L", str(d)]
        argv += list(extra_args)
        try:
            proc = subprocess.run(argv, env=full_env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise BuildError(binary, "binary not found") from None
        except PermissionError:
            raise BuildError(binary, "binary is not executable") from None
        except subprocess.TimeoutExpired as exc:
            raise BuildError(binary, f"-dump-vmstate for machine '{machine}' did not finish "
                                     f"within {timeout:g} s{_tail(exc.stderr)}") from None
        if proc.returncode != 0:
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            raise BuildError(binary, f"-dump-vmstate for machine '{machine}' failed "
                                     f"({how}){_tail(proc.stderr)}")
        try:
            text = out.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BuildError(binary, f"-dump-vmstate for machine '{machine}' wrote no file"
                                     f"{_tail(proc.stderr)}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BuildError(binary, f"-dump-vmstate for machine '{machine}' wrote invalid "
                                     f"JSON ({exc}){_tail(proc.stderr)}") from None
    if not isinstance(data, dict) or not data:
        raise BuildError(binary, f"-dump-vmstate for machine '{machine}' wrote no sections")
    return data


def load_dump(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dump written earlier by ``-dump-vmstate`` (or a test fixture)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a VMState dump (top level is not an object)")
    return data


def _tail(stderr: bytes | str | None, lines: int = 15) -> str:
    if not stderr:
        return ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    text = "\n".join(stderr.strip().splitlines()[-lines:])
    return f"; stderr:\n{text}" if text else ""


# ----------------------------------------------------------------------- findings

@dataclasses.dataclass(frozen=True)
class Finding:
    """One difference between the source and the destination description.

    ``section`` is the top-level key (the QOM type), ``path`` where inside it
    ("" for the section itself; ``a.b`` for field ``b`` of struct field ``a``;
    ``{dev/sub}`` for a subsection; ``name#1`` for a repeated field name).
    ``severity`` is "error" when it breaks src -> dst migration, "warning" when it
    breaks it only under conditions a static check cannot see, "info" otherwise.
    """

    section: str
    path: str
    kind: str
    src: Any
    dst: Any
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = f"{self.section}:{self.path}" if self.path else self.section
        return f"{self.severity}: {where}: {self.message}"


@dataclasses.dataclass
class VmstateReport:
    """The outcome of :func:`compare_vmstate` for one direction, src -> dst."""

    src_name: str
    dst_name: str
    src_machine: str | None
    dst_machine: str | None
    sections_compared: int
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing found breaks migrating src -> dst."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src_name, "dst": self.dst_name,
            "src_machine": self.src_machine, "dst_machine": self.dst_machine,
            "ok": self.ok,
            "sections_compared": self.sections_compared,
            "counts": {s: sum(1 for f in self.findings if f.severity == s)
                       for s in (ERROR, WARNING, INFO)},
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def summary(self, max_lines: int = 8) -> str:
        """A few readable lines: verdict, counts, then the worst findings."""
        counts = Counter(f.severity for f in self.findings)
        verdict = "compatible" if self.ok else "INCOMPATIBLE"
        machine = (self.src_machine if self.src_machine == self.dst_machine
                   else f"{self.src_machine} -> {self.dst_machine}")
        lines = [f"vmstate {self.src_name} -> {self.dst_name} ({machine}): {verdict}; "
                 f"{self.sections_compared} sections compared, {counts[ERROR]} errors, "
                 f"{counts[WARNING]} warnings, {counts[INFO]} notes"]
        ranked = sorted(self.findings, key=lambda f: _SEVERITY_RANK[f.severity])
        shown = [f for f in ranked if f.severity != INFO][:max_lines]
        lines += [f"  {f}" for f in shown]
        hidden = sum(1 for f in self.findings if f.severity != INFO) - len(shown)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more (see to_json())")
        return "\n".join(lines)


# --------------------------------------------------------------------- comparison

def compare_vmstate(src: Mapping[str, Any], dst: Mapping[str, Any], *,
                    sections: Iterable[str] | None = None,
                    src_name: str = "src", dst_name: str = "dst") -> VmstateReport:
    """Compare two ``-dump-vmstate`` dumps for migrating from ``src`` to ``dst``.

    Every section present on both sides is compared field by field, recursively
    through struct fields and subsections.  ``sections`` restricts the check to
    the device types a VM actually uses; a listed section the destination lacks
    is then an error (without it, a section only the source has is a warning,
    since the dumps list every device type compiled in).  ``src_name`` and
    ``dst_name`` label the builds in messages.
    """
    cmp = _Comparer(src_name, dst_name, _has_num(src), _has_num(dst))
    src_machine = _machine(src)
    dst_machine = _machine(dst)
    if src_machine != dst_machine:
        cmp.add(MACHINE_KEY, "", MACHINE_MISMATCH, src_machine, dst_machine, ERROR,
                f"machine type differs: the destination refuses the stream with "
                f"\"Machine type received is '{src_machine}' and local is '{dst_machine}'\"")

    wanted = None if sections is None else list(dict.fromkeys(sections))
    src_keys = [k for k in src if k != MACHINE_KEY]
    dst_keys = [k for k in dst if k != MACHINE_KEY]
    names = wanted if wanted is not None else sorted(set(src_keys) | set(dst_keys))
    compared = 0
    for name in names:
        s, d = src.get(name), dst.get(name)
        if s is None and d is None:
            cmp.add(name, "", SECTION_UNKNOWN, None, None, WARNING,
                    f"device type '{name}' is in neither dump (only device classes with "
                    f"their own vmsd are dumped: not CPUs, RAM or virtio PCI proxies)")
        elif d is None:
            sev = ERROR if wanted is not None else WARNING
            cmp.add(name, "", SECTION_MISSING_IN_DST, _version(s), None, sev,
                    f"device type '{name}' is unknown to {dst_name}: a VM with it cannot "
                    f"be started there, so its state cannot be received")
        elif s is None:
            sev = ERROR if wanted is not None else INFO
            cmp.add(name, "", SECTION_MISSING_IN_SRC, None, _version(d), sev,
                    f"device type '{name}' exists only on {dst_name}")
        else:
            compared += 1
            cmp.section(name, s, d)
    return VmstateReport(src_name, dst_name, src_machine, dst_machine, compared, cmp.findings)


def _machine(dump: Mapping[str, Any]) -> str | None:
    entry = dump.get(MACHINE_KEY)
    return entry.get("Name") if isinstance(entry, Mapping) else None


def _version(entry: Mapping[str, Any] | None) -> int | None:
    if not entry:
        return None
    desc = entry.get("Description", entry)
    return desc.get("version_id")


@dataclasses.dataclass(frozen=True)
class _Field:
    """A field of a description, keyed by name and occurrence number."""

    key: tuple[str, int]
    raw: Mapping[str, Any]

    @property
    def label(self) -> str:
        name, occ = self.key
        return f"{name}#{occ}" if occ else name

    @property
    def version(self) -> int:
        return int(self.raw.get("version_id", 0))

    @property
    def conditional(self) -> bool:
        return bool(self.raw.get("field_exists", False))

    @property
    def size(self) -> int | None:
        return self.raw.get("size")

    @property
    def num(self) -> int | None:
        return self.raw.get("num")

    @property
    def struct(self) -> Mapping[str, Any] | None:
        return self.raw.get("Description")

    def wire_bytes(self) -> int | None:
        """Bytes on the wire for a flat field, taking a missing ``num`` as 1."""
        if self.struct is not None or self.size is None:
            return None
        return self.size * (self.num if self.num is not None else 1)


def _block_bytes(fields: Sequence[_Field], dump_has_num: bool) -> tuple[int | None, bool]:
    """Total wire bytes of consecutive flat fields, and whether that is certain.

    Dumps older than QEMU 8.1 carry no ``num``: an array then looks like one
    element, so totals computed from them are only a lower bound.
    """
    total = 0
    for f in fields:
        b = f.wire_bytes()
        if b is None:
            return None, False
        total += b
    return total, dump_has_num


def _has_num(dump: Mapping[str, Any]) -> bool:
    """Whether a dump records array lengths (``num``, added in QEMU 8.1)."""
    def walk(desc: Mapping[str, Any]) -> bool:
        for f in desc.get("Fields", []) or []:
            if "num" in f or ("Description" in f and walk(f["Description"])):
                return True
        return any(walk(sub) for sub in desc.get("Subsections", []) or [])
    return any(isinstance(e, Mapping) and "Description" in e and walk(e["Description"])
               for e in dump.values())


def _fields(desc: Mapping[str, Any]) -> list[_Field]:
    seen: Counter[str] = Counter()
    out = []
    for raw in desc.get("Fields", []) or []:
        name = str(raw.get("field", "?"))
        out.append(_Field((name, seen[name]), raw))
        seen[name] += 1
    return out


def _on_wire(fields: list[_Field], version: int) -> list[_Field]:
    """The fields a description reads or writes at ``version``.

    ``vmstate_field_exists``: with a ``field_exists`` hook the hook alone decides
    at run time (kept here, flagged as conditional); otherwise the field is on the
    wire when its ``version_id`` <= the stream's version.
    """
    return [f for f in fields if f.conditional or f.version <= version]


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


class _Comparer:
    def __init__(self, src_name: str, dst_name: str, src_has_num: bool = True,
                 dst_has_num: bool = True) -> None:
        self.src_name = src_name
        self.dst_name = dst_name
        self.src_has_num = src_has_num
        self.dst_has_num = dst_has_num
        self.findings: list[Finding] = []

    def add(self, section: str, path: str, kind: str, src: Any, dst: Any,
            severity: Severity, message: str) -> None:
        self.findings.append(Finding(section, path, kind, src, dst, severity, message))

    # A top-level section: versioned on the wire, named by its vmsd name.
    def section(self, name: str, s_entry: Mapping[str, Any], d_entry: Mapping[str, Any]) -> None:
        s = s_entry.get("Description")
        d = d_entry.get("Description")
        if s is None or d is None:
            if (s is None) != (d is None):
                self.add(name, "", FIELD_TYPE, s is not None, d is not None, WARNING,
                         "only one side dumps a description for this device type")
            return
        if s.get("name") != d.get("name"):
            self.add(name, "", SECTION_RENAMED, s.get("name"), d.get("name"), ERROR,
                     f"vmsd name differs ('{s.get('name')}' vs '{d.get('name')}'): "
                     f"the destination looks sections up by that name and will not find it")
        self.versioned(name, "", s, d, what="section")

    # A description whose version travels on the wire (section or subsection).
    def versioned(self, section: str, path: str, s: Mapping[str, Any], d: Mapping[str, Any],
                  what: str) -> None:
        sv = int(s.get("version_id", 0))
        dv = int(d.get("version_id", 0))
        dmin = int(d.get("minimum_version_id", 0))
        smin = int(s.get("minimum_version_id", 0))
        vmsd = d.get("name", section)
        refused = sv > dv or sv < dmin
        if sv > dv:
            self.add(section, path, VERSION_TOO_NEW, sv, dv, ERROR,
                     f"{what} version {sv} is newer than {self.dst_name}'s {dv}: the loader says "
                     f"\"{vmsd}: incoming version_id {sv} is too new for local version_id {dv}\"")
        elif sv < dmin:
            self.add(section, path, VERSION_TOO_OLD, sv, dmin, ERROR,
                     f"{what} version {sv} is older than {self.dst_name}'s minimum {dmin}: "
                     f"\"{vmsd}: incoming version_id {sv} is too old for local minimum "
                     f"version_id {dmin}\"")
        elif sv != dv:
            self.add(section, path, VERSION_CHANGED, sv, dv, INFO,
                     f"{what} version {sv} -> {dv}; accepted ({self.dst_name} loads "
                     f"{dmin}..{dv})")
        if smin != dmin:
            self.add(section, path, MINIMUM_VERSION_CHANGED, smin, dmin, INFO,
                     f"{what} minimum_version_id {smin} -> {dmin}")
        if refused:
            return                      # the loader stops here: nothing more is read
        # Fields are read as of the incoming (source) version on both sides.
        self.field_lists(section, path, s, d, sv, sv)
        self.subsections(section, path, s, d)

    def subsections(self, section: str, path: str, s: Mapping[str, Any],
                    d: Mapping[str, Any]) -> None:
        s_subs = {str(x.get("name")): x for x in s.get("Subsections", []) or []}
        d_subs = {str(x.get("name")): x for x in d.get("Subsections", []) or []}
        for name, sub in s_subs.items():
            sub_path = _join(path, "{" + name + "}")
            if name not in d_subs:
                # vmstate_subsection_load: an unknown incoming subsection -> -ENOENT.
                self.add(section, sub_path, SUBSECTION_MISSING_IN_DST, sub.get("version_id"),
                         None, ERROR,
                         f"subsection '{name}' is unknown to {self.dst_name}: whenever "
                         f"{self.src_name} sends it (its needed() is true) the load fails")
            else:
                self.versioned(section, sub_path, sub, d_subs[name], what="subsection")
        for name, sub in d_subs.items():
            if name not in s_subs:
                # Subsections are optional on load: one never sent is never read.
                self.add(section, _join(path, "{" + name + "}"), SUBSECTION_MISSING_IN_SRC,
                         None, sub.get("version_id"), INFO,
                         f"subsection '{name}' exists only on {self.dst_name}; "
                         f"not receiving it is fine")

    # A nested VMSTATE_STRUCT: each side walks its own struct version.
    def struct(self, section: str, path: str, s: Mapping[str, Any], d: Mapping[str, Any]) -> None:
        sv = int(s.get("version_id", 0))
        dv = int(d.get("version_id", 0))
        if s.get("name") != d.get("name"):
            self.add(section, path, STRUCT_RENAMED, s.get("name"), d.get("name"), INFO,
                     "struct description renamed (struct names are not on the wire)")
        if sv != dv:
            self.add(section, path, STRUCT_VERSION, sv, dv, INFO,
                     f"struct version {sv} -> {dv} (not transmitted: each side walks its own)")
        self.field_lists(section, path, s, d, sv, dv)
        self.subsections(section, path, s, d)

    def field_lists(self, section: str, path: str, s: Mapping[str, Any], d: Mapping[str, Any],
                    s_version: int, d_version: int) -> None:
        s_all, d_all = _fields(s), _fields(d)
        # Version changes of a field present on both sides, whether or not it is
        # on the wire at this version (its effect on the wire is judged below).
        d_by_key = {f.key: f for f in d_all}
        for f in s_all:
            g = d_by_key.get(f.key)
            if g is not None and f.version != g.version:
                self.add(section, _join(path, f.label), FIELD_VERSION, f.version, g.version, INFO,
                         f"field version_id {f.version} -> {g.version}")
        sw = _on_wire(s_all, s_version)
        dw = _on_wire(d_all, d_version)
        s_keys = [f.key for f in sw]
        d_keys = [f.key for f in dw]
        s_set, d_set = set(s_keys), set(d_keys)
        d_wire = {f.key: f for f in dw}
        matcher = difflib.SequenceMatcher(None, s_keys, d_keys, autojunk=False)
        moved: set[tuple[str, int]] = set()
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                for f, g in zip(sw[i1:i2], dw[j1:j2]):
                    self.field_pair(section, path, f, g)
                continue
            s_block, d_block = sw[i1:i2], dw[j1:j2]
            if op == "replace" and self.renamed_block(section, path, s_block, d_block,
                                                      s_set, d_set):
                continue
            for f in s_block:
                if f.key in d_set:
                    moved.add(f.key)
                else:
                    self.missing(section, path, f, FIELD_MISSING_IN_DST, s_version)
            for g in d_block:
                if g.key in s_set:
                    moved.add(g.key)
                else:
                    self.missing(section, path, g, FIELD_MISSING_IN_SRC, s_version)
        s_pos = {k: i for i, k in enumerate(s_keys)}
        d_pos = {k: i for i, k in enumerate(d_keys)}
        for key in sorted(moved, key=lambda k: s_pos[k]):
            f = next(x for x in sw if x.key == key)
            self.add(section, _join(path, f.label), FIELD_ORDER, s_pos[key], d_pos[key], ERROR,
                     f"field is at position {s_pos[key]} on {self.src_name} but "
                     f"{d_pos[key]} on {self.dst_name}: the stream is read in order")
            self.field_pair(section, path, f, d_wire[key])

    def renamed_block(self, section: str, path: str, s_block: list[_Field],
                      d_block: list[_Field], s_set: set, d_set: set) -> bool:
        """Judge a run of fields replaced by differently named ones.

        Names never reach the wire, so a run that occupies the same bytes is
        compatible: a rename, or several fields folded into one ``VMSTATE_UNUSED``
        (e.g. sb16's irq/dma/hdma/port/ver became 20 unused bytes in QEMU 9.x).
        Returns True when the run was judged here, False to report it field by field.
        """
        if any(f.key in d_set for f in s_block) or any(g.key in s_set for g in d_block):
            return False                      # a moved field: reported as an order change
        sb, s_exact = _block_bytes(s_block, self.src_has_num)
        db, d_exact = _block_bytes(d_block, self.dst_has_num)
        if sb is None or db is None:
            return False
        s_names = ", ".join(f.label for f in s_block)
        d_names = ", ".join(g.label for g in d_block)
        where = _join(path, s_block[0].label)
        if sb == db:
            assumed = ("" if s_exact and d_exact else
                       f" (taking fields of {self.src_name if not s_exact else self.dst_name}'s "
                       f"dump, which records no array lengths, as single values)")
            self.add(section, where, FIELD_RENAMED, s_names, d_names, INFO,
                     f"fields [{s_names}] became [{d_names}] over the same {sb} bytes: "
                     f"wire-compatible{assumed}")
            return True
        # A dump without array lengths: its single field may be an array that
        # covers the other side's bytes (e1000e's 5 intr_pending bools -> unused[5]).
        if ((not s_exact and len(s_block) == 1 and db > sb and db % sb == 0) or
                (not d_exact and len(d_block) == 1 and sb > db and sb % db == 0)):
            old = self.src_name if not s_exact else self.dst_name
            self.add(section, where, FIELD_RENAMED, s_names, d_names, WARNING,
                     f"fields [{s_names}] ({sb} bytes per element) became [{d_names}] "
                     f"({db} bytes): compatible only if it is an array of {max(sb, db) // min(sb, db)}, "
                     f"which {old}'s dump (no array lengths) cannot show")
            return True
        return False

    def missing(self, section: str, path: str, f: _Field, kind: str, version: int) -> None:
        src_side = kind == FIELD_MISSING_IN_DST
        have, lack = ((self.src_name, self.dst_name) if src_side
                      else (self.dst_name, self.src_name))
        verb = "sends" if src_side else "expects"
        size = f.wire_bytes()
        what = f"{size} bytes" if size is not None else "a struct"
        if f.conditional:
            sev, when = WARNING, " when its field_exists() test passes"
        else:
            sev, when = ERROR, ""
        self.add(section, _join(path, f.label), kind,
                 f.label if src_side else None, None if src_side else f.label, sev,
                 f"{have} {verb} field '{f.label}' ({what}, field version {f.version}) that "
                 f"{lack} lacks at stream version {version}{when}: the stream misparses")

    def field_pair(self, section: str, path: str, f: _Field, g: _Field) -> None:
        fpath = _join(path, f.label)
        if f.conditional != g.conditional:
            self.add(section, fpath, FIELD_EXISTS_CHANGED, f.conditional, g.conditional, WARNING,
                     "field_exists() hook present on one side only: whether the field is on "
                     "the wire is decided differently")
        fs, gs = f.struct, g.struct
        if (fs is None) != (gs is None):
            self.add(section, fpath, FIELD_TYPE, fs is not None, gs is not None, ERROR,
                     "field is a struct on one side and a plain value on the other")
            return
        if f.num is not None and g.num is not None and f.num != g.num:
            self.add(section, fpath, FIELD_NUM, f.num, g.num, ERROR,
                     f"array length {f.num} -> {g.num}")
        if fs is not None and gs is not None:
            if f.size != g.size:
                self.add(section, fpath, STRUCT_SIZE, f.size, g.size, INFO,
                         f"in-memory struct size {f.size} -> {g.size} (the wire format is "
                         f"its description's)")
            self.struct(section, fpath, fs, gs)
        elif f.size != g.size:
            self.add(section, fpath, FIELD_SIZE, f.size, g.size, ERROR,
                     f"field size {f.size} -> {g.size}")
