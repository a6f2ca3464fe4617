"""The rule oracle's types and its evaluation.

QEMU answers ``migrate-set-capabilities`` and ``migrate-set-parameters`` in three
layers, and the first refusal wins:

1. the QAPI layer (the generated marshaller and the QObject input visitor):
   unknown keys, missing members, JSON types, integer widths, enum values;
2. the state rule: capabilities cannot change while an outgoing migration runs;
3. the semantic checks: ``migrate_caps_check`` / ``migrate_params_check`` (in
   ``migration/migration.c`` up to 8.0, ``migration/options.c`` from 8.1), run on
   the *proposed* state (current values overlaid with the request), in QEMU's
   order.  A refused request changes nothing.

The data (which capabilities and parameters exist in which version, and the
rules in QEMU's order) lives in :mod:`harness.rules.caps` and
:mod:`harness.rules.params`; this module holds the types, the QAPI layer and
the evaluation: :func:`expected` answers "what must this build say?" and
:func:`apply` computes the state an accepted command leaves behind.

Two layers, kept apart on purpose: the rules state the *contract* (what
QEMU's QAPI documentation promises and its current tree's checks intend); a
:class:`Deviation` (data in :mod:`harness.rules.deviations`) records where a
QEMU version is known to behave otherwise, as a patch to the rule book.  A
probe that reproduces a deviation is reported as that deviation, never as
agreement, and a build where it no longer reproduces simply agrees.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

Version = tuple[int, int]

CAPS_COMMAND = "migrate-set-capabilities"
PARAMS_COMMAND = "migrate-set-parameters"

U64_MASK = (1 << 64) - 1
#: SIZE_MAX on the 64-bit hosts we run on (``max-bandwidth`` is checked against it).
SIZE_MAX_64 = U64_MASK


class Side(str, enum.Enum):
    """Which end of a migration the QEMU process is."""

    SOURCE = "source"
    DESTINATION = "destination"


class Phase(str, enum.Enum):
    """Where the process is in its migration life.

    ``INCOMING_DEFERRED``: started with ``-incoming defer``, runstate
    ``inmigrate``, no ``migrate-incoming`` yet.  ``INCOMING_ACTIVE``: after
    ``migrate-incoming`` (listening or receiving; still ``inmigrate``).
    ``ACTIVE``: an outgoing migration is running (setup/active/...).
    """

    IDLE = "idle"
    INCOMING_DEFERRED = "incoming-deferred"
    INCOMING_ACTIVE = "incoming-active"
    ACTIVE = "active"


@dataclass(frozen=True)
class HostFacts:
    """What the host kernel offers (probed on the machine, see ``probes.detect_host_facts``)."""

    linux: bool = True
    #: userfaultfd usable by QEMU: the destination's postcopy probe
    #: (``postcopy_ram_supported_by_host``) passes.  We run as root, so
    #: ``vm.unprivileged_userfaultfd=0`` does not matter.
    userfaultfd: bool = True
    #: userfaultfd write-protect faults (``ram_write_tracking_available``).
    uffd_wp: bool = True
    #: every RAM block of the guest can be write-protected
    #: (``ram_write_tracking_compatible``); false e.g. for hugetlbfs on old kernels.
    wp_compatible: bool = True
    #: KVM with ``dirty-ring-size`` set on the accelerator (``kvm_dirty_ring_enabled``).
    kvm_dirty_ring: bool = False
    target_page_size: int = 4096
    #: ``qemu_has_direct_io()``: O_DIRECT exists (every Linux host).
    direct_io: bool = True
    size_max: int = SIZE_MAX_64


@dataclass(frozen=True)
class BuildFacts:
    """Compile-time options of the QEMU build that change the verdicts.

    ``enums`` overrides the enum values the QAPI layer accepts (e.g. a build
    without zstd has no ``zstd`` in ``MultiFDCompression``); fill it from
    ``query-qmp-schema`` with ``probes.build_facts_from_schema``.
    """

    replication: bool = True  # CONFIG_REPLICATION: COLO possible
    live_block_migration: bool = True  # CONFIG_LIVE_BLOCK_MIGRATION (until 9.0)
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeState:
    """Everything outside the request that the answer depends on.

    ``caps`` and ``params`` are the current values as ``query-migrate-capabilities``
    and ``query-migrate-parameters`` report them (missing keys take the version's
    defaults).  ``incoming_scheme`` is the scheme of the last ``migrate-incoming``
    URI (7.2 refuses multifd on the destination for non-socket transports).
    """

    caps: Mapping[str, bool] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    side: Side = Side.SOURCE
    phase: Phase = Phase.IDLE
    accel: str = "tcg"
    host: HostFacts = field(default_factory=HostFacts)
    build: BuildFacts = field(default_factory=BuildFacts)
    incoming_scheme: str = "unix"

    def __post_init__(self) -> None:
        object.__setattr__(self, "side", Side(self.side))
        object.__setattr__(self, "phase", Phase(self.phase))
        ok = {
            Side.SOURCE: (Phase.IDLE, Phase.ACTIVE),
            Side.DESTINATION: (Phase.INCOMING_DEFERRED, Phase.INCOMING_ACTIVE),
        }[self.side]
        if self.phase not in ok:
            raise ValueError(f"phase {self.phase.value} is not a {self.side.value} phase")

    def replace(self, **changes: Any) -> ProbeState:
        return dataclasses.replace(self, **changes)

    @property
    def inmigrate(self) -> bool:
        """Runstate ``inmigrate``: the process was started with ``-incoming``."""
        return self.side is Side.DESTINATION

    @property
    def incoming_started(self) -> bool:
        """``migrate-incoming`` has run (QEMU: ``mis->transport_data`` is set)."""
        return self.phase is Phase.INCOMING_ACTIVE

    @property
    def migration_running(self) -> bool:
        """An outgoing migration is in a running state (``migration_is_running``)."""
        return self.phase is Phase.ACTIVE


@dataclass(frozen=True)
class SourceRef:
    """Where QEMU implements a rule: file and function, for a version range."""

    file: str
    function: str
    since: Version = (0, 0)
    until: Version | None = None  # first version where this location no longer applies

    def __str__(self) -> str:
        rng = f"{_v(self.since)}.." + (f"<{_v(self.until)}" if self.until else "")
        return f"{self.file}:{self.function} [{rng}]"


def _v(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


@dataclass
class Ctx:
    """What a rule's predicate sees: the version, the request and both states."""

    version: Version
    command: str
    args: Mapping[str, Any]
    state: ProbeState
    #: capabilities after the request is overlaid (caps command) or current (params).
    new_caps: dict[str, bool]
    old_caps: dict[str, bool]
    #: parameters after the request is overlaid (QEMU's ``tmp`` from
    #: ``migrate_params_test_apply``) or current (caps command).
    new_params: dict[str, Any]
    cur_params: dict[str, Any]

    def cap(self, name: str) -> bool:
        return bool(self.new_caps.get(name, False))

    def param(self, name: str) -> Any:
        return self.new_params.get(name)


