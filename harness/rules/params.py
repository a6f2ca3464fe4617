"""Migration parameters per QEMU version, and the rules QEMU checks on them.

Read from QEMU's source (facts only; predicates and messages are ours):

* ``qapi/migration.json``: ``MigrateSetParameters`` members and their QAPI
  types (6.0.0, 7.2.0, 10.0.2; 8.2/9.0 from their trees; 6.0 has the same
  members as 7.2);
* ``migrate_params_check`` (``migration/migration.c`` up to 8.0,
  ``migration/options.c`` from 8.1): the checks, in order;
* ``qmp_migrate_set_parameters`` / ``migrate_params_test_apply``: the check
  runs on the *current* parameters overlaid with the request (so a check about
  one member also re-checks its current value, and cross-member checks such as
  max-cpu-throttle vs cpu-throttle-initial see the proposed pair); null TLS
  strings become "".

The rules are the contract.  Two checks read the current capabilities (the
command cannot change them): zero-copy-send and mapped-ram.  Where builds
check something else than the contract, :mod:`harness.rules.deviations` says
so: up to 8.2 the multifd compression levels are accepted and dropped
(``multifd-compression-level-dropped``), and from 9.0 the mapped-ram check
reads the *current* multifd-compression / tls-creds instead of the proposed
ones (``mapped-ram-check-reads-current-parameters``).
"""
from __future__ import annotations

from typing import Any

from harness.rules.model import (
    PARAMS_COMMAND,
    Ctx,
    EnumSpec,
    ParamSpec,
    Rule,
    SourceRef,
)

MIG_C = "migration/migration.c"
OPT_C = "migration/options.c"

PARAMS_CHECK = (
    SourceRef(MIG_C, "migrate_params_check", (0, 0), (8, 1)),
    SourceRef(OPT_C, "migrate_params_check", (8, 1), None),
)

MAX_MIGRATE_DOWNTIME_MS = 2000 * 1000
V91 = (9, 1)

# -- MigrateSetParameters members, in schema order ----------------------------
# ``lo``/``hi``: the bounds migrate_params_check enforces.
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("announce-initial", "size", 50, hi=100000),
    ParamSpec("announce-max", "size", 550, hi=100000),
    ParamSpec("announce-rounds", "size", 5, hi=1000),
    ParamSpec("announce-step", "size", 100, lo=1, hi=10000),
    ParamSpec("compress-level", "uint8", 1, hi=9, until=V91),
    ParamSpec("compress-threads", "uint8", 8, lo=1, until=V91),
    ParamSpec("compress-wait-thread", "bool", True, until=V91),
    ParamSpec("decompress-threads", "uint8", 2, lo=1, until=V91),
    ParamSpec("throttle-trigger-threshold", "uint8", 50, lo=1, hi=100),
    ParamSpec("cpu-throttle-initial", "uint8", 20, lo=1, hi=99),
    ParamSpec("cpu-throttle-increment", "uint8", 10, lo=1, hi=99),
    ParamSpec("cpu-throttle-tailslow", "bool", False),
    ParamSpec("tls-creds", "StrOrNull", ""),
    ParamSpec("tls-hostname", "StrOrNull", ""),
    ParamSpec("tls-authz", "StrOrNull", ""),
    ParamSpec("max-bandwidth", "size", 128 << 20),
    ParamSpec("avail-switchover-bandwidth", "size", 0, since=(8, 2)),
    ParamSpec("downtime-limit", "uint64", 300, hi=MAX_MIGRATE_DOWNTIME_MS),
    ParamSpec("x-checkpoint-delay", "uint32", 20000),
    ParamSpec("block-incremental", "bool", False, until=V91),
    ParamSpec("multifd-channels", "uint8", 2, lo=1),
    ParamSpec("xbzrle-cache-size", "size", 64 << 20),
    ParamSpec("max-postcopy-bandwidth", "size", 0),
    ParamSpec("max-cpu-throttle", "uint8", 99, hi=99),
    ParamSpec("multifd-compression", "enum:MultiFDCompression", "none"),
    # QAPI doc: "from 0 to 9" / "from 0 to 20"; migrate_params_check refuses
    # more.  Builds before 9.0 drop both members instead (deviation
    # multifd-compression-level-dropped).
    ParamSpec("multifd-zlib-level", "uint8", 1, hi=9),
    ParamSpec("multifd-qatzip-level", "uint8", 1, lo=1, hi=9, since=(9, 2)),
    ParamSpec("multifd-zstd-level", "uint8", 1, hi=20),
    ParamSpec("block-bitmap-mapping", "BitmapMapping", None),
    ParamSpec("x-vcpu-dirty-limit-period", "uint64", 1000, lo=1, hi=1000, since=(8, 1)),
    ParamSpec("vcpu-dirty-limit", "uint64", 1, lo=1, since=(8, 1)),
    ParamSpec("mode", "enum:MigMode", "normal", since=(8, 2)),
    ParamSpec("zero-page-detection", "enum:ZeroPageDetection", "multifd", since=(9, 0)),
    ParamSpec("direct-io", "bool", False, since=V91),
)

