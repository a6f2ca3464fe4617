"""The matrix file's vocabulary: allowed keys, value types, and the parsed specs.

The key tuples below are the single source of truth for what each mapping may
contain; their order is the order the "allowed: ..." hint prints.  Converters
take a positioned node and return a plain value or raise ``MatrixError`` naming
the file, line and dotted key, and what was expected -- so every type error in
the file reads the same way.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import MatrixError
from harness.guest.linux_options import KEYS as LINUX_KEYS
from harness.matrix.yamlpos import (
    YEntry, YMap, YNode, YScalar, YSeq, describe, join_index, join_key,
)
from harness.units import parse_size

log = logging.getLogger(__name__)

VERSION = 1

TOP_KEYS = ("version", "defaults", "builds", "targets", "transports", "capsets",
            "paramsets", "tiers", "known-issues", "hosts")
TOP_REQUIRED = ("version", "builds", "targets", "transports", "tiers")
DEFAULTS_KEYS = ("timeout", "downtime-tolerance-ms", "capabilities", "parameters",
                 "transport-parameters")
BUILD_KEYS = ("binary", "prefix", "data-dirs", "env", "extra-args", "required", "version")
#: Where a cell's source and destination QEMU run: names from ``hosts:``
#: (harness.matrix.hosts), ``local`` when not given.
PLACEMENT_KEYS = ("src-host", "dst-host")
TARGET_KEYS = ("arch", "machine", "accel", "accel-options", "memory", "cpu", "smp", "build",
               "workload", "firmware") + PLACEMENT_KEYS
TARGET_REQUIRED = ("arch", "machine", "build")
WORKLOAD_KEYS = ("kind", "region", "base", "warmup-passes")
#: Keys of one workload kind only, each key -> (type, default, allowed values
#: or None) (``linux``: harness.guest.linux_options.KEYS).
WORKLOAD_KIND_KEYS: dict[str, dict[str, tuple[str, Any, tuple[Any, ...] | None]]] = {
    "linux": LINUX_KEYS}
TIER_KEYS = ("description", "include", "cells", "product", "covering", "filter")
#: Per-cell settings that both an explicit cell and a product may carry.
CELL_SETTINGS = ("timeout", "downtime-tolerance-ms", "expect-fail", "repeat")
#: ``repeat: N`` at most this (a typo of 1000 would hold a nightly for hours).
MAX_REPEAT = 100
#: A ``known-issues:`` entry (harness.known_issues.KnownIssue), keyed by its id.
KNOWN_ISSUE_KEYS = ("title", "build", "cells", "targets", "checks", "intermittent",
                    "reference")
KNOWN_ISSUE_REQUIRED = ("title", "build", "checks", "reference")
#: ``build:`` of a known issue: a build name, versions, or both.
KNOWN_ISSUE_BUILD_KEYS = ("name", "versions")
#: The dimensions a cell is made of; a product takes a list for each.
DIMENSIONS = ("target", "transport", "capset", "paramset", "src-build", "dst-build", "mode",
              "dst-start")
CELL_KEYS = DIMENSIONS + CELL_SETTINGS + ("name", "fault") + PLACEMENT_KEYS
PRODUCT_KEYS = DIMENSIONS + CELL_SETTINGS + PLACEMENT_KEYS
CELL_REQUIRED = ("target", "transport")
#: A covering array's factors (each a list) and its order; see ``CoveringSpec``.
COVERING_KEYS = ("order", "target", "transport", "build", "src-build", "dst-build",
                 "capset", "capabilities", "parameters", "paramset", "mode",
                 "dst-start") + CELL_SETTINGS
COVERING_REQUIRED = ("target", "transport")
#: A failure-path scenario entry in a tier's ``cells:`` (see ``ScenarioDecl``):
#: one of ``scenario``/``scenarios`` and one of ``build``/``builds``.
SCENARIO_KEYS = ("scenario", "scenarios", "build", "builds")
#: ``scenarios: all`` names every registered scenario.
ALL_SCENARIOS = "all"
#: Highest covering order accepted (the tuples grow as factors^order).
MAX_ORDER = 6

#: Tier keys that are planned but not implemented: a clear error, not "unknown key".
RESERVED_TIER_KEYS: dict[str, str] = {}

#: The capset and paramset a cell gets when it names none; empty unless declared.
DEFAULT_SET = "default"

#: Migration parameters whose value is a byte count (or bytes per second), so a
#: size such as ``10G`` is accepted and converted.  Everything else is passed
#: through as written: QEMU itself is the judge of the other parameters' types.
BYTE_PARAMETERS = frozenset({
    "max-bandwidth", "max-postcopy-bandwidth", "avail-switchover-bandwidth",
    "xbzrle-cache-size",
})

#: Names of builds, targets, sets, transports and tiers end up in cell ids, in
#: result folder names and in ``-k`` expressions: no spaces, slashes or parens.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
#: QMP spells capabilities and parameters in lower case with dashes.
QMP_NAME_RE = re.compile(r"[a-z][a-z0-9-]*\Z")
_SIZE_LIKE_RE = re.compile(r"\s*\d+(\.\d+)?\s*[KMGT](i?B)?\s*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Where:
    """A position in the matrix: file plus dotted key path, for error messages."""

    file: str
    path: str = ""

    def key(self, name: str) -> "Where":
        return Where(self.file, join_key(self.path, name))

    def index(self, i: int) -> "Where":
        return Where(self.file, join_index(self.path, i))

    def error(self, reason: str, line: int) -> MatrixError:
        return MatrixError(reason, self.file, line, self.path)


# --- parsed specs -----------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """``defaults:``: what every cell gets unless its capset/paramset/cell says otherwise."""

    timeout: float = 60.0
    downtime_tolerance_ms: float = 250.0
    capabilities: tuple[tuple[str, bool], ...] = ()
    parameters: tuple[tuple[str, Any], ...] = ()
    #: ``transport-parameters:``: parameters a transport's cells get over
    #: ``parameters`` (a paramset still overrides them), for what a transport
    #: itself costs, e.g. exec's pipe through ``cat``.  Per transport name.
    transport_parameters: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def for_transport(self, transport: str) -> dict[str, Any]:
        """``parameters`` with the transport's own laid over them."""
        merged = dict(self.parameters)
        merged.update(dict(self.transport_parameters).get(transport, ()))
        return merged


