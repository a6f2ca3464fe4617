"""Load ``matrix.yaml`` (format version 1) into a validated ``Matrix``.

Sections are read in dependency order (builds, targets, transports, capsets,
paramsets, tiers) whatever their order in the file, so every reference can be
checked where it is written and reported with its line and the names that are
defined.  All tiers are expanded at load time: an error in a tier nobody asked
for today is still an error in the file, and it is better found now.

Loading is pure: nothing is checked on disk.  Whether a build's binary exists
is the runner's business (``BuildSpec.required`` says whether its absence is an
error or a reason to skip).
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar, overload

from harness.cell import FIRMWARES, BuildSpec, Cell, TargetSpec, WorkloadSpec
from harness.errors import HarnessError, MatrixError
from harness.failpaths import SCENARIO_IDS, build_label
from harness.known_issues import KnownIssue
from harness.hosts.inventory import LOCAL, HostSpec
from harness.matrix import schema as s
from harness.matrix.hosts import as_host, parse_hosts
from harness.matrix.expand import (
    ARCH_PLACEHOLDER, build_for_arch, expand_tiers, select, with_build,
)
from harness.matrix.known import check_cell_names, parse_known_issues
from harness.matrix.schema import CellDecl, Defaults, ScenarioDecl, TierSpec, Where
from harness.matrix.yamlpos import YEntry, YMap, YNode, YScalar, load_yaml
from harness.migration.transports import FLOW_TRANSPORTS, KNOWN_TRANSPORTS
from harness.migration.modes import PRECOPY, fault_problem, mode_needs, mode_problem
from harness.migration.dst_start import PAUSED, dst_start_problem
from harness.guest.dirtier import PVH_MIN_REGION_BASE
from harness.units import format_size

log = logging.getLogger(__name__)

_PLACEHOLDER_RE = re.compile(r"\{[^}]*\}")
_ACCEL_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VERSION_RE = re.compile(r"\d+\.\d+(\.\d+)?\Z")
#: Where ``dpkg -x`` puts a QEMU package's binary and firmware under a prefix.
PREFIX_BINARY = "usr/bin/qemu-system-{arch}"
PREFIX_DATA_DIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu")
#: What a dimension's value is called in messages.
_WHAT = {"target": "target", "transport": "transport", "capset": "capset",
         "paramset": "paramset", "src-build": "build", "dst-build": "build", "mode": "mode",
         "dst-start": "dst-start"}

#: Dimensions whose values the harness defines (not the file): each value's
#: problem, or None (harness.migration.modes, harness.migration.dst_start).
_VALUE_PROBLEMS: dict[str, Callable[[str], str | None]] = {
    "mode": mode_problem, "dst-start": dst_start_problem}


@dataclass(frozen=True)
class Matrix:
    """A loaded, validated matrix.

    ``builds`` hold paths already resolved; a binary or data dir may still
    contain ``{arch}``, which each cell gets substituted for its target.
    ``capsets``/``paramsets`` always contain ``default`` (empty unless the file
    defines it).  Plain loaded data: it does not plan.  A tier's runnable cells
    come from ``harness.matrix.plan`` (``tier_cells(matrix, tier,
    resolve=discover)``), which may need to ask a QEMU binary its version.
    """

    path: str
    defaults: Defaults
    builds: dict[str, BuildSpec]
    targets: dict[str, TargetSpec]
    #: Target name -> the build its cells use on both sides unless overridden.
    target_builds: dict[str, str]
    transports: tuple[str, ...]
    capsets: dict[str, tuple[tuple[str, bool], ...]]
    paramsets: dict[str, tuple[tuple[str, Any], ...]]
    tiers: dict[str, TierSpec]
    expanded: dict[str, tuple[Cell, ...]] = field(default_factory=dict, repr=False)
    #: Set by ``override_build`` (``--qemu PATH``): every cell runs on this build.
    build_override: BuildSpec | None = None
    #: Build name -> the ``version:`` the file declares for it.
    build_versions: dict[str, str] = field(default_factory=dict)
    #: ``known-issues:``: builds' own defects (harness.known_issues); each cell
    #: carries the ones that name it.
    known_issues: tuple[KnownIssue, ...] = ()
    #: ``hosts:`` (harness.matrix.hosts): where QEMUs may run; ``local`` always.
    hosts: dict[str, HostSpec] = field(default_factory=lambda: {LOCAL: HostSpec(LOCAL)})
    #: Target name -> (src-host, dst-host) names its cells run on unless a
    #: cell says otherwise (only targets that name one).
    target_hosts: dict[str, tuple[str, str]] = field(default_factory=dict)

    def build_specs(self) -> list[BuildSpec]:
        """Concrete builds to probe (``doctor``): ``{arch}`` substituted.

        One entry per build and architecture that some cell uses, in build
        declaration order; a build no cell uses is listed if its binary has no
        ``{arch}`` to fill in.  With ``build_override`` only that build.
        """
        if self.build_override is not None:
            return [self.build_override]
        used: dict[tuple[str, str], BuildSpec] = {}
        for cells in self.expanded.values():
            for cell in cells:
                for spec in (cell.src_build, cell.dst_build):
                    used.setdefault((spec.name, spec.binary), spec)
        for tier in self.tiers.values():
            for cov in tier.coverings:
                for target in cov.targets:
                    arch = self.targets[target].arch
                    for pair in cov.builds:
                        for name in pair:
                            spec = build_for_arch(self.builds[name or
                                                              self.target_builds[target]], arch)
                            used.setdefault((spec.name, spec.binary), spec)
        result: list[BuildSpec] = []
        for name, spec in self.builds.items():
            mine = [b for (n, _), b in used.items() if n == name]
            if mine:
                result += mine
            elif ARCH_PLACEHOLDER not in spec.binary:
                result.append(spec)
        return result


def load_matrix(path: str | Path) -> Matrix:
    """Read, validate and expand a matrix file; ``MatrixError`` says where it's wrong."""
    file = str(path)
    root = load_yaml(path)
    where = Where(file)
    if root is None:
        raise MatrixError("the matrix file is empty", file, 1)
    top = s.as_map(root, where)
    _check_version(top, where)
    entries = s.check_keys(top, where, s.TOP_KEYS, s.TOP_REQUIRED)
    base_dir = os.path.dirname(os.path.abspath(file))

    defaults = _defaults(entries.get("defaults"), where.key("defaults"))
    builds = _named(entries["builds"], where.key("builds"), "build",
                    lambda n, node, w: _build(n, node, w, base_dir))
    build_versions = {
        name: _build_version(item.value.entries["version"].value,
                             where.key("builds").key(name).key("version"))
        for name, item in s.as_map(entries["builds"].value, where.key("builds")).entries.items()
        if isinstance(item.value, YMap) and "version" in item.value.entries}
    hosts = parse_hosts(entries["hosts"].value, where.key("hosts"), base_dir, load_yaml) \
        if "hosts" in entries else {LOCAL: HostSpec(LOCAL)}
    target_hosts: dict[str, tuple[str, str]] = {}
    targets = _named(entries["targets"], where.key("targets"), "target",
                     lambda n, node, w: _target(n, node, w, builds, hosts, target_hosts))
    transport_list = s.as_name_list(entries["transports"].value, where.key("transports"),
                                    "transport")
    for name, line, t_where in transport_list:
        if name not in KNOWN_TRANSPORTS:
            raise t_where.error(f"unknown transport '{name}' (QEMU's are: "
                                f"{', '.join(KNOWN_TRANSPORTS)})", line)
    transports = tuple(name for name, _, _ in transport_list)
    capsets = _sets(entries.get("capsets"), where.key("capsets"), "capability",
                    lambda name, node, w: s.as_bool(node, w))
    paramsets = _sets(entries.get("paramsets"), where.key("paramsets"), "parameter",
                      s.as_parameter_value)
    matrix = Matrix(
        path=file, defaults=defaults,
        builds=builds,
        targets={name: spec for name, (spec, _) in targets.items()},
        target_builds={name: build for name, (_, build) in targets.items()},
        transports=transports, capsets=capsets, paramsets=paramsets, tiers={},
        build_versions=build_versions,
        known_issues=parse_known_issues(entries.get("known-issues"), where.key("known-issues"),
                                        builds, targets),
        hosts=hosts, target_hosts=target_hosts)
    tiers = _Tiers(matrix, where.key("tiers")).parse(entries["tiers"].value)
    matrix = replace(matrix, tiers=tiers)
    matrix = replace(matrix, expanded=expand_tiers(tiers, matrix))
    if "known-issues" in entries:
        check_cell_names(entries["known-issues"].value, where.key("known-issues"),
                         matrix.known_issues,
                         (c.id for cells in matrix.expanded.values() for c in cells))
    log.debug("loaded %s: %d builds, %d targets, tiers %s", file, len(builds), len(targets),
              ", ".join(tiers))
    return matrix