Predicate = Callable[[Ctx], Union[bool, Mapping[str, str], None]]


def always(_ctx: Ctx) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """One reason QEMU refuses a request.

    The rule fires when ``trigger`` holds (the subject of the check is present:
    "postcopy-ram is on", "the proposed xbzrle-cache-size") and ``violated`` holds
    (the condition QEMU refuses).  ``violated`` may return a dict of fields that
    fill ``{placeholders}`` in ``message``.  ``message`` is a regular expression
    that identifies the rule in QEMU's error text and tolerates wording drift;
    placeholders are substituted with ``re.escape``d values.

    Splitting trigger from condition lets the mutation test flip just the
    condition and check the generated probes notice.
    """

    id: str
    command: str
    layer: str  # "state", "caps", "params"
    summary: str
    message: str
    where: tuple[SourceRef, ...]
    violated: Predicate
    trigger: Callable[[Ctx], bool] = always
    since: Version = (0, 0)
    until: Version | None = None

    def applies(self, version: Version) -> bool:
        return version >= self.since and (self.until is None or version < self.until)

    def check(self, ctx: Ctx) -> Verdict | None:
        """The refusal this rule produces for ``ctx``, or None when it passes."""
        if not self.trigger(ctx):
            return None
        res = self.violated(ctx)
        if not res:
            return None
        fields = res if isinstance(res, Mapping) else {}
        pattern = self.message.format(**{k: re.escape(str(v)) for k, v in fields.items()})
        return Verdict.refuse(self.id, pattern, detail=dict(fields))

    def mutated(self) -> Rule:
        """The same rule with its condition negated (for mutation tests)."""
        inner = self.violated

        def flipped(ctx: Ctx) -> bool:
            return not inner(ctx)

        return dataclasses.replace(self, violated=flipped, message=self.message
                                   if "{" not in self.message else re.sub(r"\{\w+\}", ".*", self.message))