# Enum values: (value, since, until).  Build-conditional values ('if': CONFIG_…)
# are listed as a default build has them; BuildFacts.enums overrides from the
# build's own schema.
ENUMS = {
    "MultiFDCompression": EnumSpec("MultiFDCompression", (
        ("none", (0, 0), None),
        ("zlib", (0, 0), None),
        ("zstd", (0, 0), None),  # if CONFIG_ZSTD (Debian: yes)
        # qpl (9.0, CONFIG_QPL), uadk (9.1, CONFIG_UADK), qatzip (9.2,
        # CONFIG_QATZIP) are absent from Debian's builds.
    )),
    "MigMode": EnumSpec("MigMode", (
        ("normal", (8, 2), None),
        ("cpr-reboot", (8, 2), None),
        ("cpr-transfer", (10, 0), None),
    )),
    "ZeroPageDetection": EnumSpec("ZeroPageDetection", (
        ("none", (9, 0), None),
        ("legacy", (9, 0), None),
        ("multifd", (9, 0), None),
    )),
    # MigrationCapability is filled from caps.CAPS by harness.rules.
}


def _p(name: str) -> str:
    """Regex for a parameter name as QEMU spells it in messages (- or _)."""
    return "".join("[-_]" if ch in "-_" else ch for ch in name)


def _rule(id: str, summary: str, message: str, violated, *, since=(0, 0), until=None,
          where=PARAMS_CHECK, trigger=None) -> Rule:
    kw = {} if trigger is None else {"trigger": trigger}
    return Rule(id=id, command=PARAMS_COMMAND, layer="params", summary=summary,
                message=message, where=where, violated=violated, since=since,
                until=until, **kw)


def _present(name: str):
    def trig(ctx: Ctx) -> bool:
        return ctx.param(name) is not None
    return trig


#: Words QEMU uses in its range messages (never in the QAPI "expects uintN_t").
# 8.1/8.2 word the vcpu-dirty-limit error "must greater then 1 MB/s".
RANGE_WORDS = r"(?:between|range|power of two|greater|less|at least|at most)"


def _range_rule(name: str, lo: int | None, hi: int | None, *, since=(0, 0), until=None,
                message: str | None = None) -> Rule:
    def bad(ctx: Ctx, _n=name, _lo=lo, _hi=hi) -> bool:
        v = ctx.param(_n)
        return (_lo is not None and v < _lo) or (_hi is not None and v > _hi)

    what = " and ".join(x for x in (f">= {lo}" if lo is not None else "",
                                     f"<= {hi}" if hi is not None else "") if x)
    return _rule(f"params.{name}.range", f"{name} must be {what}",
                 message or rf"'{_p(name)}'.*{RANGE_WORDS}", bad,
                 since=since, until=until, trigger=_present(name))


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