@overload
def override_build(matrix_or_cells: Matrix, binary: str) -> Matrix: ...
@overload
def override_build(matrix_or_cells: Iterable[Cell], binary: str) -> list[Cell]: ...


def override_build(matrix_or_cells: Matrix | Iterable[Cell], binary: str
                   ) -> Matrix | list[Cell]:
    """Run everything on one binary (the CLI's ``--qemu PATH``).

    Both sides of every cell get a required ``BuildSpec`` named after the path;
    ids are unchanged so results stay comparable with the matrix's builds.  A
    bare name (no ``/``) is looked up on ``PATH``; other paths are made absolute
    against the current directory, ``~`` and ``$VAR`` expanded.
    """
    path = os.path.expanduser(os.path.expandvars(binary))
    if os.sep not in path:
        path = shutil.which(path) or path
    path = os.path.abspath(path) if os.sep in path else path
    build = BuildSpec(name=path, binary=path, required=True)
    if isinstance(matrix_or_cells, Matrix):
        return replace(matrix_or_cells, build_override=build)
    return with_build(matrix_or_cells, build)


def load_matrix_on(path: str | Path, binary: str | None, option: str = "--qemu") -> Matrix:
    """The matrix file, run on ``binary`` when one is given (``override_build``).

    The one loader of every front end (``mharness``, the Avocado plugin), so
    they refuse a missing binary the same way; ``option`` is the command-line
    flag the user typed, named in that error."""
    if binary and not shutil.which(binary):
        raise HarnessError(f"{option} {binary}: no such executable")
    matrix = load_matrix(path)
    return override_build(matrix, binary) if binary else matrix