@dataclass(frozen=True)
class Verdict:
    """What a QEMU build says (or must say) to one command."""

    accept: bool
    rule_id: str | None = None
    pattern: str | None = None
    error_class: str = "GenericError"
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def accepted(cls) -> Verdict:
        return cls(True)

    @classmethod
    def refuse(cls, rule_id: str, pattern: str, detail: Mapping[str, Any] | None = None) -> Verdict:
        return cls(False, rule_id, pattern, detail=dict(detail or {}))

    def matches(self, message: str) -> bool:
        """Whether QEMU's error text identifies this verdict's rule."""
        if self.accept or self.pattern is None:
            return False
        return re.search(self.pattern, message) is not None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"accept": self.accept}
        if not self.accept:
            d.update(rule=self.rule_id, pattern=self.pattern)
        return d


# --------------------------------------------------------------------------
# Version data registry (filled by caps.py / params.py)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CapSpec:
    """A migration capability and the versions that have it (``until`` exclusive)."""

    name: str
    since: Version = (0, 0)
    until: Version | None = None

    def exists(self, version: Version) -> bool:
        return version >= self.since and (self.until is None or version < self.until)


@dataclass(frozen=True)
class ParamSpec:
    """A member of ``MigrateSetParameters``.

    ``qapi`` is the QAPI type: ``uint8``, ``uint32``, ``uint64``, ``size``,
    ``bool``, ``StrOrNull``, ``enum:<EnumName>`` or ``BitmapMapping``.  ``lo``/``hi``
    are the bounds ``migrate_params_check`` enforces (None: only the type's).
    ``default`` is QEMU's default as ``query-migrate-parameters`` reports it.
    ``query`` is False for write-only members absent from the query output.
    """

    name: str
    qapi: str
    default: Any = None
    lo: int | None = None
    hi: int | None = None
    since: Version = (0, 0)
    until: Version | None = None
    #: Before this version builds are known to accept the member but drop it
    #: (a known deviation, see :mod:`harness.rules.deviations`, which fills
    #: this in for planners).  The contract evaluation never reads it; a
    #: deviation's patched book drops the member through ``RuleBook.ignored_params``.
    ignored_until: Version | None = None

    def exists(self, version: Version) -> bool:
        return version >= self.since and (self.until is None or version < self.until)

    def ignored(self, version: Version) -> bool:
        return self.ignored_until is not None and version < self.ignored_until

    @property
    def is_int(self) -> bool:
        return self.qapi in INT_WIDTH


@dataclass(frozen=True)
class EnumSpec:
    name: str
    values: tuple[tuple[str, Version, Version | None], ...]

    def values_for(self, version: Version) -> tuple[str, ...]:
        return tuple(v for v, since, until in self.values
                     if version >= since and (until is None or version < until))