def _xbzrle_bad(ctx: Ctx) -> bool:
    v = ctx.param("xbzrle-cache-size")
    return v < ctx.state.host.target_page_size or not _is_pow2(v)


def _max_cpu_throttle_bad(ctx: Ctx) -> bool:
    v = ctx.param("max-cpu-throttle")
    return v < ctx.param("cpu-throttle-initial") or v > 99


def bitmap_mapping_problem(mapping: list[dict[str, Any]]) -> str | None:
    """First problem check_dirty_bitmap_mig_alias_map finds, or None.

    migration/block-dirty-bitmap.c: construct_alias_map runs twice, first
    keyed by node name, then by alias; each pass checks the node alias is a
    well-formed id of at most 255 bytes, the node name at most 31 bytes, and
    bitmap alias/name lengths (255 / 1023); pass one refuses a node name or a
    bitmap name mapped twice, pass two a node alias or bitmap alias used twice.
    """
    for by_name in (True, False):
        seen: set[str] = set()
        for node in mapping:
            alias, node_name = node["alias"], node["node-name"]
            if not _id_wellformed(alias):
                return "alias-not-well-formed"
            if len(alias.encode()) > 255:
                return "alias-too-long"
            if len(node_name.encode()) > 31:
                return "node-name-too-long"
            key = node_name if by_name else alias
            if key in seen:
                return "node-name-mapped-twice" if by_name else "alias-used-twice"
            seen.add(key)
            bseen: set[str] = set()
            for bm in node["bitmaps"]:
                if len(bm["alias"].encode()) > 255:
                    return "bitmap-alias-too-long"
                if len(bm["name"].encode()) > 1023:
                    return "bitmap-name-too-long"
                bkey = bm["name"] if by_name else bm["alias"]
                if bkey in bseen:
                    return "bitmap-mapped-twice" if by_name else "bitmap-alias-used-twice"
                bseen.add(bkey)
    return None


def _id_wellformed(s: str) -> bool:
    """util/id.c id_wellformed: a letter, then letters, digits, '-', '.', '_'."""
    if not s or not (s[0].isascii() and s[0].isalpha()):
        return False
    return all(c.isascii() and (c.isalnum() or c in "-._") for c in s[1:])


def _bbm_bad(ctx: Ctx):
    m = ctx.param("block-bitmap-mapping")
    if m is None:
        return False
    return bool(bitmap_mapping_problem(m))