# --- top level ---------------------------------------------------------------


def _check_version(top: YMap, where: Where) -> None:
    """Checked first, so a newer file fails on its version, not on a new key."""
    entry = top.entries.get("version")
    if entry is None:
        raise where.key("version").error(
            f"missing required key (this harness reads version {s.VERSION})", top.line)
    version = s.as_int(entry.value, where.key("version"))
    if version != s.VERSION:
        raise where.key("version").error(
            f"unsupported matrix version {version} (this harness reads version "
            f"{s.VERSION})", entry.value.line)


T = TypeVar("T")


def _named(entry: YEntry, where: Where, what: str,
           parse: Callable[[str, YNode, Where], T]) -> dict[str, T]:
    """A mapping of user-chosen names to definitions, parsed in file order."""
    node = s.as_map(entry.value, where)
    if not node.entries:
        raise where.error(f"no {what}s defined", entry.key_line)
    result: dict[str, T] = {}
    for name, item in node.entries.items():
        s.check_name(name, item.key_line, where.key(name), f"{what} name")
        result[name] = parse(name, item.value, where.key(name))
    return result


def _defaults(entry: YEntry | None, where: Where) -> Defaults:
    if entry is None:
        return Defaults()
    e = s.check_keys(s.as_map(entry.value, where), where, s.DEFAULTS_KEYS)
    result = Defaults()
    if "timeout" in e:
        result = replace(result, timeout=s.as_number(
            e["timeout"].value, where.key("timeout"), strict=True))
    if "downtime-tolerance-ms" in e:
        result = replace(result, downtime_tolerance_ms=s.as_number(
            e["downtime-tolerance-ms"].value, where.key("downtime-tolerance-ms")))
    if "capabilities" in e:
        result = replace(result, capabilities=_qmp_map(
            e["capabilities"].value, where.key("capabilities"), "capability",
            lambda name, node, w: s.as_bool(node, w)))
    if "parameters" in e:
        result = replace(result, parameters=_qmp_map(
            e["parameters"].value, where.key("parameters"), "parameter",
            s.as_parameter_value))
    if "transport-parameters" in e:
        t_where = where.key("transport-parameters")
        per_transport = []
        for name, item in s.as_map(e["transport-parameters"].value, t_where).entries.items():
            if name not in KNOWN_TRANSPORTS:
                raise t_where.key(name).error(
                    f"unknown transport '{name}' (QEMU's are: {', '.join(KNOWN_TRANSPORTS)})",
                    item.key_line)
            per_transport.append((name, _qmp_map(item.value, t_where.key(name), "parameter",
                                                 s.as_parameter_value)))
        result = replace(result, transport_parameters=tuple(sorted(per_transport)))
    return result


# --- builds and targets ------------------------------------------------------


def _path(node: YNode, where: Where, base_dir: str) -> str:
    """Expand ``$VAR`` and ``~``; relative paths are relative to the matrix file.

    Unset variables stay as written (os.path.expandvars), so an optional build
    whose variable is unset simply isn't found at run time and is skipped.
    """
    text = s.as_str(node, where)
    if not text:
        raise where.error("expected a path, got an empty string", node.line)
    for placeholder in _PLACEHOLDER_RE.findall(text):
        if placeholder != "{arch}":
            raise where.error(f"unknown placeholder {placeholder} (only {{arch}} "
                              f"is replaced, by the target's arch)", node.line)
    path = os.path.expanduser(os.path.expandvars(text))
    return os.path.normpath(os.path.join(base_dir, path))


def _build(name: str, node: YNode, where: Where, base_dir: str) -> BuildSpec:
    m = s.as_map(node, where)
    e = s.check_keys(m, where, s.BUILD_KEYS)
    if "binary" not in e and "prefix" not in e:
        raise where.error("a build needs 'binary' (a QEMU executable) or 'prefix' "
                          "(the root of an unpacked QEMU package)", m.line)
    prefix = _path(e["prefix"].value, where.key("prefix"), base_dir) \
        if "prefix" in e else None
    if "binary" in e:
        binary = _path(e["binary"].value, where.key("binary"), base_dir)
    else:
        assert prefix is not None
        binary = os.path.join(prefix, PREFIX_BINARY)
    if "data-dirs" in e:
        seq = s.as_list(e["data-dirs"].value, where.key("data-dirs"))
        data_dirs = tuple(_path(item, where.key("data-dirs").index(i), base_dir)
                          for i, item in enumerate(seq.items))
    elif prefix is not None:
        data_dirs = tuple(os.path.join(prefix, d) for d in PREFIX_DATA_DIRS)
    else:
        data_dirs = ()
    env = _env(e["env"].value, where.key("env")) if "env" in e else ()
    extra_args = s.as_str_list(e["extra-args"].value, where.key("extra-args")) \
        if "extra-args" in e else ()
    required = s.as_bool(e["required"].value, where.key("required")) \
        if "required" in e else False
    return BuildSpec(name=name, binary=binary, data_dirs=data_dirs, env=env,
                     extra_args=extra_args, required=required)


