"""Probes: requests that exercise the oracle's rules on a live QEMU, and a runner.

A probe is one ``migrate-set-capabilities`` or ``migrate-set-parameters`` call,
optionally preceded by setup calls, made from the run's baseline state.  The
runner (:func:`run_probes`) works over any async ``execute(cmd, args)`` that
returns the QMP ``return`` value and raises, on refusal, an exception carrying
``error_class`` and the description as ``str(e)`` (``qemu.qmp.ExecuteError``
does).  For each probe it records the oracle's verdict, QEMU's verdict and
whether they agree; after a refusal it reads the state back to prove nothing
was applied, after an acceptance it checks the state is the one predicted, and
it restores the baseline before the next probe.  A divergence is a result,
never an exception.

The oracle's verdict is the contract's; an answer that differs is judged
against the build's known deviations (:mod:`harness.rules.judge`), so each
result says ``agree``, ``deviation`` (with its id), ``unmodelled`` or
``disagree``.
"""
from __future__ import annotations

import ctypes
import itertools
import logging
import mmap
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.rules import caps as caps_data
from harness.rules.book import default_book, deviations_for
from harness.rules.judge import (
    Expectation,
    Judgement,
    ProbeVerdict,
    Snapshot,
    expectations,
    judge,
    normalize_params,
    patched_books,
)
from harness.rules.model import (
    CAPS_COMMAND,
    INT_WIDTH,
    PARAMS_COMMAND,
    BuildFacts,
    Deviation,
    HostFacts,
    ParamSpec,
    Phase,
    ProbeState,
    RuleBook,
    Version,
    apply,
    expected,
    normalize_version,
)

log = logging.getLogger(__name__)

Execute = Callable[[str, Mapping[str, Any]], Awaitable[Any]]

#: Parameters whose accepted new values would disturb a running migration
#: (let it finish or change its speed); probes in phase ACTIVE leave them alone.
DISRUPTIVE_PARAMS = frozenset({
    "max-bandwidth", "avail-switchover-bandwidth", "downtime-limit", "xbzrle-cache-size",
    "max-postcopy-bandwidth", "multifd-channels", "multifd-compression", "mode",
    "zero-page-detection", "direct-io", "x-checkpoint-delay", "block-bitmap-mapping",
    "tls-creds", "tls-hostname", "tls-authz",
})

TLS_PROBE = "probe-tls0"


@dataclass(frozen=True)
class Probe:
    """One request to make from the baseline state (after ``setup``)."""

    id: str
    command: str
    args: Any
    setup: tuple[tuple[str, Any], ...] = ()
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "command": self.command, "args": self.args,
                             "kind": self.kind}
        if self.setup:
            d["setup"] = [{"command": c, "args": a} for c, a in self.setup]
        return d


@dataclass
class ProbeResult:
    """The outcome of one probe on one build, side and phase."""

    build: str
    version: Version
    side: str
    phase: str
    probe_id: str
    kind: str
    command: str
    args: Any
    setup: list[dict[str, Any]]
    expected_accept: bool
    expected_rule: str | None
    expected_pattern: str | None
    observed_accept: bool
    observed_class: str | None
    observed_message: str | None
    agree: bool
    #: After a refusal: the state read back equals the state before (None if accepted).
    state_unchanged: bool | None
    #: After an acceptance: the state read back equals the oracle's prediction.
    applied_as_expected: bool | None = None
    #: "probe" for the probe itself, "setup" when a setup step went wrong.
    step: str = "probe"
    notes: list[str] = field(default_factory=list)
    #: agree / deviation / unmodelled / disagree (:class:`~harness.rules.judge.ProbeVerdict`).
    verdict: str = ""
    #: The known deviation this answer reproduced (verdict ``deviation``).
    deviation: str | None = None
    #: Known deviations that predicted another answer here and did not reproduce.
    deviation_not_reproduced: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.verdict:  # a result made without a judgement: contract only
            ok = (self.agree and self.state_unchanged is not False
                  and self.applied_as_expected is not False)
            self.verdict = ProbeVerdict.AGREE if ok else ProbeVerdict.DISAGREE
        self.verdict = str(self.verdict)

    @property
    def ok(self) -> bool:
        """Not a failure: agreement, a known deviation, or an unmodelled version."""
        return self.verdict != ProbeVerdict.DISAGREE

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = list(self.version)
        d["ok"] = self.ok
        return d

    def describe(self) -> str:
        exp = "accept" if self.expected_accept else f"refuse[{self.expected_rule}]"
        obs = "accept" if self.observed_accept else f"refuse: {self.observed_message}"
        extra = []
        if self.state_unchanged is False:
            extra.append("STATE CHANGED by a refused command")
        if self.applied_as_expected is False:
            extra.append("accepted but state differs from prediction")
        extra += self.notes
        tail = ("; " + "; ".join(extra)) if extra else ""
        return (f"[{self.build} {self.side}/{self.phase}] {self.verdict.upper()} {self.probe_id}: "
                f"{self.command} {self.args} expected {exp}, observed {obs}{tail}")