@dataclass(frozen=True)
class CellDecl:
    """One cell as declared (explicitly or by a product), before resolution.

    Builds are already resolved to names (the target's default filled in);
    ``where``/``line`` point at the declaration so duplicates can name it.
    """

    target: str
    transport: str
    capset: str
    paramset: str
    src_build: str
    dst_build: str
    where: str
    line: int
    timeout: float | None = None
    downtime_tolerance_ms: float | None = None
    expect_fail: tuple[str, ...] = ()
    repeat: int = 1
    name: str | None = None
    #: "" = precopy (harness.migration.modes).
    mode: str = ""
    fault: str = ""
    #: ``paused`` or ``autostart`` (harness.migration.dst_start).
    dst_start: str = "paused"
    #: ``src-host``/``dst-host`` names ("" = the target's, else ``local``).
    src_host: str = ""
    dst_host: str = ""


@dataclass(frozen=True)
class ScenarioDecl:
    """A failure-path scenario to run on one build (both sides), as declared.

    ``label`` names the build in the cell's id (``failpath-<scenario>-<label>``,
    see ``harness.failpaths.build_label``).
    """

    scenario: str
    build: str
    label: str
    where: str
    line: int


@dataclass(frozen=True)
class CoveringSpec:
    """``covering:``: an N-wise covering array over the listed factors.

    Every factor is a list: ``target``, ``transport``, builds (``build`` for
    both sides, or ``src-build``/``dst-build``; default: each target's build),
    ``capabilities`` (each one a boolean factor, on or off), ``parameters``
    (``{name: [values]}``; ``null`` leaves QEMU's default) and ``paramset``
    (named sets).  Constraints come from the rule oracle (see
    ``harness.matrix.covering``).
    """

    line: int
    where: str
    order: int = 2
    targets: tuple[str, ...] = ()
    transports: tuple[str, ...] = ()
    #: (src, dst) build names; None = the target's build.
    builds: tuple[tuple[str | None, str | None], ...] = ((None, None),)
    #: Named capsets: one factor whose values exclude each other.
    capsets: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    parameters: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    paramsets: tuple[str, ...] = ()
    #: Migration modes (harness.migration.modes), "" for precopy; () = precopy only.
    modes: tuple[str, ...] = ()
    #: Destination start modes (harness.migration.dst_start); () = paused only.
    dst_starts: tuple[str, ...] = ()
    timeout: float | None = None
    downtime_tolerance_ms: float | None = None
    expect_fail: tuple[str, ...] = ()
    repeat: int = 1