def _build_version(node: YNode, where: Where) -> str:
    """``version: "10.0"``: what the rule oracle assumes for covering arrays
    (without it the binary is asked, so its cells depend on what is installed)."""
    text = s.as_str(node, where)
    if not _VERSION_RE.match(text):
        raise where.error(f"expected a QEMU version like \"10.0\", got {text!r}", node.line)
    return text


def _env(node: YNode, where: Where) -> tuple[tuple[str, str], ...]:
    """Extra environment for the QEMU process; values get ``$VAR``/``~`` expanded."""
    if _is_null(node):
        return ()
    pairs = []
    for var, item in s.as_map(node, where).entries.items():
        if not _ENV_NAME_RE.match(var):
            raise where.key(var).error(f"invalid environment variable name {var!r}",
                                       item.key_line)
        value = s.as_str(item.value, where.key(var))
        pairs.append((var, os.path.expanduser(os.path.expandvars(value))))
    return tuple(sorted(pairs))


def _accel_options(node: YNode, where: Where) -> tuple[tuple[str, str], ...]:
    """``-accel`` properties as a sorted tuple; numbers are taken as their text
    (``dirty-ring-size: 4096``); booleans must be written as QEMU spells them
    (``"on"``/``"off"``)."""
    pairs = []
    for key, item in s.as_map(node, where).entries.items():
        if not _ACCEL_KEY_RE.match(key):
            raise where.key(key).error(f"invalid accelerator property name {key!r}",
                                       item.key_line)
        text = s.as_str(item.value, where.key(key))
        if "," in text:
            raise where.key(key).error(f"accelerator property {key!r} must not contain ','",
                                       item.value.line)
        pairs.append((key, text))
    return tuple(sorted(pairs))


def _target(name: str, node: YNode, where: Where, builds: dict[str, BuildSpec],
            hosts: dict[str, HostSpec], target_hosts: dict[str, tuple[str, str]]
            ) -> tuple[TargetSpec, str]:
    m = s.as_map(node, where)
    e = s.check_keys(m, where, s.TARGET_KEYS, s.TARGET_REQUIRED)
    placed = _placement(e, where, hosts)
    if any(placed):
        target_hosts[name] = (placed[0] or LOCAL, placed[1] or LOCAL)
    spec = TargetSpec(
        name=name,
        arch=s.as_name(e["arch"].value, where.key("arch"), "arch"),
        machine=s.as_str(e["machine"].value, where.key("machine")),
    )
    if "accel" in e:
        spec = replace(spec, accel=s.as_str(e["accel"].value, where.key("accel")))
    if "accel-options" in e:
        spec = replace(spec, accel_options=_accel_options(e["accel-options"].value,
                                                          where.key("accel-options")))
    if "memory" in e:
        spec = replace(spec, memory=s.as_size(e["memory"].value, where.key("memory"),
                                              positive=True))
    if "cpu" in e:
        spec = replace(spec, cpu=s.as_str(e["cpu"].value, where.key("cpu")))
    if "smp" in e:
        spec = replace(spec, smp=s.as_int(e["smp"].value, where.key("smp"), minimum=1))
    build = s.as_ref(e["build"].value, where.key("build"), "build", list(builds))
    if "workload" in e:
        spec = replace(spec, workload=_workload(e["workload"].value,
                                                where.key("workload")))
    region_end = spec.workload.region_base + spec.workload.region_size
    if region_end > spec.memory:
        culprit = _first(e, ("workload", "memory"))
        line, key = (culprit.key_line, where.key(culprit.key)) if culprit \
            else (m.line, where)
        raise key.error(
            f"workload region {format_size(spec.workload.region_base)}"
            f"+{format_size(spec.workload.region_size)} does not fit in memory "
            f"{format_size(spec.memory)}", line)
    if "firmware" in e:
        spec = replace(spec, firmware=_firmware(e["firmware"], where.key("firmware"), spec))
    return spec, build


def _firmware(entry: YEntry, where: Where, spec: TargetSpec) -> str:
    """``firmware: seabios|qboot``: what starts the guest (see TargetSpec.firmware).
    qboot starts the dirtier's PVH build, so it needs an x86 dirtier whose
    region lies above that build's code."""
    name = s.as_str(entry.value, where)
    line = entry.value.line
    if name not in FIRMWARES:
        raise where.error(f"unknown firmware {name!r} (known: {', '.join(FIRMWARES)})", line)
    if name == "qboot":
        if spec.arch not in ("x86_64", "i386"):
            raise where.error(f"firmware qboot is for x86 targets, not arch {spec.arch!r}", line)
        if spec.workload.kind != "dirtier":
            raise where.error(f"firmware qboot starts the dirtier (as a PVH kernel); workload "
                              f"kind {spec.workload.kind!r} has nothing for it to start "
                              f"(use seabios)", line)
        if spec.workload.region_base < PVH_MIN_REGION_BASE:
            raise where.error(f"firmware qboot loads the dirtier's code at 1 MiB: the workload "
                              f"region must start at or above {PVH_MIN_REGION_BASE:#x}, not "
                              f"{format_size(spec.workload.region_base)}", line)
    return name