INT_WIDTH = {"uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64, "size": 64}


@dataclass
class RuleBook:
    """All the data for one command family: entities and rules in QEMU's order."""

    caps: tuple[CapSpec, ...]
    params: tuple[ParamSpec, ...]
    enums: Mapping[str, EnumSpec]
    state_rules: tuple[Rule, ...]
    cap_rules: tuple[Rule, ...]
    param_rules: tuple[Rule, ...]
    #: ``migrate-set-parameters`` members the QAPI layer accepts and the build
    #: then drops (neither checked nor applied).  Empty in the contract; set by
    #: a :class:`Deviation`'s patch.
    ignored_params: frozenset[str] = frozenset()

    def rules(self, version: Version, command: str | None = None) -> list[Rule]:
        out = [r for r in (*self.state_rules, *self.cap_rules, *self.param_rules)
               if r.applies(version)]
        return [r for r in out if command is None or r.command == command]

    def rule(self, rule_id: str) -> Rule:
        for r in (*self.state_rules, *self.cap_rules, *self.param_rules):
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def cap_names(self, version: Version) -> list[str]:
        return [c.name for c in self.caps if c.exists(version)]

    def param_specs(self, version: Version) -> list[ParamSpec]:
        return [p for p in self.params if p.exists(version)]

    def param_spec(self, version: Version, name: str) -> ParamSpec | None:
        for p in self.param_specs(version):
            if p.name == name:
                return p
        return None

    def enum_values(self, version: Version, enum_name: str, build: BuildFacts) -> tuple[str, ...]:
        if enum_name in build.enums:
            return tuple(build.enums[enum_name])
        return self.enums[enum_name].values_for(version)

    def default_caps(self, version: Version) -> dict[str, bool]:
        return {n: False for n in self.cap_names(version)}

    def default_params(self, version: Version) -> dict[str, Any]:
        return {p.name: p.default for p in self.param_specs(version) if p.default is not None}

    def with_rules(self, replace: Mapping[str, Rule]) -> RuleBook:
        """A copy where the rules named in ``replace`` are swapped (mutation tests)."""

        def sub(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
            return tuple(replace.get(r.id, r) for r in rules)

        return dataclasses.replace(self, state_rules=sub(self.state_rules),
                                   cap_rules=sub(self.cap_rules), param_rules=sub(self.param_rules))


# --------------------------------------------------------------------------
# Known deviations from the contract
# --------------------------------------------------------------------------

#: A full QEMU version (major, minor, micro): deviations are often fixed in a
#: stable release (10.0.1), so their ranges need the micro number.
FullVersion = tuple[int, int, int]


def full_version(version: Sequence[int]) -> FullVersion:
    v = [int(x) for x in version[:3]] + [0, 0, 0]
    return (v[0], v[1], v[2])


@dataclass(frozen=True)
class Deviation:
    """A QEMU version known to break the contract the rules state.

    The rules say what QEMU promises (its QAPI documentation and the checks
    its current tree intends).  A deviation says where builds of some
    versions behave otherwise, so a probe that shows that behaviour is
    reported as *this known defect* rather than as agreement (a rule QEMU
    forgot to enforce must not look like conformance) or as a surprise.

    ``since``/``until`` are full versions (``until`` exclusive: the first
    release with the fix, a stable backport included); ``build_match``, when
    set, is a regular expression a build's name or package string must match
    as well (a porter's fork).  The behaviour is a patch to the rule book:
    members the build accepts and drops (``drops_params``), and rules that
    replace the contract rule of the same id (``replaces``).
    """

    id: str
    #: What the build does instead of the contract.
    summary: str
    #: What the contract says (and where it is documented).
    contract: str
    where: tuple[SourceRef, ...]
    since: FullVersion = (0, 0, 0)
    until: FullVersion | None = None
    #: The release or commit that fixed it, where known.
    fixed_in: str | None = None
    build_match: str | None = None
    drops_params: tuple[str, ...] = ()
    replaces: tuple[Rule, ...] = ()

    def affects(self, version: Sequence[int], build: str = "", package: str = "") -> bool:
        """Whether builds of ``version`` (and this name/package) are known to have it."""
        v = full_version(version)
        if v < self.since or (self.until is not None and v >= self.until):
            return False
        if self.build_match is not None:
            return any(re.search(self.build_match, s) for s in (build, package) if s)
        return True

    @property
    def versions(self) -> str:
        since = ".".join(map(str, self.since))
        return f"{since}..<{'.'.join(map(str, self.until))}" if self.until else f"{since}.."

    def patch(self, book: RuleBook) -> RuleBook:
        """The rule book as a build with this deviation behaves."""
        out = book.with_rules({r.id: r for r in self.replaces}) if self.replaces else book
        if self.drops_params:
            out = dataclasses.replace(out, ignored_params=out.ignored_params | set(self.drops_params))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "versions": self.versions, "summary": self.summary,
                "contract": self.contract, "where": [str(w) for w in self.where],
                "fixed_in": self.fixed_in, "build_match": self.build_match}


# --------------------------------------------------------------------------
# QAPI layer
# --------------------------------------------------------------------------


class QapiError(Exception):
    """A refusal of the QAPI layer: a rule id plus the message pattern."""

    def __init__(self, rule_id: str, pattern: str, **detail: Any) -> None:
        super().__init__(rule_id)
        self.verdict = Verdict.refuse(rule_id, pattern, detail)


def _q(s: str) -> str:
    return re.escape(s)


def _is_json_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def qapi_uint(name: str, value: Any, width: int) -> int:
    """The QObject input visitor's unsigned integer (QAPI ``uintN``/``size``).

    Any JSON integer between -2**63 and 2**64-1 is read as uint64 (negative ones
    wrap, kept for backward compatibility); anything else, including integers
    QEMU's JSON parser turns into a double, is refused as "expects uint64";
    then a value wider than ``width`` bits is refused as "expects uintN_t"
    (qapi/qobject-input-visitor.c: qobject_input_type_uint64;
    qapi/qapi-visit-core.c: visit_type_uintN).
    """
    if not _is_json_int(value) or not (-(1 << 63) <= value <= U64_MASK):
        raise QapiError("qapi.not-uint64", rf"'{_q(name)}' expects u?int(?:64)?\b", member=name)
    u = value & U64_MASK
    if width < 64 and u >= (1 << width):
        raise QapiError("qapi.int-out-of-range", rf"'{_q(name)}' expects uint{width}", member=name)
    return u


def _type_error(full: str, expected: str) -> QapiError:
    return QapiError("qapi.wrong-type", rf"'{_q(full)}'.*expected:? *{_q(expected)}",
                     member=full, expected=expected)


def _unexpected(full: str) -> QapiError:
    return QapiError("qapi.unexpected-member", rf"'{_q(full)}'\S* (?:is|are) unexpected", member=full)


def _missing(full: str) -> QapiError:
    return QapiError("qapi.missing-member", rf"'{_q(full)}' is missing", member=full)


def qapi_enum(name: str, full: str, value: Any, values: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise _type_error(full, "string")
    if value not in values:
        # 7.2 on: "Parameter 'x' does not accept value 'y'"; QEMU 6.0 says
        # "Invalid parameter 'y'" (qapi/qapi-visit-core.c: input_type_enum,
        # QERR_INVALID_PARAMETER).
        raise QapiError("qapi.invalid-enum-value",
                        rf"(?:does not accept value|Invalid parameter) '{_q(value)}'",
                        member=name, value=value)
    return value


def _check_unexpected(obj: Mapping[str, Any], known: Iterable[str], prefix: str) -> None:
    extra = [k for k in obj if k not in set(known)]
    if extra:
        # QEMU reports one of them, in its hash-table order: accept any.
        if len(extra) == 1:
            raise _unexpected(prefix + extra[0])
        alts = "|".join(_q(prefix + k) for k in extra)
        raise QapiError("qapi.unexpected-member", rf"'(?:{alts})'\S* (?:is|are) unexpected",
                        member=extra)


def _visit_str(obj: Mapping[str, Any], key: str, prefix: str) -> str:
    if key not in obj:
        raise _missing(prefix + key)
    if not isinstance(obj[key], str):
        raise _type_error(prefix + key, "string")
    return obj[key]


def qapi_bitmap_mapping(name: str, value: Any) -> list[dict[str, Any]]:
    """``[BitmapMigrationNodeAlias]``: node-name, alias, bitmaps[name, alias, transform?]."""
    if not isinstance(value, list):
        raise _type_error(name, "array")
    for i, node in enumerate(value):
        pfx = f"{name}[{i}]"
        if not isinstance(node, dict):
            raise _type_error(pfx, "object")
        _visit_str(node, "node-name", pfx + ".")
        _visit_str(node, "alias", pfx + ".")
        if "bitmaps" not in node:
            raise _missing(pfx + ".bitmaps")
        if not isinstance(node["bitmaps"], list):
            raise _type_error(pfx + ".bitmaps", "array")
        for j, bm in enumerate(node["bitmaps"]):
            bpfx = f"{pfx}.bitmaps[{j}]"
            if not isinstance(bm, dict):
                raise _type_error(bpfx, "object")
            _visit_str(bm, "name", bpfx + ".")
            _visit_str(bm, "alias", bpfx + ".")
            if "transform" in bm:
                tr = bm["transform"]
                if not isinstance(tr, dict):
                    raise _type_error(bpfx + ".transform", "object")
                if "persistent" in tr and not isinstance(tr["persistent"], bool):
                    raise _type_error(bpfx + ".transform.persistent", "boolean")
                _check_unexpected(tr, ("persistent",), bpfx + ".transform.")
            _check_unexpected(bm, ("name", "alias", "transform"), bpfx + ".")
        _check_unexpected(node, ("node-name", "alias", "bitmaps"), pfx + ".")
    return value


def qapi_param_value(book: RuleBook, version: Version, spec: ParamSpec, value: Any,
                     build: BuildFacts) -> Any:
    """The value QEMU's visitor produces for one member, or a QapiError."""
    name, t = spec.name, spec.qapi
    if t in INT_WIDTH:
        return qapi_uint(name, value, INT_WIDTH[t])
    if t == "bool":
        if not isinstance(value, bool):
            raise _type_error(name, "boolean")
        return value
    if t == "StrOrNull":
        # An alternate of str and null; QEMU turns null into "" afterwards
        # (qmp_migrate_set_parameters).
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _type_error(name, "StrOrNull")
        return value
    if t.startswith("enum:"):
        return qapi_enum(name, name, value, book.enum_values(version, t[5:], build))
    if t == "BitmapMapping":
        return qapi_bitmap_mapping(name, value)
    raise AssertionError(f"unknown QAPI type {t}")


def qapi_caps_args(book: RuleBook, version: Version, args: Any, build: BuildFacts
                   ) -> list[tuple[str, bool]]:
    """Visit ``migrate-set-capabilities`` arguments the way the marshaller does."""
    if not isinstance(args, dict):
        raise _type_error("null", "object")
    if "capabilities" not in args:
        raise _missing("capabilities")
    caps = args["capabilities"]
    if not isinstance(caps, list):
        raise _type_error("capabilities", "array")
    names = book.enum_values(version, "MigrationCapability", build)
    out: list[tuple[str, bool]] = []
    for i, item in enumerate(caps):
        pfx = f"capabilities[{i}]"
        if not isinstance(item, dict):
            raise _type_error(pfx, "object")
        if "capability" not in item:
            raise _missing(pfx + ".capability")
        cap = qapi_enum("capability", pfx + ".capability", item["capability"], names)
        if "state" not in item:
            raise _missing(pfx + ".state")
        if not isinstance(item["state"], bool):
            raise _type_error(pfx + ".state", "boolean")
        _check_unexpected(item, ("capability", "state"), pfx + ".")
        out.append((cap, item["state"]))
    _check_unexpected(args, ("capabilities",), "")
    return out


def qapi_params_args(book: RuleBook, version: Version, args: Any, build: BuildFacts
                     ) -> dict[str, Any]:
    """Visit ``migrate-set-parameters`` arguments (members in schema order, then extras)."""
    if not isinstance(args, dict):
        raise _type_error("null", "object")
    specs = book.param_specs(version)
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name in args:
            out[spec.name] = qapi_param_value(book, version, spec, args[spec.name], build)
    _check_unexpected(args, [s.name for s in specs], "")
    return out


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def _state_values(book: RuleBook, version: Version, state: ProbeState
                  ) -> tuple[dict[str, bool], dict[str, Any]]:
    caps = book.default_caps(version)
    caps.update({k: bool(v) for k, v in state.caps.items()})
    params = book.default_params(version)
    params.update(state.params)
    return caps, params


def build_ctx(book: RuleBook, version: Version, command: str, args: Mapping[str, Any],
              state: ProbeState) -> Ctx:
    """Run the QAPI layer and overlay the request: raises QapiError on refusal."""
    caps, params = _state_values(book, version, state)
    if command == CAPS_COMMAND:
        new_caps = dict(caps)
        for name, on in qapi_caps_args(book, version, args, state.build):
            new_caps[name] = on
        return Ctx(version, command, args, state, new_caps, caps, dict(params), params)
    if command == PARAMS_COMMAND:
        new_params = dict(params)
        visited = qapi_params_args(book, version, args, state.build)
        for name, value in visited.items():
            if name not in book.ignored_params:
                new_params[name] = value
        return Ctx(version, command, args, state, dict(caps), caps, new_params, params)
    raise ValueError(f"the oracle knows no command {command!r}")


def evaluate(book: RuleBook, version: Version, command: str, args: Mapping[str, Any],
             state: ProbeState) -> tuple[Verdict, Ctx | None]:
    try:
        ctx = build_ctx(book, version, command, args, state)
    except QapiError as e:
        return e.verdict, None
    for rule in book.rules(version, command):
        v = rule.check(ctx)
        if v is not None:
            return v, ctx
    return Verdict.accepted(), ctx


def normalize_version(version: Sequence[int]) -> Version:
    return (int(version[0]), int(version[1]))


def expected(version: Sequence[int], command: str, args: Mapping[str, Any], state: ProbeState,
             *, book: RuleBook) -> Verdict:
    """What a QEMU build of ``version`` must answer to ``command`` with ``args`` in ``state``.

    Accept, or refuse naming the first rule (in QEMU's check order) that fires
    and a regex that identifies it in QEMU's error description.  (The model
    knows no data: ``harness.rules.expected`` supplies the default book.)
    """
    return evaluate(book, normalize_version(version), command, args, state)[0]


def apply(version: Sequence[int], command: str, args: Mapping[str, Any], state: ProbeState,
          *, book: RuleBook) -> ProbeState:
    """The state after ``command`` (unchanged when the oracle expects a refusal;
    ``harness.rules.apply`` supplies the default book)."""
    v = normalize_version(version)
    verdict, ctx = evaluate(book, v, command, args, state)
    if not verdict.accept or ctx is None:
        return state
    if command == CAPS_COMMAND:
        return state.replace(caps=ctx.new_caps)
    return state.replace(params=ctx.new_params)