@dataclass(frozen=True)
class TierSpec:
    """A named group of cells: included tiers first, then its own declarations."""

    name: str
    line: int
    description: str = ""
    include: tuple[str, ...] = ()
    #: Line of each ``include`` entry, for errors about what it brings in.
    include_lines: tuple[int, ...] = ()
    #: Explicit cells and product-generated cells, in declaration order.
    cells: tuple[CellDecl, ...] = ()
    #: Covering arrays; their cells follow the explicit ones.
    coverings: tuple[CoveringSpec, ...] = ()
    #: Failure-path scenario cells (entries of ``cells:`` with ``scenario``);
    #: they follow the explicit cells, before the covering arrays'.
    scenarios: tuple[ScenarioDecl, ...] = ()
    #: A ``-k`` expression every cell of the tier (included ones too) must match.
    filter: str = ""
    filter_line: int = 0


# --- key checks -------------------------------------------------------------


def as_map(node: YNode, where: Where) -> YMap:
    if not isinstance(node, YMap):
        raise where.error(f"expected a mapping, got {describe(node)}", node.line)
    return node


def as_list(node: YNode, where: Where) -> YSeq:
    if not isinstance(node, YSeq):
        raise where.error(f"expected a list, got {describe(node)}", node.line)
    return node


def check_keys(node: YMap, where: Where, allowed: Sequence[str],
               required: Iterable[str] = (),
               reserved: dict[str, str] | None = None) -> dict[str, YEntry]:
    """Refuse unknown keys (listing the allowed ones) and missing required keys."""
    for key, entry in node.entries.items():
        if key in allowed:
            continue
        if reserved and key in reserved:
            raise where.key(key).error(reserved[key], entry.key_line)
        raise where.key(key).error(f"unknown key (allowed: {', '.join(allowed)})",
                                   entry.key_line)
    for key in required:
        if key not in node.entries:
            raise where.key(key).error("missing required key", node.line)
    return node.entries


# --- scalar converters ------------------------------------------------------


def _scalar(node: YNode, where: Where, expected: str) -> YScalar:
    if not isinstance(node, YScalar) or node.value is None:
        raise where.error(f"expected {expected}, got {describe(node)}", node.line)
    return node


def as_str(node: YNode, where: Where) -> str:
    """A string; numbers are accepted as their source text (``cpu: 486``)."""
    scalar = _scalar(node, where, "a string")
    if isinstance(scalar.value, bool):
        raise where.error(f"expected a string, got {describe(node)} (quote it)", node.line)
    return scalar.text if not isinstance(scalar.value, str) else scalar.value


def as_name(node: YNode, where: Where, what: str = "name") -> str:
    """A name that may appear in a cell id (see ``NAME_RE``)."""
    text = as_str(node, where)
    if not NAME_RE.match(text):
        raise where.error(f"invalid {what} {text!r}: use letters, digits and . _ + -",
                          node.line)
    return text


def check_name(name: str, line: int, where: Where, what: str) -> str:
    """Validate a mapping key used as a name (``builds: {NAME: ...}``)."""
    if not NAME_RE.match(name):
        raise where.error(f"invalid {what} {name!r}: use letters, digits and . _ + -", line)
    return name


def check_ref(name: str, line: int, where: Where, what: str, defined: Sequence[str]) -> str:
    """A reference to something the file defines; an unknown one lists what is."""
    if name not in defined:
        raise where.error(f"unknown {what} '{name}' (defined: {', '.join(defined) or 'none'})",
                          line)
    return name


def as_ref(node: YNode, where: Where, what: str, defined: Sequence[str]) -> str:
    """A name (``as_name``) that must be one of ``defined`` (``check_ref``)."""
    return check_ref(as_name(node, where, what), node.line, where, what, defined)