def _placement(e: dict[str, YEntry], where: Where, hosts: dict[str, HostSpec]
               ) -> tuple[str, str]:
    """``src-host``/``dst-host`` of a target, cell or product ("" where not given)."""
    src, dst = (as_host(e[k].value, where.key(k), hosts) if k in e else ""
                for k in s.PLACEMENT_KEYS)
    return src, dst


def _first(entries: dict[str, YEntry], keys: Sequence[str]) -> YEntry | None:
    return next((entries[k] for k in keys if k in entries), None)


def _workload(node: YNode, where: Where) -> WorkloadSpec:
    m = s.as_map(node, where)
    kind_node = m.entries.get("kind")
    kind = s.as_name(kind_node.value, where.key("kind"), "workload kind") if kind_node \
        else WorkloadSpec.kind
    own = s.WORKLOAD_KIND_KEYS.get(kind, {})
    e = s.check_keys(m, where, s.WORKLOAD_KEYS + tuple(own))
    spec = WorkloadSpec(kind=kind)
    if own:
        spec = replace(spec, options=_kind_options(e, own, where))
    if "region" in e:
        spec = replace(spec, region_size=s.as_size(e["region"].value,
                                                   where.key("region"), positive=True))
    if "base" in e:
        spec = replace(spec, region_base=s.as_size(e["base"].value, where.key("base")))
    if "warmup-passes" in e:
        spec = replace(spec, warmup_passes=s.as_int(
            e["warmup-passes"].value, where.key("warmup-passes"), minimum=0))
    return spec


def _kind_options(e: dict[str, YEntry],
                  keys: Mapping[str, tuple[str, Any, tuple[Any, ...] | None]], where: Where
                  ) -> tuple[tuple[str, Any], ...]:
    """A workload kind's own settings (``keys``: see ``schema.WORKLOAD_KIND_KEYS``)."""
    out = []
    for key, (kind, _default, choices) in keys.items():
        if key not in e:
            continue
        node, w = e[key].value, where.key(key)
        if kind == "size":
            value: Any = s.as_size(node, w)
        elif kind == "int":
            value = s.as_int(node, w, minimum=0)
        elif kind == "bool":
            value = s.as_bool(node, w)
        else:
            value = s.as_str(node, w)
            if choices and value not in choices:
                raise w.error(f"{value!r} is not one of {', '.join(choices)}", node.line)
        out.append((key, value))
    return tuple(sorted(out))


# --- capability and parameter sets --------------------------------------------


def _is_null(node: YNode) -> bool:
    return isinstance(node, YScalar) and node.value is None


def _qmp_map(node: YNode, where: Where, what: str, convert: Any
             ) -> tuple[tuple[str, Any], ...]:
    """``{name: value}`` with QMP-spelled names, as a sorted tuple.  Null = empty."""
    if _is_null(node):
        return ()
    m = s.as_map(node, where)
    result = []
    for name, entry in m.entries.items():
        s.check_qmp_name(name, entry.key_line, where.key(name), what)
        result.append((name, convert(name, entry.value, where.key(name))))
    return tuple(sorted(result))


def _sets(entry: YEntry | None, where: Where, what: str, convert: Any
          ) -> dict[str, tuple[tuple[str, Any], ...]]:
    """Named capsets/paramsets; ``default`` exists (empty) unless defined."""
    result: dict[str, tuple[tuple[str, Any], ...]] = {s.DEFAULT_SET: ()}
    if entry is None or _is_null(entry.value):
        return result
    for name, item in s.as_map(entry.value, where).entries.items():
        s.check_name(name, item.key_line, where.key(name), f"{what} set name")
        result[name] = _qmp_map(item.value, where.key(name), what, convert)
    return result


# --- tiers ----------------------------------------------------------------------