# --------------------------------------------------------------------------
# Host and build facts
# --------------------------------------------------------------------------

_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "riscv64": 282, "i686": 374, "i386": 374,
                    "ppc64le": 364, "s390x": 355, "loongarch64": 282}
_UFFD_API = 0xAA
_UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
_UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
_USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0x00) on /dev/userfaultfd
_UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_BIT = 6


def _uffd_open(libc: Any) -> int:
    nr = _SYS_USERFAULTFD.get(platform.machine())
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    if nr is not None:
        fd = libc.syscall(nr, flags)
        if fd >= 0:
            return fd
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        return libc.ioctl(dev, _USERFAULTFD_IOC_NEW, ctypes.c_int(flags))
    finally:
        os.close(dev)


def _uffd_probe() -> tuple[bool, bool, bool]:
    """(userfaultfd usable, write-protect feature, anonymous RAM can be WP-registered)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False, False, False
    fd = _uffd_open(libc)
    if fd < 0:
        return False, False, False
    api = (ctypes.c_uint64 * 3)(_UFFD_API, 0, 0)
    try:
        if libc.ioctl(fd, _UFFDIO_API, api) != 0:
            return False, False, False
    finally:
        os.close(fd)
    wp = bool(api[1] & _UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    if not wp:
        return True, False, False
    fd = _uffd_open(libc)
    if fd < 0:
        return True, True, False
    try:
        api = (ctypes.c_uint64 * 3)(_UFFD_API, _UFFD_FEATURE_PAGEFAULT_FLAG_WP, 0)
        if libc.ioctl(fd, _UFFDIO_API, api) != 0:
            return True, True, False
        size = mmap.PAGESIZE * 4
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            reg = (ctypes.c_uint64 * 4)(addr, size, _UFFDIO_REGISTER_MODE_WP, 0)
            ok = libc.ioctl(fd, _UFFDIO_REGISTER, reg) == 0 and bool(
                reg[3] & (1 << _UFFDIO_WRITEPROTECT_BIT))
            del addr
        finally:
            try:
                buf.close()
            except BufferError:  # pragma: no cover - a ctypes view still alive
                pass
        return True, True, ok
    finally:
        os.close(fd)


def detect_host_facts(*, kvm_dirty_ring: bool = False) -> HostFacts:
    """Probe this host the way QEMU will (userfaultfd and its write-protect mode)."""
    linux = sys.platform.startswith("linux")
    uffd, wp, wp_ok = _uffd_probe() if linux else (False, False, False)
    return HostFacts(linux=linux, userfaultfd=uffd, uffd_wp=wp, wp_compatible=wp_ok,
                     kvm_dirty_ring=kvm_dirty_ring, direct_io=linux)


def _schema_index(schema: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {e["name"]: e for e in schema}


def _schema_enum(idx: Mapping[str, Mapping[str, Any]], type_name: str) -> tuple[str, ...] | None:
    e = idx.get(type_name)
    if not e or e.get("meta-type") != "enum":
        return None
    if "members" in e:
        return tuple(m["name"] for m in e["members"])
    return tuple(e.get("values", ()))


def schema_migration_info(schema: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """From ``query-qmp-schema``: capability names, parameter members, their enums.

    Returns ``{"capabilities": (...), "parameters": {name: json-type-or-enum}, "enums":
    {"MigrationCapability": (...), "<Enum>": (...)}, "commands": set}``.  Integer
    widths are not visible in introspection (every integer is ``int``), which is
    why the oracle keeps its own type table.
    """
    idx = _schema_index(schema)
    out: dict[str, Any] = {"capabilities": (), "parameters": {}, "enums": {},
                           "commands": {e["name"] for e in schema if e.get("meta-type") == "command"}}
    cmd = idx.get(CAPS_COMMAND)
    if cmd:
        arg = idx[cmd["arg-type"]]
        for m in arg.get("members", []):
            if m["name"] == "capabilities":
                arr = idx[m["type"]]
                elem = idx[arr["element-type"]]
                for em in elem.get("members", []):
                    if em["name"] == "capability":
                        vals = _schema_enum(idx, em["type"]) or ()
                        out["capabilities"] = vals
                        out["enums"]["MigrationCapability"] = vals
    cmd = idx.get(PARAMS_COMMAND)
    if cmd:
        arg = idx[cmd["arg-type"]]
        specs = {p.name: p for p in default_book().params}
        for m in arg.get("members", []):
            t = idx.get(m["type"], {})
            kind = t.get("json-type") or t.get("meta-type") or m["type"]
            out["parameters"][m["name"]] = kind
            spec = specs.get(m["name"])
            if spec is not None and spec.qapi.startswith("enum:"):
                vals = _schema_enum(idx, m["type"])
                if vals is not None:
                    out["enums"][spec.qapi[5:]] = vals
    return out


def build_facts(version: Sequence[int], schema: Sequence[Mapping[str, Any]] | None = None,
                reported_caps: Iterable[str] | None = None) -> BuildFacts:
    """Compile-time facts of a build, from its schema and capability list.

    * ``x-colo-lost-heartbeat`` exists only with CONFIG_REPLICATION (its schema
      entry is conditional from 8.x on; 7.2 always lists it, so there we assume
      the Debian build, which has replication).
    * From 8.1 ``query-migrate-capabilities`` hides ``block`` in builds without
      CONFIG_LIVE_BLOCK_MIGRATION.
    """
    v = normalize_version(version)
    enums: dict[str, tuple[str, ...]] = {}
    replication = True
    if schema is not None:
        info = schema_migration_info(schema)
        enums = dict(info["enums"])
        if v >= (8, 1):
            replication = "x-colo-lost-heartbeat" in info["commands"]
    live_block = True
    if reported_caps is not None and (8, 1) <= v < (9, 1):
        live_block = "block" in set(reported_caps)
    return BuildFacts(replication=replication, live_block_migration=live_block, enums=enums)


def schema_mismatches(version: Sequence[int], schema: Sequence[Mapping[str, Any]],
                      book: RuleBook | None = None) -> list[str]:
    """Where the oracle's tables disagree with the build's own schema."""
    book = book or default_book()
    v = normalize_version(version)
    info = schema_migration_info(schema)
    out = []
    ours_c, theirs_c = set(book.cap_names(v)), set(info["capabilities"])
    for n in sorted(ours_c - theirs_c):
        out.append(f"capability {n} is in the oracle but not in the build's schema")
    for n in sorted(theirs_c - ours_c):
        out.append(f"capability {n} is in the build's schema but not in the oracle")
    ours_p = {p.name for p in book.param_specs(v)}
    theirs_p = set(info["parameters"])
    for n in sorted(ours_p - theirs_p):
        out.append(f"parameter {n} is in the oracle but not in the build's schema")
    for n in sorted(theirs_p - ours_p):
        out.append(f"parameter {n} is in the build's schema but not in the oracle")
    return out


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


def _caps_args(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {"capabilities": [{"capability": c, "state": s} for c, s in pairs]}


def _on(*names: str) -> dict[str, Any]:
    return _caps_args(*((n, True) for n in names))


def _int_values(spec: ParamSpec, page_size: int) -> list[Any]:
    width = INT_WIDTH[spec.qapi]
    tmax = (1 << width) - 1
    vals: list[Any] = [0, 1, -1, tmax, tmax + 1, (1 << 64) - 1, 1 << 64, 1.5, "1", True, None]
    if width == 64:
        vals.append(1 << 63)
    for b in (spec.lo, spec.hi):
        if b is not None:
            vals += [b - 1, b, b + 1]
    if spec.default is not None:
        vals.append(spec.default)
    if spec.name == "xbzrle-cache-size":
        vals += [page_size - 1, page_size, page_size + 1, 3 * page_size, 2 * page_size, 1 << 20]
    seen: list[Any] = []
    for v in vals:
        key = (type(v), v)
        if key not in [(type(s), s) for s in seen]:
            seen.append(v)
    return seen


_GOOD_MAPPING = [{"node-name": "node0", "alias": "node-alias0",
                  "bitmaps": [{"name": "bitmap0", "alias": "bitmap-alias0"}]}]


def _mapping_values() -> list[tuple[str, Any]]:
    n = _GOOD_MAPPING[0]
    bm = n["bitmaps"][0]
    return [
        ("empty", []),
        ("good", _GOOD_MAPPING),
        ("good-transform", [{**n, "bitmaps": [{**bm, "transform": {"persistent": True}}]}]),
        ("alias-not-well-formed", [{**n, "alias": "0alias"}]),
        ("alias-too-long", [{**n, "alias": "a" * 256}]),
        ("node-name-too-long", [{**n, "node-name": "n" * 32}]),
        ("node-name-mapped-twice", [n, {**n, "alias": "node-alias1"}]),
        ("alias-used-twice", [n, {**n, "node-name": "node1"}]),
        ("bitmap-mapped-twice", [{**n, "bitmaps": [bm, {**bm, "alias": "bitmap-alias1"}]}]),
        ("bitmap-alias-used-twice", [{**n, "bitmaps": [bm, {**bm, "name": "bitmap1"}]}]),
        ("bitmap-alias-too-long", [{**n, "bitmaps": [{**bm, "alias": "b" * 256}]}]),
        ("not-a-list", "node0"),
        ("element-not-object", [5]),
        ("missing-alias", [{"node-name": "node0", "bitmaps": []}]),
        ("missing-bitmaps", [{"node-name": "node0", "alias": "node-alias0"}]),
        ("unexpected-member", [{**n, "colour": "blue"}]),
        ("transform-not-bool", [{**n, "bitmaps": [{**bm, "transform": {"persistent": "yes"}}]}]),
    ]


def _value_id(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, int):
        if v >= 1 << 32:
            return f"2^{v.bit_length() - 1}" + ("" if v == 1 << (v.bit_length() - 1)
                                                 else f"+{v - (1 << (v.bit_length() - 1))}")
        return str(v)
    if isinstance(v, float):
        return f"float{v}"
    if isinstance(v, str):
        return f"str:{v[:20]}"
    return type(v).__name__


def param_values(spec: ParamSpec, enum_values: Sequence[str], page_size: int = 4096
                 ) -> list[tuple[str, Any]]:
    """The values to try for one parameter: boundaries, wrong types, enum values."""
    t = spec.qapi
    if t in INT_WIDTH:
        return [(_value_id(v), v) for v in _int_values(spec, page_size)]
    if t == "bool":
        return [("true", True), ("false", False), ("int1", 1), ("str:true", "true"),
                ("null", None)]
    if t == "StrOrNull":
        return [("empty", ""), ("str", TLS_PROBE), ("null", None), ("int", 5), ("bool", True)]
    if t.startswith("enum:"):
        return ([(f"enum:{v}", v) for v in enum_values]
                + [("bad-value", "no-such-value"), ("int", 1), ("null", None)])
    if t == "BitmapMapping":
        return _mapping_values()
    raise AssertionError(t)


def generate_probes(version: Sequence[int], capabilities: Iterable[str],
                    parameters: Iterable[str] | Mapping[str, Any], state: ProbeState, *,
                    book: RuleBook | None = None) -> list[Probe]:
    """All probes for a build, for the side/phase and baseline in ``state``.

    ``capabilities``/``parameters`` are what the build reports
    (``query-migrate-capabilities`` names, ``query-migrate-parameters`` keys);
    the probes only use those, so a build that lacks something is probed for
    what it has (and the schema comparison reports the gap).  Probes whose
    setup the oracle itself expects to be refused in this state are dropped.
    In phase ACTIVE only non-disruptive probes are kept.
    """
    book = book or default_book()
    v = normalize_version(version)
    caps = [c for c in book.cap_names(v) if c in set(capabilities)]
    reported = set(parameters)
    specs = [p for p in book.param_specs(v)
             if p.name in reported or p.qapi == "BitmapMapping"]
    probes: list[Probe] = []
    add = probes.append

    # --- capabilities -----------------------------------------------------
    add(Probe("caps:empty-list", CAPS_COMMAND, {"capabilities": []}, kind="caps-empty"))
    for c in caps:
        add(Probe(f"caps:single:{c}", CAPS_COMMAND, _on(c), kind="caps-single"))
        add(Probe(f"caps:off:{c}", CAPS_COMMAND, _caps_args((c, False)), kind="caps-off"))
    for a, b in itertools.combinations(caps, 2):
        add(Probe(f"caps:pair:{a}+{b}", CAPS_COMMAND, _on(a, b), kind="caps-pair"))
    for subject, needs, since in caps_data.REQUIRES:
        if v < since or subject not in caps or not all(n in caps for n in needs):
            continue
        for x in caps:
            if x == subject or x in needs:
                continue
            add(Probe(f"caps:triple:{subject}+{'+'.join(needs)}+{x}", CAPS_COMMAND,
                      _on(subject, *needs, x), kind="caps-triple"))
    # last entry for a capability wins; a refused list applies none of its entries
    if caps:
        c0 = caps[0]
        add(Probe(f"caps:duplicate:{c0}:on-then-off", CAPS_COMMAND,
                  _caps_args((c0, True), (c0, False)), kind="caps-list"))
        add(Probe(f"caps:duplicate:{c0}:off-then-on", CAPS_COMMAND,
                  _caps_args((c0, False), (c0, True)), kind="caps-list"))
    # cross-command: capability checks that read the current parameters
    if {"zero-copy-send", "multifd"} <= set(caps):
        if "multifd-compression" in reported:
            add(Probe("caps:cross:zero-copy-send+multifd:after-multifd-compression=zlib",
                      CAPS_COMMAND, _on("multifd", "zero-copy-send"),
                      setup=((PARAMS_COMMAND, {"multifd-compression": "zlib"}),),
                      kind="caps-cross"))
        if "tls-creds" in reported:
            add(Probe("caps:cross:zero-copy-send+multifd:after-tls-creds",
                      CAPS_COMMAND, _on("multifd", "zero-copy-send"),
                      setup=((PARAMS_COMMAND, {"tls-creds": TLS_PROBE}),), kind="caps-cross"))
    if "mapped-ram" in caps and "multifd-compression" in reported:
        add(Probe("caps:cross:mapped-ram:after-multifd-compression=zlib", CAPS_COMMAND,
                  _on("mapped-ram"), setup=((PARAMS_COMMAND, {"multifd-compression": "zlib"}),),
                  kind="caps-cross"))
    # the QAPI layer
    known_anywhere = [c.name for c in book.caps]
    gone = [c for c in known_anywhere if c not in book.cap_names(v)]
    c0 = caps[0] if caps else "events"
    qapi_caps: list[tuple[str, Any]] = [
        ("missing-capabilities", {}),
        ("capabilities-not-list", {"capabilities": {"capability": c0, "state": True}}),
        ("element-not-object", {"capabilities": [c0]}),
        ("missing-capability", {"capabilities": [{"state": True}]}),
        ("missing-state", {"capabilities": [{"capability": c0}]}),
        ("state-not-bool", {"capabilities": [{"capability": c0, "state": 1}]}),
        ("state-string", {"capabilities": [{"capability": c0, "state": "on"}]}),
        ("capability-not-string", {"capabilities": [{"capability": 1, "state": True}]}),
        ("unknown-capability", _on("no-such-capability")),
        ("unknown-capability-after-valid", _caps_args((c0, True), ("no-such-capability", True))),
        ("unexpected-element-member",
         {"capabilities": [{"capability": c0, "state": True, "extra": 1}]}),
        ("unexpected-top-level-member", {"capabilities": [], "extra": 1}),
    ]
    qapi_caps += [(f"removed-capability:{g}", _on(g)) for g in gone]
    for name, args in qapi_caps:
        add(Probe(f"caps:qapi:{name}", CAPS_COMMAND, args, kind="caps-qapi"))

    # --- parameters -------------------------------------------------------
    page = state.host.target_page_size
    add(Probe("params:empty", PARAMS_COMMAND, {}, kind="params-empty"))
    for spec in specs:
        enum_vals = (book.enum_values(v, spec.qapi[5:], state.build)
                     if spec.qapi.startswith("enum:") else ())
        for vid, value in param_values(spec, enum_vals, page):
            add(Probe(f"params:{spec.name}={vid}", PARAMS_COMMAND, {spec.name: value},
                      kind="params-value"))
    gone_p = [p.name for p in book.params if not p.exists(v)]
    add(Probe("params:qapi:unknown-member", PARAMS_COMMAND, {"no-such-parameter": 1},
              kind="params-qapi"))
    for g in gone_p:
        spec = next(p for p in book.params if p.name == g)
        add(Probe(f"params:qapi:not-in-this-version:{g}", PARAMS_COMMAND,
                  {g: spec.default if spec.default is not None else []}, kind="params-qapi"))
    have = {s.name for s in specs}

    def both(*names: str) -> bool:
        return all(n in have for n in names)

    if both("downtime-limit", "announce-rounds"):
        add(Probe("params:multi:all-valid", PARAMS_COMMAND,
                  {"downtime-limit": 1000, "announce-rounds": 7}, kind="params-multi"))
        add(Probe("params:multi:one-out-of-range", PARAMS_COMMAND,
                  {"downtime-limit": 1000, "announce-rounds": 1001}, kind="params-multi"))
        add(Probe("params:multi:one-wrong-type", PARAMS_COMMAND,
                  {"downtime-limit": 1000, "announce-rounds": "7"}, kind="params-multi"))
        add(Probe("params:multi:one-unknown", PARAMS_COMMAND,
                  {"downtime-limit": 1000, "no-such-parameter": 1}, kind="params-multi"))
    if both("cpu-throttle-initial", "max-cpu-throttle"):
        cross = [
            ("initial-above-max-in-one-request", {"cpu-throttle-initial": 80, "max-cpu-throttle": 70}, ()),
            ("initial-below-max-in-one-request", {"cpu-throttle-initial": 60, "max-cpu-throttle": 70}, ()),
            ("initial-equals-max-in-one-request", {"cpu-throttle-initial": 70, "max-cpu-throttle": 70}, ()),
            ("initial-above-current-max", {"cpu-throttle-initial": 60},
             ((PARAMS_COMMAND, {"max-cpu-throttle": 50}),)),
            ("initial-equals-current-max", {"cpu-throttle-initial": 50},
             ((PARAMS_COMMAND, {"max-cpu-throttle": 50}),)),
            ("max-below-current-initial", {"max-cpu-throttle": 30},
             ((PARAMS_COMMAND, {"cpu-throttle-initial": 40}),)),
            ("unrelated-member-with-current-pair", {"announce-rounds": 6},
             ((PARAMS_COMMAND, {"cpu-throttle-initial": 40, "max-cpu-throttle": 40}),)),
        ]
        for name, args, setup in cross:
            add(Probe(f"params:cross:throttle:{name}", PARAMS_COMMAND, args, setup=setup,
                      kind="params-cross"))
    if {"zero-copy-send", "multifd"} <= set(caps):
        setup = ((CAPS_COMMAND, _on("multifd", "zero-copy-send")),)
        cross_z: list[tuple[str, dict[str, Any]]] = []
        if "multifd-compression" in have:
            cross_z += [("multifd-compression=zlib", {"multifd-compression": "zlib"}),
                        ("multifd-compression=none", {"multifd-compression": "none"})]
        if "tls-creds" in have:
            cross_z += [("tls-creds=set", {"tls-creds": TLS_PROBE}),
                        ("tls-creds=null", {"tls-creds": None})]
        if "announce-rounds" in have:
            cross_z.append(("unrelated", {"announce-rounds": 6}))
        for name, args in cross_z:
            add(Probe(f"params:cross:zero-copy-send:{name}", PARAMS_COMMAND, args, setup=setup,
                      kind="params-cross"))
    if "mapped-ram" in caps and both("multifd-compression", "announce-rounds"):
        # mapped-ram + zlib is reached by setting zlib first (the capability
        # check does not look at it; the parameter check refuses zlib once
        # mapped-ram is on).
        mr = (CAPS_COMMAND, _on("mapped-ram"))
        add(Probe("params:cross:mapped-ram:multifd-compression=zlib", PARAMS_COMMAND,
                  {"multifd-compression": "zlib"}, setup=(mr,), kind="params-cross"))
        zl = (PARAMS_COMMAND, {"multifd-compression": "zlib"})
        add(Probe("params:cross:mapped-ram:after-zlib:unrelated", PARAMS_COMMAND,
                  {"announce-rounds": 6}, setup=(zl, mr), kind="params-cross"))
        add(Probe("params:cross:mapped-ram:after-zlib:back-to-none", PARAMS_COMMAND,
                  {"multifd-compression": "none"}, setup=(zl, mr), kind="params-cross"))
        if "tls-creds" in have:
            add(Probe("params:cross:mapped-ram:after-tls:unrelated", PARAMS_COMMAND,
                      {"announce-rounds": 6}, setup=((PARAMS_COMMAND, {"tls-creds": TLS_PROBE}), mr),
                      kind="params-cross"))
    return _filter(book, v, probes, state)


def _filter(book: RuleBook, v: Version, probes: list[Probe], state: ProbeState) -> list[Probe]:
    out = []
    for p in probes:
        st = state
        ok = True
        for cmd, args in p.setup:
            verdict = expected(v, cmd, args, st, book=book)
            if not verdict.accept:
                ok = False
                break
            st = apply(v, cmd, args, st, book=book)
        if not ok:
            continue
        # Drop probes that would leave a state the baseline cannot be restored
        # from (e.g. turning a preset multifd off after migrate-incoming).
        after = apply(v, p.command, p.args, st, book=book)
        if not _restorable(book, v, after, state):
            continue
        if state.phase is Phase.ACTIVE:
            if p.setup:
                continue
            if p.command == CAPS_COMMAND and p.kind in ("caps-pair", "caps-triple", "caps-off"):
                continue  # every capability request meets the same state rule
            if p.command == PARAMS_COMMAND and isinstance(p.args, dict):
                touches = DISRUPTIVE_PARAMS.intersection(p.args)
                if touches and expected(v, p.command, p.args, st, book=book).accept:
                    continue
        out.append(p)
    return out


def _restorable(book: RuleBook, v: Version, now: ProbeState, base: ProbeState) -> bool:
    caps_now, caps_base = dict(book.default_caps(v)), dict(book.default_caps(v))
    caps_now.update(now.caps)
    caps_base.update(base.caps)
    diff = [(k, caps_base[k]) for k in caps_base if caps_now.get(k) != caps_base[k]]
    st = now
    if diff:
        args = _caps_args(*diff)
        if not expected(v, CAPS_COMMAND, args, st, book=book).accept:
            return False
        st = apply(v, CAPS_COMMAND, args, st, book=book)
    p_now, p_base = book.default_params(v), book.default_params(v)
    p_now.update(now.params)
    p_base.update(base.params)
    pdiff = {k: val for k, val in p_base.items() if p_now.get(k) != val}
    if pdiff and not expected(v, PARAMS_COMMAND, pdiff, st, book=book).accept:
        return False
    return True


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


async def read_state(execute: Execute) -> Snapshot:
    caps = await execute("query-migrate-capabilities", {})
    params = await execute("query-migrate-parameters", {})
    return Snapshot({c["capability"]: bool(c["state"]) for c in caps}, normalize_params(params))


@dataclass
class _Observed:
    accept: bool
    error_class: str | None = None
    message: str | None = None
    fatal: bool = False


async def _call(execute: Execute, cmd: str, args: Any) -> _Observed:
    try:
        await execute(cmd, args)
    except Exception as e:  # noqa: BLE001 - QEMU's refusal or a dead connection
        cls = getattr(e, "error_class", None)
        if cls is None:
            return _Observed(False, None, f"{type(e).__name__}: {e}", fatal=True)
        return _Observed(False, str(cls), str(e))
    return _Observed(True)


async def restore(execute: Execute, now: Snapshot, baseline: Snapshot) -> Snapshot:
    """Put capabilities, then parameters, back to ``baseline``; returns the state read."""
    caps = [(k, baseline.caps[k]) for k in baseline.caps if now.caps.get(k) != baseline.caps[k]]
    if caps:
        await _call(execute, CAPS_COMMAND, _caps_args(*caps))
    params = {k: v for k, v in baseline.params.items() if now.params.get(k) != v}
    if params:
        await _call(execute, PARAMS_COMMAND, params)
    return await read_state(execute)


async def run_probes(execute: Execute, probes: Sequence[Probe], version: Sequence[int],
                     state: ProbeState, *, build: str = "", book: RuleBook | None = None,
                     on_result: Callable[[ProbeResult], None] | None = None,
                     deviations: Sequence[Deviation] | None = None,
                     build_version: Sequence[int] | None = None,
                     modelled: bool = True) -> list[ProbeResult]:
    """Run ``probes`` against one QEMU and judge its answers.

    ``version`` is the rule model to judge by (the build's own, or the
    nearest one when ``modelled`` is False); ``build_version`` is the build's
    full version (default: ``version``), which selects its known deviations
    unless ``deviations`` names them.  ``state`` gives side, phase,
    accelerator and host/build facts; the capabilities and parameters are
    read from QEMU at the start and become the baseline every probe starts
    from.
    """
    book = book or default_book()
    v = normalize_version(version)
    full = tuple(build_version or version)
    if deviations is None:
        deviations = deviations_for(full, build)
    alt_books = patched_books(book, deviations)
    baseline = await read_state(execute)
    current = baseline
    results: list[ProbeResult] = []

    def st_for(snap: Snapshot) -> ProbeState:
        return state.replace(caps=dict(snap.caps), params=dict(snap.params))

    def record(probe: Probe, cmd: str, args: Any, exps: Sequence[Expectation], obs: _Observed,
               j: Judgement, *, unchanged: bool | None, step: str,
               notes: list[str]) -> ProbeResult:
        contract = exps[0].verdict
        r = ProbeResult(
            build=build, version=v, side=state.side.value, phase=state.phase.value,
            probe_id=probe.id, kind=probe.kind, command=cmd, args=args,
            setup=[{"command": c, "args": a} for c, a in probe.setup],
            expected_accept=contract.accept, expected_rule=contract.rule_id,
            expected_pattern=contract.pattern, observed_accept=obs.accept,
            observed_class=obs.error_class, observed_message=obs.message, agree=j.agree,
            state_unchanged=unchanged, applied_as_expected=j.applied, step=step,
            notes=notes + j.notes, verdict=j.verdict, deviation=j.deviation,
            deviation_not_reproduced=list(j.not_reproduced))
        results.append(r)
        if r.verdict == ProbeVerdict.DISAGREE:
            log.debug("%s", r.describe())
        if on_result:
            on_result(r)
        return r

    def lost(probe: Probe, cmd: str, args: Any, exps: Sequence[Expectation], obs: _Observed,
             step: str) -> None:
        j = Judgement(ProbeVerdict.DISAGREE, False, None)
        record(probe, cmd, args, exps, obs, j, unchanged=None, step=step,
               notes=["QEMU connection lost"])

    for probe in probes:
        notes: list[str] = []
        setup_ok = True
        for cmd, args in probe.setup:
            exps = expectations(v, cmd, args, st_for(current), book, alt_books)
            obs = await _call(execute, cmd, args)
            if obs.fatal:
                lost(probe, cmd, args, exps, obs, "setup")
                return results
            after = await read_state(execute) if obs.accept else None
            unchanged = None if obs.accept else not current.differs(await read_state(execute))
            j = judge(exps, obs.accept, obs.message, after, unchanged, modelled=modelled)
            if not (obs.accept and exps[0].verdict.accept and j.verdict == ProbeVerdict.AGREE):
                # A setup step that did not go as the contract says: the probe
                # cannot run from the state it was written for.
                record(probe, cmd, args, exps, obs, j, unchanged=unchanged, step="setup",
                       notes=["setup step did not go as the contract says; probe skipped"])
                if after is not None:
                    current = after
                setup_ok = False
                break
            current = after if after is not None else current
        if setup_ok:
            before = current
            exps = expectations(v, probe.command, probe.args, st_for(before), book, alt_books)
            t0 = time.monotonic()
            obs = await _call(execute, probe.command, probe.args)
            if obs.fatal:
                lost(probe, probe.command, probe.args, exps, obs, "probe")
                return results
            elapsed = time.monotonic() - t0
            after = await read_state(execute)
            unchanged: bool | None = None
            if not obs.accept:
                diffs = before.differs(after)
                unchanged = not diffs
                notes += diffs
            if elapsed > 2.0:
                notes.append(f"slow: {elapsed:.1f}s")
            j = judge(exps, obs.accept, obs.message, after if obs.accept else None, unchanged,
                      modelled=modelled)
            record(probe, probe.command, probe.args, exps, obs, j, unchanged=unchanged,
                   step="probe", notes=notes)
            current = after
        if current != baseline:
            current = await restore(execute, current, baseline)
            if current != baseline and results:
                results[-1].notes.append("could not restore the baseline: "
                                         + "; ".join(baseline.differs(current)))
                baseline = current  # carry on from what QEMU has
    return results


def summarize(results: Sequence[ProbeResult]) -> dict[str, Any]:
    """Counts for a report line, and the known deviations seen.

    ``deviations_reproduced``: ids some probe reproduced.
    ``deviations_not_reproduced``: ids that predicted another answer on some
    probe and never reproduced (fixed in this build).
    """
    reproduced = sorted({r.deviation for r in results if r.deviation})
    expected_here = {d for r in results for d in r.deviation_not_reproduced}
    return {
        "probes": len(results),
        "agree": sum(r.verdict == ProbeVerdict.AGREE for r in results),
        "deviation": sum(r.verdict == ProbeVerdict.DEVIATION for r in results),
        "unmodelled": sum(r.verdict == ProbeVerdict.UNMODELLED for r in results),
        "disagree": sum(r.verdict == ProbeVerdict.DISAGREE for r in results),
        "state_changed_on_refusal": sum(r.state_unchanged is False for r in results),
        "applied_differently": sum(r.applied_as_expected is False for r in results),
        "refused": sum(not r.observed_accept for r in results),
        "deviations_reproduced": reproduced,
        "deviations_not_reproduced": sorted(expected_here - set(reproduced)),
    }