def check_qmp_name(name: str, line: int, where: Where, what: str) -> str:
    if not QMP_NAME_RE.match(name):
        hint = f" (QMP spells it {name.lower().replace('_', '-')!r})" \
            if QMP_NAME_RE.match(name.lower().replace("_", "-")) else ""
        raise where.error(f"invalid {what} name {name!r}{hint}", line)
    return name


def as_bool(node: YNode, where: Where) -> bool:
    scalar = _scalar(node, where, "true or false")
    if not isinstance(scalar.value, bool):
        raise where.error(f"expected true or false, got {describe(node)}", node.line)
    return scalar.value


def as_int(node: YNode, where: Where, minimum: int | None = None,
           maximum: int | None = None) -> int:
    scalar = _scalar(node, where, "an integer")
    if isinstance(scalar.value, bool) or not isinstance(scalar.value, int):
        raise where.error(f"expected an integer, got {describe(node)}", node.line)
    if minimum is not None and scalar.value < minimum:
        raise where.error(f"must be at least {minimum}, got {scalar.value}", node.line)
    if maximum is not None and scalar.value > maximum:
        raise where.error(f"must be at most {maximum}, got {scalar.value}", node.line)
    return scalar.value


def as_number(node: YNode, where: Where, minimum: float = 0.0,
              strict: bool = False) -> float:
    """A finite number >= ``minimum`` (> when ``strict``), as a float."""
    scalar = _scalar(node, where, "a number")
    value = scalar.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or value != value or value in (float("inf"), float("-inf")):
        raise where.error(f"expected a number, got {describe(node)}", node.line)
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise where.error(f"must be {bound} {minimum:g}, got {value:g}", node.line)
    return float(value)


def as_size(node: YNode, where: Where, positive: bool = False) -> int:
    """A byte count: an integer or a size like ``256M`` (binary suffixes)."""
    scalar = _scalar(node, where, "a size like 256M or 1G")
    try:
        if isinstance(scalar.value, float):
            raise ValueError
        size = parse_size(scalar.value)  # type: ignore[arg-type]
    except ValueError:
        raise where.error(f"expected a size like 256M or 1G, got {describe(node)}",
                          node.line) from None
    if positive and size == 0:
        raise where.error("must be greater than 0", node.line)
    return size


def as_str_list(node: YNode, where: Where) -> tuple[str, ...]:
    """A list of strings; numbers are taken as their text (``[-smp, 2]``)."""
    seq = as_list(node, where)
    return tuple(as_str(item, where.index(i)) for i, item in enumerate(seq.items))


def as_name_list(node: YNode, where: Where, what: str,
                 allow_empty: bool = False) -> list[tuple[str, int, Where]]:
    """Distinct names from a list (or a single name), each with line and position."""
    if isinstance(node, YScalar):
        return [(as_name(node, where, what), node.line, where)]
    seq = as_list(node, where)
    names: list[tuple[str, int, Where]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(seq.items):
        name = as_name(item, where.index(i), what)
        if name in seen:
            raise where.index(i).error(
                f"duplicate {what} {name!r} (also at line {seen[name]})", item.line)
        seen[name] = item.line
        names.append((name, item.line, where.index(i)))
    if not names and not allow_empty:
        raise where.error("expected at least one value", node.line)
    return names


def as_parameter_value(name: str, node: YNode, where: Where) -> int | bool | str:
    """A migration parameter value: int, bool or string; sizes only for byte counts.

    A size string on any other parameter (``downtime-limit: 100M``) is almost
    certainly a mistake, so it is refused rather than sent to QEMU as a string.
    """
    if name in BYTE_PARAMETERS:
        return as_size(node, where)
    scalar = _scalar(node, where, "an integer, true/false or a string")
    value = scalar.value
    if isinstance(value, (bool, int, str)):
        if isinstance(value, str) and _SIZE_LIKE_RE.match(value):
            allowed = ", ".join(sorted(BYTE_PARAMETERS))
            raise where.error(f"sizes like {value!r} are only allowed for byte-count "
                              f"parameters ({allowed})", node.line)
        return value
    raise where.error(f"expected an integer, true/false or a string, got "
                      f"{describe(node)}", node.line)