class _Tiers:
    """Parses ``tiers:`` against the already-parsed definitions."""

    def __init__(self, matrix: Matrix, where: Where) -> None:
        self.m = matrix
        self.where = where

    def parse(self, node: YNode) -> dict[str, TierSpec]:
        tiers_map = s.as_map(node, self.where)
        if not tiers_map.entries:
            raise self.where.error("no tiers defined", tiers_map.line)
        for name, entry in tiers_map.entries.items():
            s.check_name(name, entry.key_line, self.where.key(name), "tier name")
        names = list(tiers_map.entries)
        tiers = {name: self._tier(name, entry, names)
                 for name, entry in tiers_map.entries.items()}
        self._check_cycles(tiers)
        return tiers

    def _tier(self, name: str, entry: YEntry, names: list[str]) -> TierSpec:
        where = self.where.key(name)
        m = s.as_map(entry.value, where)
        e = s.check_keys(m, where, s.TIER_KEYS, reserved=s.RESERVED_TIER_KEYS)
        spec = TierSpec(name=name, line=entry.key_line)
        if "description" in e:
            spec = replace(spec, description=s.as_str(e["description"].value,
                                                      where.key("description")))
        if "include" in e:
            includes = s.as_name_list(e["include"].value, where.key("include"),
                                      "tier", allow_empty=True)
            for inc, line, inc_where in includes:
                s.check_ref(inc, line, inc_where, "tier", names)
            spec = replace(spec, include=tuple(n for n, _, _ in includes),
                           include_lines=tuple(line for _, line, _ in includes))
        cells: list[CellDecl] = []
        scenarios: list[ScenarioDecl] = []
        coverings: list[s.CoveringSpec] = []
        for key, item in e.items():  # file order: cells and products interleave
            if key == "cells":
                seq = s.as_list(item.value, where.key("cells"))
                for i, node in enumerate(seq.items):
                    if _is_scenario_entry(node):
                        scenarios += self._scenarios(node, where.key("cells").index(i))
                    else:
                        cells.append(self._cell(node, where.key("cells").index(i)))
            elif key == "product":
                cells += self._products(item.value, where.key("product"))
            elif key == "covering":
                coverings += self._coverings(item.value, where.key("covering"))
        if "filter" in e:
            text = s.as_str(e["filter"].value, where.key("filter"))
            try:
                select([], text)
            except MatrixError as exc:
                raise where.key("filter").error(exc.reason, e["filter"].value.line) from None
            spec = replace(spec, filter=text, filter_line=e["filter"].value.line)
        if not spec.include and not cells and not coverings and not scenarios:
            raise where.error("the tier has no cells: give it 'include', 'cells', "
                              "'product' or 'covering'", entry.key_line)
        return replace(spec, cells=tuple(cells), coverings=tuple(coverings),
                       scenarios=tuple(scenarios))

    def _scenarios(self, node: YNode, where: Where) -> list[ScenarioDecl]:
        """``{scenario: ID, build: NAME}`` or ``{scenarios: all | [IDs], builds:
        [NAMES]}``: each scenario on each build, scenario by scenario."""
        m = s.as_map(node, where)
        e = s.check_keys(m, where, s.SCENARIO_KEYS)
        for one, many in (("scenario", "scenarios"), ("build", "builds")):
            if one in e and many in e:
                raise where.key(many).error(f"give either '{one}' or '{many}', not both",
                                            e[many].key_line)
        if "build" not in e and "builds" not in e:
            raise where.key("build").error(
                "missing required key: a scenario runs on the build named by 'build' "
                "(or on each of 'builds')", m.line)
        ids = self._scenario_ids(e["scenario"] if "scenario" in e else e["scenarios"],
                                 where.key("scenario" if "scenario" in e else "scenarios"))
        key = "build" if "build" in e else "builds"
        names = s.as_name_list(e[key].value, where.key(key), "build")
        if key == "build" and len(names) > 1:
            raise where.key(key).error("expected one build name (a list goes in 'builds')",
                                       e[key].value.line)
        builds = [self._check_ref("src-build", n, line, w) for n, line, w in names]
        return [ScenarioDecl(scenario=sid, build=build,
                             label=build_label(build, self.m.build_versions.get(build)),
                             where=where.path, line=m.line)
                for sid in ids for build in builds]

    def _scenario_ids(self, entry: YEntry, where: Where) -> list[str]:
        """Registered scenario ids (``all``: every one, in registry order);
        an unknown id lists the known ones."""
        node = entry.value
        if isinstance(node, YScalar) and node.value == s.ALL_SCENARIOS:
            if entry.key == "scenario":
                raise where.error(f"'{s.ALL_SCENARIOS}' goes in 'scenarios', not 'scenario'",
                                  node.line)
            return list(SCENARIO_IDS)
        values = s.as_name_list(node, where, "scenario")
        if entry.key == "scenario" and len(values) > 1:
            raise where.error("expected one scenario id (a list goes in 'scenarios')",
                              node.line)
        for name, line, w in values:
            if name not in SCENARIO_IDS:
                raise w.error(f"unknown scenario '{name}' (known: {', '.join(SCENARIO_IDS)})",
                              line)
        return [name for name, _, _ in values]

    def _coverings(self, node: YNode, where: Where) -> list[s.CoveringSpec]:
        """``covering:`` is one mapping or a list of them."""
        if isinstance(node, YMap):
            return [self._covering(node, where)]
        seq = s.as_list(node, where)
        return [self._covering(item, where.index(i)) for i, item in enumerate(seq.items)]

    def _covering(self, node: YNode, where: Where) -> s.CoveringSpec:
        m = s.as_map(node, where)
        e = s.check_keys(m, where, s.COVERING_KEYS, s.COVERING_REQUIRED)
        spec = s.CoveringSpec(line=m.line, where=where.path)
        if "order" in e:
            spec = replace(spec, order=s.as_int(e["order"].value, where.key("order"),
                                                minimum=1, maximum=s.MAX_ORDER))

        def names(key: str, dim: str) -> tuple[str, ...]:
            values = s.as_name_list(e[key].value, where.key(key), _WHAT[dim])
            return tuple(self._check_ref(dim, n, line, w) for n, line, w in values)

        spec = replace(spec, targets=names("target", "target"))
        if "mode" in e:
            spec = replace(spec, modes=names("mode", "mode"))
        if "dst-start" in e:
            spec = replace(spec, dst_starts=names("dst-start", "dst-start"))
        # Transports the flow cannot run are kept: the plan excludes them with
        # the reason, so `mharness list` shows it.
        values = s.as_name_list(e["transport"].value, where.key("transport"), "transport")
        spec = replace(spec, transports=tuple(
            self._check_ref("transport", n, line, w, flow_only=False) for n, line, w in values))
        if "build" in e and ("src-build" in e or "dst-build" in e):
            raise where.key("build").error("give either 'build' (both sides) or "
                                           "'src-build'/'dst-build'", e["build"].key_line)
        if "build" in e:
            spec = replace(spec, builds=tuple((b, b) for b in names("build", "src-build")))
        elif "src-build" in e or "dst-build" in e:
            srcs = names("src-build", "src-build") if "src-build" in e else (None,)
            dsts = names("dst-build", "dst-build") if "dst-build" in e else (None,)
            spec = replace(spec, builds=tuple(itertools.product(srcs, dsts)))
        if "capset" in e:
            spec = replace(spec, capsets=names("capset", "capset"))
        if "capabilities" in e:
            caps = s.as_name_list(e["capabilities"].value, where.key("capabilities"),
                                  "capability", allow_empty=True)
            for name, line, w in caps:
                s.check_qmp_name(name, line, w, "capability")
                if name in dict(self.m.defaults.capabilities):
                    raise w.error(f"capability '{name}' is set for every cell in "
                                  f"defaults.capabilities; it cannot also be a factor", line)
                if any(name in dict(self.m.capsets[c]) for c in spec.capsets):
                    raise w.error(f"capability '{name}' is also set by a capset in "
                                  f"'capset'", line)
            spec = replace(spec, capabilities=tuple(n for n, _, _ in caps))
        if "parameters" in e:
            pm = s.as_map(e["parameters"].value, where.key("parameters"))
            params = []
            for name, item in pm.entries.items():
                pw = where.key("parameters").key(name)
                s.check_qmp_name(name, item.key_line, pw, "parameter")
                if isinstance(item.value, YScalar):
                    raise pw.error("expected a list of values (null: QEMU's default)",
                                   item.value.line)
                seq = s.as_list(item.value, pw)
                values: list[Any] = []
                for i, v in enumerate(seq.items):
                    value = None if _is_null(v) else s.as_parameter_value(name, v, pw.index(i))
                    if value in values:
                        raise pw.index(i).error(f"duplicate value {value!r}", v.line)
                    values.append(value)
                if not values:
                    raise pw.error("expected at least one value", item.value.line)
                params.append((name, tuple(values)))
            spec = replace(spec, parameters=tuple(params))
        if "paramset" in e:
            spec = replace(spec, paramsets=names("paramset", "paramset"))
            if spec.parameters:
                clash = {n for n, _ in spec.parameters} & {
                    p for ps in spec.paramsets for p, _ in self.m.paramsets[ps]}
                if clash:
                    raise where.key("paramset").error(
                        f"paramsets set {', '.join(sorted(clash))}, which 'parameters' "
                        f"also lists", e["paramset"].key_line)
        return replace(spec, **self._settings(e, where))

    def _cell(self, node: YNode, where: Where) -> CellDecl:
        m = s.as_map(node, where)
        e = s.check_keys(m, where, s.CELL_KEYS, s.CELL_REQUIRED)
        dims = {}
        for dim in s.DIMENSIONS:
            if dim in e:
                value = e[dim].value
                name = s.as_name(value, where.key(dim), _WHAT[dim])
                dims[dim] = [(self._check_ref(dim, name, value.line, where.key(dim)),
                              value.line)]
        name = s.as_name(e["name"].value, where.key("name"), "cell name") \
            if "name" in e else None
        (decl,) = self._decls(dims, e, where, m.line, name)
        if "fault" in e:
            fault = s.as_name(e["fault"].value, where.key("fault"), "fault")
            problem = fault_problem(fault)
            if problem:
                raise where.key("fault").error(problem, e["fault"].value.line)
            decl = replace(decl, fault=fault)
        return decl

    def _products(self, node: YNode, where: Where) -> list[CellDecl]:
        """``product:`` is one mapping or a list of them."""
        if isinstance(node, YMap):
            return self._product(node, where)
        seq = s.as_list(node, where)
        return [decl for i, item in enumerate(seq.items)
                for decl in self._product(item, where.index(i))]

    def _product(self, node: YNode, where: Where) -> list[CellDecl]:
        m = s.as_map(node, where)
        e = s.check_keys(m, where, s.PRODUCT_KEYS, s.CELL_REQUIRED)
        dims = {}
        for dim in s.DIMENSIONS:
            if dim in e:
                values = s.as_name_list(e[dim].value, where.key(dim), _WHAT[dim])
                dims[dim] = [(self._check_ref(dim, name, line, item_where), line)
                             for name, line, item_where in values]
        return self._decls(dims, e, where, m.line, None)

    def _check_ref(self, dim: str, name: str, line: int, where: Where,
                   flow_only: bool = True) -> str:
        """A dimension value must name something defined; say what is.  A
        transport the cell flow does not implement is refused here (explicit
        cells and products) unless ``flow_only`` is off (covering arrays
        exclude it with the reason instead)."""
        problem_of = _VALUE_PROBLEMS.get(dim)
        if problem_of is not None:  # a value the harness knows, not one the file defines
            problem = problem_of(name)
            if problem:
                raise where.error(problem, line)
            return "" if dim == "mode" and name == PRECOPY else name
        defined: Sequence[str] = {
            "target": list(self.m.targets),
            "transport": self.m.transports,
            "capset": list(self.m.capsets),
            "paramset": list(self.m.paramsets),
            "src-build": list(self.m.builds),
            "dst-build": list(self.m.builds),
        }[dim]
        s.check_ref(name, line, where, _WHAT[dim], defined)
        if dim == "transport" and flow_only and name not in FLOW_TRANSPORTS:
            raise where.error(f"transport '{name}' is not supported by the cell flow yet "
                              f"(supported: {', '.join(FLOW_TRANSPORTS)})", line)
        return name

    @staticmethod
    def _settings(e: dict[str, YEntry], where: Where) -> dict[str, Any]:
        """The ``CELL_SETTINGS`` of a cell, product or covering array, as the
        fields ``CellDecl`` and ``CoveringSpec`` both have (None: the
        defaults'); ``repeat: N`` runs the cell N times (1 <= N <= MAX_REPEAT)."""
        timeout = s.as_number(e["timeout"].value, where.key("timeout"), strict=True) \
            if "timeout" in e else None
        tolerance = s.as_number(e["downtime-tolerance-ms"].value,
                                where.key("downtime-tolerance-ms")) \
            if "downtime-tolerance-ms" in e else None
        expect_fail: tuple[str, ...] = ()
        if "expect-fail" in e:
            checks = s.as_name_list(e["expect-fail"].value, where.key("expect-fail"),
                                    "check", allow_empty=True)
            expect_fail = tuple(sorted(n for n, _, _ in checks))
        repeat = s.as_int(e["repeat"].value, where.key("repeat"), minimum=1,
                          maximum=s.MAX_REPEAT) if "repeat" in e else 1
        return {"timeout": timeout, "downtime_tolerance_ms": tolerance,
                "expect_fail": expect_fail, "repeat": repeat}

    def _decls(self, dims: dict[str, list[tuple[str, int]]], e: dict[str, YEntry],
               where: Where, line: int, name: str | None) -> list[CellDecl]:
        settings = self._settings(e, where)
        src_host, dst_host = _placement(e, where, self.m.hosts)
        default_set = [(s.DEFAULT_SET, line)]
        axes = [dims["target"], dims["transport"], dims.get("capset", default_set),
                dims.get("paramset", default_set), dims.get("src-build", [(None, line)]),
                dims.get("dst-build", [(None, line)]), dims.get("mode", [("", line)]),
                dims.get("dst-start", [(PAUSED, line)])]
        decls = []
        for combo in itertools.product(*axes):
            target, transport, capset, paramset, src, dst, mode, dst_start = (
                v for v, _ in combo)
            needs = mode_needs(mode, {**dict(self.m.defaults.capabilities),
                                      **dict(self.m.capsets[capset])})
            if needs:
                raise where.key("mode").error(needs, e["mode"].key_line)
            default_build = self.m.target_builds[target]
            decls.append(CellDecl(
                target=target, transport=transport, capset=capset, paramset=paramset,
                src_build=src or default_build, dst_build=dst or default_build,
                where=where.path, line=line, name=name, mode=mode, dst_start=dst_start,
                src_host=src_host, dst_host=dst_host, **settings))
        return decls

    def _check_cycles(self, tiers: dict[str, TierSpec]) -> None:
        """Depth-first walk; the include entry that closes a loop is reported."""
        state: dict[str, str] = {}  # name -> "active" | "done"

        def visit(name: str, trail: list[str]) -> None:
            state[name] = "active"
            tier = tiers[name]
            for i, (inc, line) in enumerate(zip(tier.include, tier.include_lines)):
                if state.get(inc) == "active":
                    cycle = trail[trail.index(inc):] + [name, inc] \
                        if inc in trail else [name, inc]
                    raise self.where.key(name).key("include").index(i).error(
                        f"include cycle: {' -> '.join(cycle)}", line)
                if inc not in state:
                    visit(inc, trail + [name])
            state[name] = "done"

        for name in tiers:
            if name not in state:
                visit(name, [])


def _is_scenario_entry(node: YNode) -> bool:
    """A ``cells:`` entry that names a failure-path scenario, not a migration."""
    return isinstance(node, YMap) and ("scenario" in node.entries or
                                       "scenarios" in node.entries)