# -- migrate_params_check, in QEMU's order -----------------------------------
PARAM_RULES: tuple[Rule, ...] = (
    _range_rule("compress-level", None, 9, until=V91),
    _range_rule("compress-threads", 1, None, until=V91),
    _range_rule("decompress-threads", 1, None, until=V91),
    _range_rule("throttle-trigger-threshold", 1, 100),
    _range_rule("cpu-throttle-initial", 1, 99),
    _range_rule("cpu-throttle-increment", 1, 99),
    # Never fires on 64-bit hosts (the QAPI type already caps it at 2**64-1).
    _rule("params.max-bandwidth.range", "max-bandwidth must fit in size_t",
          rf"'{_p('max-bandwidth')}'.*{RANGE_WORDS}",
          lambda ctx: ctx.param("max-bandwidth") > ctx.state.host.size_max,
          trigger=_present("max-bandwidth")),
    _rule("params.avail-switchover-bandwidth.range",
          "avail-switchover-bandwidth must fit in size_t",
          rf"'{_p('avail-switchover-bandwidth')}'.*{RANGE_WORDS}",
          lambda ctx: ctx.param("avail-switchover-bandwidth") > ctx.state.host.size_max,
          since=(8, 2), trigger=_present("avail-switchover-bandwidth")),
    _range_rule("downtime-limit", None, MAX_MIGRATE_DOWNTIME_MS),
    # (QEMU notes x-checkpoint-delay needs no check.)
    _range_rule("multifd-channels", 1, None),
    _range_rule("multifd-zlib-level", None, 9),
    _range_rule("multifd-qatzip-level", 1, 9, since=(9, 2)),
    _range_rule("multifd-zstd-level", None, 20),
    _rule("params.xbzrle-cache-size.power-of-two",
          "xbzrle-cache-size must be a power of two, at least the target page size",
          rf"'{_p('xbzrle-cache-size')}'.*{RANGE_WORDS}", _xbzrle_bad,
          trigger=_present("xbzrle-cache-size")),
    # Cross-member: the proposed max-cpu-throttle against the proposed
    # cpu-throttle-initial (either may come from the current values).
    _rule("params.max-cpu-throttle.range",
          "max-cpu-throttle must be between cpu-throttle-initial and 99",
          rf"'{_p('max-cpu-throttle')}'.*{RANGE_WORDS}", _max_cpu_throttle_bad,
          trigger=_present("max-cpu-throttle")),
    _range_rule("announce-initial", None, 100000),
    _range_rule("announce-max", None, 100000),
    _range_rule("announce-rounds", None, 1000),
    _range_rule("announce-step", 1, 10000),
    _rule("params.block-bitmap-mapping.valid",
          "block-bitmap-mapping must be a consistent alias map",
          r"block-bitmap-mapping.*(?:alias|node|bitmap)", _bbm_bad,
          trigger=_present("block-bitmap-mapping")),
    # CONFIG_LINUX, from 7.1 (with the capability).  Reads the current
    # zero-copy-send capability and the proposed multifd-compression / tls-creds.
    _rule("params.zero-copy-send.conflicts-multifd-compression",
          "with zero-copy-send on, multifd-compression must stay none",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and ctx.param("multifd-compression") != "none",
          since=(7, 1), trigger=lambda ctx: ctx.cap("zero-copy-send")),
    _rule("params.zero-copy-send.conflicts-tls",
          "with zero-copy-send on, tls-creds must stay empty",
          r"[Zz]ero.copy.*non-compressed.*multifd",
          lambda ctx: ctx.state.host.linux and bool(ctx.param("tls-creds")),
          since=(7, 1), trigger=lambda ctx: ctx.cap("zero-copy-send")),
    # 9.0+: "Mapped-ram only available for non-compressed non-TLS multifd
    # migration", a check on the proposed parameters like the zero-copy one
    # above; builds read the current ones instead (deviation
    # mapped-ram-check-reads-current-parameters).
    _rule("params.mapped-ram.conflicts-multifd-compression",
          "with mapped-ram on, multifd-compression must be none",
          r"[Mm]apped-ram.*(?:compress|TLS)",
          lambda ctx: ctx.param("multifd-compression") != "none",
          since=(9, 0), trigger=lambda ctx: ctx.cap("mapped-ram")),
    _rule("params.mapped-ram.conflicts-tls",
          "with mapped-ram on, tls-creds must be empty",
          r"[Mm]apped-ram.*(?:compress|TLS)",
          lambda ctx: bool(ctx.param("tls-creds")),
          since=(9, 0), trigger=lambda ctx: ctx.cap("mapped-ram")),
    _range_rule("x-vcpu-dirty-limit-period", 1, 1000, since=(8, 1)),
    _rule("params.vcpu-dirty-limit.range", "vcpu-dirty-limit must be at least 1",
          rf"'{_p('vcpu-dirty-limit')}'.*{RANGE_WORDS}",
          lambda ctx: ctx.param("vcpu-dirty-limit") < 1,
          since=(8, 1), trigger=_present("vcpu-dirty-limit")),
    _rule("params.direct-io.requires-build-support",
          "direct-io needs O_DIRECT support",
          r"direct-io",
          lambda ctx: bool(ctx.param("direct-io")) and not ctx.state.host.direct_io,
          since=V91, trigger=_present("direct-io")),
)
