"""Unit tests of the rule oracle (no QEMU needed)."""
from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from harness.rules import (
    CAPS_COMMAND,
    PARAMS_COMMAND,
    BuildFacts,
    HostFacts,
    Phase,
    ProbeState,
    Side,
    apply,
    default_book,
    deviant_book,
    deviations_for,
    expected,
    rules_for,
)
from harness.rules.model import RuleBook, Verdict
from harness.rules.probes import (
    ProbeResult,
    build_facts,
    generate_probes,
    run_probes,
    schema_mismatches,
    summarize,
)
from harness.rules.params import bitmap_mapping_problem

V60, V72, V82, V90, V100 = (6, 0), (7, 2), (8, 2), (9, 0), (10, 0)
BOOK = default_book()


def caps(*names: str, state: bool = True) -> dict[str, Any]:
    return {"capabilities": [{"capability": n, "state": state} for n in names]}


def src(**kw: Any) -> ProbeState:
    return ProbeState(side=Side.SOURCE, phase=Phase.IDLE, **kw)


def dst(phase: Phase = Phase.INCOMING_DEFERRED, **kw: Any) -> ProbeState:
    return ProbeState(side=Side.DESTINATION, phase=phase, **kw)


def refused(v: Verdict, rule: str) -> bool:
    return not v.accept and v.rule_id == rule


# -- capabilities --------------------------------------------------------------


@pytest.mark.parametrize("version", [V72, V82, V100])
def test_plain_capabilities_are_accepted(version):
    for name in ("xbzrle", "events", "return-path", "multifd", "postcopy-ram"):
        assert expected(version, CAPS_COMMAND, caps(name), src()).accept


def test_capabilities_present_per_version():
    assert "compress" in BOOK.cap_names(V72) and "compress" in BOOK.cap_names(V90)
    assert "compress" not in BOOK.cap_names(V100) and "block" not in BOOK.cap_names(V100)
    assert "switchover-ack" not in BOOK.cap_names(V72)
    assert {"switchover-ack", "dirty-limit"} <= set(BOOK.cap_names((8, 1)))
    assert "mapped-ram" not in BOOK.cap_names(V82) and "mapped-ram" in BOOK.cap_names(V90)


def test_removed_and_future_capabilities_are_enum_errors():
    v = expected(V100, CAPS_COMMAND, caps("compress"), src())
    assert refused(v, "qapi.invalid-enum-value")
    assert v.matches("Parameter 'capability' does not accept value 'compress'")
    assert refused(expected(V72, CAPS_COMMAND, caps("switchover-ack"), src()),
                   "qapi.invalid-enum-value")


def test_zero_copy_send_rules():
    assert refused(expected(V72, CAPS_COMMAND, caps("zero-copy-send"), src()),
                   "caps.zero-copy-send.requires-multifd")
    assert expected(V100, CAPS_COMMAND, caps("zero-copy-send", "multifd"), src()).accept
    assert refused(expected(V72, CAPS_COMMAND, caps("zero-copy-send", "multifd", "compress"), src()),
                   "caps.zero-copy-send.conflicts-compress")
    zlib = src(params={"multifd-compression": "zlib"})
    v = expected(V100, CAPS_COMMAND, caps("zero-copy-send", "multifd"), zlib)
    assert refused(v, "caps.zero-copy-send.conflicts-multifd-compression")
    assert v.matches("Zero copy only available for non-compressed non-TLS multifd migration")
    # the parameter side of the same rule reads the current capability
    on = src(caps={"multifd": True, "zero-copy-send": True})
    assert refused(expected(V72, PARAMS_COMMAND, {"tls-creds": "tls0"}, on),
                   "params.zero-copy-send.conflicts-tls")
    assert expected(V72, PARAMS_COMMAND, {"tls-creds": None}, on).accept


def test_postcopy_rules_by_version():
    both = caps("postcopy-ram", "multifd")
    assert expected(V72, CAPS_COMMAND, both, src()).accept
    assert refused(expected(V82, CAPS_COMMAND, both, src()), "caps.postcopy-ram.conflicts-multifd")
    assert refused(expected(V100, CAPS_COMMAND, both, src()), "caps.postcopy-ram.conflicts-multifd")
    assert refused(expected(V72, CAPS_COMMAND, caps("postcopy-preempt"), src()),
                   "caps.postcopy-preempt.requires-postcopy-ram")
    assert refused(expected(V72, CAPS_COMMAND, caps("postcopy-preempt", "postcopy-ram", "compress"),
                            src()), "caps.postcopy-preempt.conflicts-compress")


def test_postcopy_host_check_only_on_destination_and_only_when_turning_on():
    no_uffd = HostFacts(userfaultfd=False)
    assert expected(V100, CAPS_COMMAND, caps("postcopy-ram"), src(host=no_uffd)).accept
    v = expected(V100, CAPS_COMMAND, caps("postcopy-ram"), dst(host=no_uffd))
    assert refused(v, "caps.postcopy-ram.requires-host-support")
    assert v.matches("Postcopy is not supported: Userfaultfd not available: Operation not permitted")
    already = dst(host=no_uffd, caps={"postcopy-ram": True})
    assert expected(V100, CAPS_COMMAND, caps("postcopy-ram"), already).accept


def test_incoming_started_rules():
    started = dst(Phase.INCOMING_ACTIVE)
    # 7.2: after migrate-incoming on a unix socket, multifd is still fine
    assert expected(V72, CAPS_COMMAND, caps("multifd"), started).accept
    # ... but not after an exec: incoming URI
    v = expected(V72, CAPS_COMMAND, caps("multifd"), started.replace(incoming_scheme="exec"))
    assert refused(v, "caps.multifd.requires-multichannel-transport")
    # the contract from 8.1: only turning multifd on after incoming started is
    # refused (8.1.0 .. 10.0.0 refuse more: a known deviation, see below)
    preset = started.replace(caps={"multifd": True})
    assert expected(V82, CAPS_COMMAND, caps("events"), preset).accept
    assert expected(V100, CAPS_COMMAND, caps("events"), preset).accept
    assert refused(expected(V82, CAPS_COMMAND, caps("multifd"), started),
                   "caps.multifd.requires-before-incoming-if-off")
    assert refused(expected(V100, CAPS_COMMAND, caps("multifd"), started),
                   "caps.multifd.requires-before-incoming-if-off")
    assert expected(V100, CAPS_COMMAND, caps("multifd"), dst()).accept


def test_background_snapshot_names_first_conflict_in_qemu_order():
    v = expected(V72, CAPS_COMMAND, caps("background-snapshot", "xbzrle", "postcopy-ram"), src())
    assert refused(v, "caps.background-snapshot.conflicts-postcopy-ram")
    assert v.matches("Background-snapshot is not compatible with postcopy-ram")
    assert not v.matches("Background-snapshot is not compatible with xbzrle")
    no_wp = src(host=HostFacts(uffd_wp=False))
    assert refused(expected(V100, CAPS_COMMAND, caps("background-snapshot"), no_wp),
                   "caps.background-snapshot.requires-uffd-wp")


def test_new_capability_rules():
    assert refused(expected(V100, CAPS_COMMAND, caps("switchover-ack"), src()),
                   "caps.switchover-ack.requires-return-path")
    assert expected(V100, CAPS_COMMAND, caps("switchover-ack", "return-path"), src()).accept
    assert refused(expected(V82, CAPS_COMMAND, caps("dirty-limit"), src()),
                   "caps.dirty-limit.requires-kvm-dirty-ring")
    kvm = src(accel="kvm", host=HostFacts(kvm_dirty_ring=True))
    assert expected(V82, CAPS_COMMAND, caps("dirty-limit"), kvm).accept
    assert refused(expected(V82, CAPS_COMMAND, caps("dirty-limit", "auto-converge"), kvm),
                   "caps.dirty-limit.conflicts-auto-converge")
    assert refused(expected(V82, CAPS_COMMAND, caps("compress", "xbzrle"), src()),
                   "caps.compress.conflicts-xbzrle")
    assert expected(V72, CAPS_COMMAND, caps("compress", "xbzrle"), src()).accept
    assert refused(expected(V100, CAPS_COMMAND, caps("mapped-ram", "postcopy-ram"), src()),
                   "caps.mapped-ram.conflicts-postcopy-ram")


def test_build_options():
    no_repl = src(build=BuildFacts(replication=False))
    assert refused(expected(V72, CAPS_COMMAND, caps("x-colo"), no_repl),
                   "caps.x-colo.requires-replication")
    no_blk = src(build=BuildFacts(live_block_migration=False))
    assert refused(expected(V82, CAPS_COMMAND, caps("block"), no_blk),
                   "caps.block.requires-live-block-migration")
    no_zstd = src(build=BuildFacts(enums={"MultiFDCompression": ("none", "zlib")}))
    assert refused(expected(V100, PARAMS_COMMAND, {"multifd-compression": "zstd"}, no_zstd),
                   "qapi.invalid-enum-value")


def test_state_rule_applies_to_capabilities_only():
    running = ProbeState(side=Side.SOURCE, phase=Phase.ACTIVE)
    v = expected(V100, CAPS_COMMAND, caps("events"), running)
    assert refused(v, "state.caps.migration-active")
    assert v.matches("There's a migration process in progress")
    assert refused(expected(V72, CAPS_COMMAND, {"capabilities": []}, running),
                   "state.caps.migration-active")
    assert expected(V100, PARAMS_COMMAND, {"announce-rounds": 6}, running).accept
    # QAPI errors come first
    assert refused(expected(V100, CAPS_COMMAND, {}, running), "qapi.missing-member")


def test_refused_list_applies_nothing_and_last_entry_wins():
    st = src()
    after = apply(V72, CAPS_COMMAND, caps("events", "zero-copy-send"), st)
    assert after is st
    args = {"capabilities": [{"capability": "xbzrle", "state": True},
                             {"capability": "xbzrle", "state": False}]}
    assert apply(V72, CAPS_COMMAND, args, st).caps["xbzrle"] is False


# -- parameters ---------------------------------------------------------------


def test_qapi_integer_handling():
    v = expected(V72, PARAMS_COMMAND, {"compress-level": -1}, src())
    assert refused(v, "qapi.int-out-of-range")
    assert v.matches("Parameter 'compress-level' expects uint8_t")
    v = expected(V100, PARAMS_COMMAND, {"downtime-limit": 2 ** 64}, src())
    assert refused(v, "qapi.not-uint64") and v.matches("Parameter 'downtime-limit' expects uint64")
    assert refused(expected(V100, PARAMS_COMMAND, {"max-bandwidth": 1.5}, src()), "qapi.not-uint64")
    assert refused(expected(V100, PARAMS_COMMAND, {"max-bandwidth": True}, src()), "qapi.not-uint64")
    # negative numbers wrap to uint64 (kept by QEMU for compatibility)
    assert expected(V100, PARAMS_COMMAND, {"max-bandwidth": -1}, src()).accept
    assert apply(V100, PARAMS_COMMAND, {"max-bandwidth": -1}, src()).params["max-bandwidth"] == 2**64 - 1
    assert refused(expected(V100, PARAMS_COMMAND, {"downtime-limit": -1}, src()),
                   "params.downtime-limit.range")


def test_qapi_other_types():
    v = expected(V100, PARAMS_COMMAND, {"tls-creds": 5}, src())
    assert refused(v, "qapi.wrong-type")
    assert v.matches("Invalid parameter type for 'tls-creds', expected: StrOrNull")
    v = expected(V100, PARAMS_COMMAND, {"multifd-compression": "lz4"}, src())
    assert v.matches("Parameter 'multifd-compression' does not accept value 'lz4'")
    assert refused(expected(V100, PARAMS_COMMAND, {"cpu-throttle-tailslow": 1}, src()),
                   "qapi.wrong-type")
    v = expected(V100, PARAMS_COMMAND, {"no-such": 1}, src())
    assert v.matches("Parameter 'no-such' is unexpected")
    assert refused(expected(V100, PARAMS_COMMAND, {"compress-level": 1}, src()),
                   "qapi.unexpected-member")
    assert refused(expected(V72, PARAMS_COMMAND, {"mode": "normal"}, src()),
                   "qapi.unexpected-member")
    assert expected(V82, PARAMS_COMMAND, {"mode": "cpr-reboot"}, src()).accept
    assert refused(expected(V82, PARAMS_COMMAND, {"mode": "cpr-transfer"}, src()),
                   "qapi.invalid-enum-value")


@pytest.mark.parametrize("version", [V72, V82, V100])
def test_parameter_ranges(version):
    cases = [("cpu-throttle-initial", 0, False), ("cpu-throttle-initial", 1, True),
             ("cpu-throttle-initial", 99, True), ("cpu-throttle-initial", 100, False),
             ("downtime-limit", 2_000_000, True), ("downtime-limit", 2_000_001, False),
             ("announce-step", 0, False), ("announce-rounds", 1000, True),
             ("multifd-channels", 0, False), ("xbzrle-cache-size", 4096, True),
             ("xbzrle-cache-size", 4095, False), ("xbzrle-cache-size", 3 * 4096, False)]
    for name, value, ok in cases:
        v = expected(version, PARAMS_COMMAND, {name: value}, src())
        assert v.accept is ok, (name, value, v)
        if not ok:
            assert v.rule_id.startswith(f"params.{name}.")
            assert v.matches(f"Parameter '{name.replace('-', '_')}' expects a value between 0 and 9")
            assert not v.matches(f"Parameter '{name}' expects uint8_t")


@pytest.mark.parametrize("version", [V60, V72, V100])
def test_multifd_levels_contract(version):
    # The contract (QAPI doc 0..9 / 0..20, migrate_params_check) on every
    # version: 7.2 breaking it is a known deviation, not the rule.
    assert refused(expected(version, PARAMS_COMMAND, {"multifd-zlib-level": 10}, src()),
                   "params.multifd-zlib-level.range")
    assert refused(expected(version, PARAMS_COMMAND, {"multifd-zstd-level": 21}, src()),
                   "params.multifd-zstd-level.range")
    after = apply(version, PARAMS_COMMAND, {"multifd-zlib-level": 5}, src())
    assert after.params["multifd-zlib-level"] == 5


def test_multifd_levels_deviation_book():
    dev = deviant_book("multifd-compression-level-dropped")
    assert expected(V72, PARAMS_COMMAND, {"multifd-zlib-level": 10}, src(), book=dev).accept
    assert expected(V72, PARAMS_COMMAND, {"multifd-zstd-level": 21}, src(), book=dev).accept
    after = apply(V72, PARAMS_COMMAND, {"multifd-zlib-level": 5}, src(), book=dev)
    assert after.params["multifd-zlib-level"] == 1
    ids = lambda v: [d.id for d in deviations_for(v)]  # noqa: E731
    assert "multifd-compression-level-dropped" in ids((7, 2, 22))
    assert "multifd-compression-level-dropped" in ids((6, 0, 91))
    assert "multifd-compression-level-dropped" not in ids((9, 0, 0))
    # planners still learn that 7.2 builds drop the member
    assert BOOK.param_spec(V72, "multifd-zlib-level").ignored(V72)
    assert not BOOK.param_spec(V100, "multifd-zlib-level").ignored(V100)


def test_max_cpu_throttle_cross_rule():
    assert refused(expected(V72, PARAMS_COMMAND, {"max-cpu-throttle": 19}, src()),
                   "params.max-cpu-throttle.range")
    low_max = src(params={"max-cpu-throttle": 50})
    assert refused(expected(V100, PARAMS_COMMAND, {"cpu-throttle-initial": 60}, low_max),
                   "params.max-cpu-throttle.range")
    assert expected(V100, PARAMS_COMMAND, {"cpu-throttle-initial": 60, "max-cpu-throttle": 60},
                    src()).accept


def test_mapped_ram_contract_and_deviation():
    on = src(caps={"mapped-ram": True})
    # the contract: the proposed multifd-compression is checked
    v = expected(V100, PARAMS_COMMAND, {"multifd-compression": "zlib"}, on)
    assert refused(v, "params.mapped-ram.conflicts-multifd-compression")
    assert v.matches("Mapped-ram only available for non-compressed non-TLS multifd migration")
    stuck = on.replace(params={"multifd-compression": "zlib"})
    assert expected(V100, PARAMS_COMMAND, {"multifd-compression": "none"}, stuck).accept
    assert refused(expected(V100, PARAMS_COMMAND, {"announce-rounds": 6}, stuck),
                   "params.mapped-ram.conflicts-multifd-compression")
    # 9.0+ builds read the current value instead (known deviation)
    dev = deviant_book("mapped-ram-check-reads-current-parameters")
    assert expected(V100, PARAMS_COMMAND, {"multifd-compression": "zlib"}, on, book=dev).accept
    v = expected(V100, PARAMS_COMMAND, {"multifd-compression": "none"}, stuck, book=dev)
    assert refused(v, "params.mapped-ram.conflicts-multifd-compression")


def test_caps_before_incoming_deviation_range():
    started = dst(Phase.INCOMING_ACTIVE, caps={"multifd": True})
    dev = deviant_book("caps-before-incoming-refused-when-already-on")
    assert refused(expected(V82, CAPS_COMMAND, caps("events"), started, book=dev),
                   "caps.multifd.requires-before-incoming-if-off")
    ids = lambda v: [d.id for d in deviations_for(v)]  # noqa: E731
    # fixed upstream in 10.1 and backported to 10.0.1: 10.0.0 has it, 10.0.2 not
    assert "caps-before-incoming-refused-when-already-on" in ids((10, 0, 0))
    assert "caps-before-incoming-refused-when-already-on" not in ids((10, 0, 2))
    assert "caps-before-incoming-refused-when-already-on" not in ids((7, 2, 22))


def test_vcpu_dirty_limit_wording_of_82_matches():
    v = expected(V82, PARAMS_COMMAND, {"vcpu-dirty-limit": 0}, src())
    assert v.matches("Parameter 'vcpu_dirty_limit' expects is invalid, it must greater then 1 MB/s")
    assert v.matches("Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s")


def test_bitmap_mapping_checks():
    n = {"node-name": "n0", "alias": "a0", "bitmaps": [{"name": "b", "alias": "x"}]}
    assert bitmap_mapping_problem([n]) is None
    assert bitmap_mapping_problem([{**n, "alias": "0a"}]) == "alias-not-well-formed"
    assert bitmap_mapping_problem([n, {**n, "alias": "a1"}]) == "node-name-mapped-twice"
    assert bitmap_mapping_problem([n, {**n, "node-name": "n1"}]) == "alias-used-twice"
    v = expected(V100, PARAMS_COMMAND, {"block-bitmap-mapping": [n, n]}, src())
    assert refused(v, "params.block-bitmap-mapping.valid")
    assert v.matches("Invalid mapping given for block-bitmap-mapping: The node name 'n0' is mapped twice")


# -- rule data hygiene --------------------------------------------------------


def test_rules_have_unique_ids_and_sources():
    ids = [r.id for r in (*BOOK.state_rules, *BOOK.cap_rules, *BOOK.param_rules)]
    assert len(ids) == len(set(ids))
    for r in (*BOOK.state_rules, *BOOK.cap_rules, *BOOK.param_rules):
        assert r.where, r.id
        assert re.compile(r.message)
        assert re.fullmatch(r"(state|caps|params)\.[a-z0-9.-]+", r.id), r.id
    assert len(rules_for(V72)) < len(rules_for(V82))


def test_schema_comparison_and_build_facts():
    schema = _fake_schema(["events", "multifd"], {"downtime-limit": "int"})
    diffs = schema_mismatches(V100, schema)
    assert "capability xbzrle is in the oracle but not in the build's schema" in diffs
    facts = build_facts(V100, schema, ["events"])
    assert facts.enums["MigrationCapability"] == ("events", "multifd")
    assert facts.replication is False  # no x-colo-lost-heartbeat command


def _fake_schema(cap_names: list[str], params: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"name": CAPS_COMMAND, "meta-type": "command", "arg-type": "1", "ret-type": "0"},
        {"name": "1", "meta-type": "object", "members": [{"name": "capabilities", "type": "2"}]},
        {"name": "2", "meta-type": "array", "element-type": "3"},
        {"name": "3", "meta-type": "object", "members": [{"name": "capability", "type": "4"},
                                                          {"name": "state", "type": "bool"}]},
        {"name": "4", "meta-type": "enum", "values": cap_names},
        {"name": PARAMS_COMMAND, "meta-type": "command", "arg-type": "5", "ret-type": "0"},
        {"name": "5", "meta-type": "object",
         "members": [{"name": k, "type": t} for k, t in params.items()]},
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
    ]


# -- probes and the runner ------------------------------------------------------

SCENARIOS = [
    ("source/idle", src()),
    ("source/active", ProbeState(side=Side.SOURCE, phase=Phase.ACTIVE)),
    ("destination/deferred", dst()),
    ("destination/incoming", dst(Phase.INCOMING_ACTIVE)),
    ("destination/incoming+multifd", dst(Phase.INCOMING_ACTIVE, caps={"multifd": True})),
    ("destination/incoming+postcopy",
     dst(Phase.INCOMING_ACTIVE, caps={"postcopy-ram": True, "postcopy-preempt": True})),
]


def _scenario_probes(version, state):
    """(state-before-probe, probe) for every generated probe, setups applied by the oracle."""
    probes = generate_probes(version, BOOK.cap_names(version), BOOK.default_params(version), state)
    out = []
    for p in probes:
        st = state
        for cmd, args in p.setup:
            st = apply(version, cmd, args, st)
        out.append((st, p))
    return out


@pytest.mark.parametrize("version", [V72, V100])
def test_probe_generation_covers_pairs_and_boundaries(version):
    probes = generate_probes(version, BOOK.cap_names(version), BOOK.default_params(version), src())
    ids = {p.id for p in probes}
    n = len(BOOK.cap_names(version))
    assert sum(p.kind == "caps-pair" for p in probes) == n * (n - 1) // 2
    assert "caps:triple:zero-copy-send+multifd+xbzrle" in ids
    for vid in ("0", "1", "99", "100", "255", "256", "-1", "2^64", "float1.5", "str:1"):
        assert f"params:cpu-throttle-initial={vid}" in ids
    assert "params:xbzrle-cache-size=4095" in ids
    assert "params:multifd-compression=enum:zlib" in ids
    assert "params:qapi:unknown-member" in ids
    active = generate_probes(version, BOOK.cap_names(version), BOOK.default_params(version),
                             ProbeState(side=Side.SOURCE, phase=Phase.ACTIVE))
    for p in active:  # nothing that could let the running migration finish
        if p.command == PARAMS_COMMAND and "max-bandwidth" in p.args:
            assert not expected(version, p.command, p.args,
                                ProbeState(side=Side.SOURCE, phase=Phase.ACTIVE)).accept


@pytest.mark.parametrize("version", [V72, V82, V100])
def test_every_rule_mutation_is_caught_by_a_probe(version):
    """Flipping one rule's condition changes the verdict of at least one probe.

    So a wrong rule in the oracle (or a QEMU that changed) shows up in the
    live suite as a disagreement.  A change counts when accept/refuse or the
    message pattern differ (what the live comparison can see).
    """
    cases = [(label, st, p) for label, state in SCENARIOS
             for st, p in _scenario_probes(version, state)]
    base = [expected(version, p.command, p.args, st) for _, st, p in cases]
    missed = []
    for rule in BOOK.rules(version):
        book = BOOK.with_rules({rule.id: rule.mutated()})
        for (label, st, p), b in zip(cases, base):
            m = expected(version, p.command, p.args, st, book=book)
            if m.accept != b.accept or m.pattern != b.pattern:
                break
        else:
            missed.append(rule.id)
    assert not missed, f"no generated probe notices a change in: {missed}"


class FakeQemu:
    """An in-memory QEMU that answers with the oracle (or a deviation's book),
    optionally with a bug."""

    def __init__(self, version, state: ProbeState, bug: str | None = None,
                 book: RuleBook | None = None) -> None:
        self.version = version
        self.book = book or BOOK
        self.state = state.replace(caps=BOOK.default_caps(version),
                                   params=BOOK.default_params(version))
        self.bug = bug

    async def execute(self, cmd: str, args: Any) -> Any:
        if cmd == "query-migrate-capabilities":
            return [{"capability": k, "state": v} for k, v in self.state.caps.items()]
        if cmd == "query-migrate-parameters":
            return {k: v for k, v in self.state.params.items() if v is not None}
        v = expected(self.version, cmd, args, self.state, book=self.book)
        if self.bug == "refuses-zlib-level" and cmd == PARAMS_COMMAND \
                and "multifd-zlib-level" in args:
            raise _Refusal("GenericError", "multifd-zlib-level: something else entirely")
        if self.bug == "accepts-switchover-ack" and args == caps("switchover-ack"):
            self.state = self.state.replace(caps={**self.state.caps, "switchover-ack": True})
            return {}
        if not v.accept:
            if self.bug == "partial-apply" and cmd == PARAMS_COMMAND and "announce-rounds" in args:
                self.state = self.state.replace(params={**self.state.params, "downtime-limit": 1000})
            raise _Refusal("GenericError", _message_for(v))
        self.state = apply(self.version, cmd, args, self.state, book=self.book)
        return {}


class _Refusal(Exception):
    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = cls


def _message_for(v: Verdict) -> str:
    # A string the pattern matches: good enough for the runner test.
    return {
        "caps.switchover-ack.requires-return-path":
            "Capability 'switchover-ack' requires capability 'return-path'",
        "params.multifd-zlib-level.range":
            "Parameter 'multifd_zlib_level' expects a value between 0 and 9",
        "params.multifd-zstd-level.range":
            "Parameter 'multifd_zstd_level' expects a value between 0 and 20",
    }.get(v.rule_id or "", f"refused by {v.rule_id}")


def test_runner_reports_divergences_as_results():
    st = src()
    fake = FakeQemu(V100, st, bug="accepts-switchover-ack")
    probes = [p for p in generate_probes(V100, BOOK.cap_names(V100), BOOK.default_params(V100), st)
              if p.id in ("caps:single:switchover-ack", "caps:single:events",
                          "params:multi:one-out-of-range")]
    results = asyncio.run(run_probes(fake.execute, probes, V100, st, build="fake"))
    by_id = {r.probe_id: r for r in results}
    assert isinstance(by_id["caps:single:switchover-ack"], ProbeResult)
    assert by_id["caps:single:switchover-ack"].agree is False
    assert by_id["caps:single:events"].agree is True
    assert by_id["caps:single:events"].applied_as_expected is True
    # the runner restored the baseline after the accepted probes
    assert fake.state.caps["switchover-ack"] is False and fake.state.caps["events"] is False


def test_runner_notices_a_partially_applied_refusal():
    st = src()
    fake = FakeQemu(V100, st, bug="partial-apply")
    probes = [p for p in generate_probes(V100, BOOK.cap_names(V100), BOOK.default_params(V100), st)
              if p.id == "params:announce-rounds=1001"]
    [r] = asyncio.run(run_probes(fake.execute, probes, V100, st))
    assert r.observed_accept is False and r.state_unchanged is False and not r.ok
    assert fake.state.params["downtime-limit"] == 300  # restored


# -- QEMU 6.0 (the e2k fork's base) ------------------------------------------------


def test_qemu_60_model():
    names = set(BOOK.cap_names(V60))
    assert {"background-snapshot", "compress", "block", "validate-uuid"} <= names
    assert not names & {"zero-copy-send", "postcopy-preempt", "switchover-ack", "mapped-ram"}
    assert len(names) == 19  # qapi/migration.json at v6.0.0
    v = expected(V60, CAPS_COMMAND, caps("zero-copy-send"), src())
    assert refused(v, "qapi.invalid-enum-value")
    # 6.0 words it "Invalid parameter 'x'" (QERR_INVALID_PARAMETER)
    assert v.matches("Invalid parameter 'zero-copy-send'")
    assert expected(V60, CAPS_COMMAND, caps("postcopy-ram", "multifd"), src()).accept
    # no multichannel check on the destination yet
    exec_in = dst(Phase.INCOMING_ACTIVE, incoming_scheme="exec")
    assert expected(V60, CAPS_COMMAND, caps("multifd"), exec_in).accept
    ids = {r.id for r in rules_for(V60)}
    assert "caps.background-snapshot.conflicts-zero-copy-send" not in ids
    assert "caps.background-snapshot.conflicts-validate-uuid" in ids
    assert not any(i.startswith(("caps.zero-copy-send", "caps.postcopy-preempt",
                                 "params.zero-copy-send")) for i in ids)
    assert refused(expected(V60, PARAMS_COMMAND, {"compress-level": 10}, src()),
                   "params.compress-level.range")


def test_model_reach():
    from harness.rules import is_modelled, reference_version
    from harness.rules.prober import model_note

    assert is_modelled((6, 0, 91)) and is_modelled((8, 1, 0)) and not is_modelled((11, 0, 0))
    assert reference_version((11, 0, 0)) == (10, 0) and reference_version((5, 2, 0)) == (6, 0)
    assert model_note((6, 0, 91)) is None
    assert model_note((5, 2, 0)) == ("no rule model for QEMU 5.2; probed against 6.0's rules, "
                                     "differences marked unmodelled")


@pytest.mark.parametrize("version", [V60])
def test_every_rule_mutation_is_caught_by_a_probe_60(version):
    test_every_rule_mutation_is_caught_by_a_probe(version)


# -- deviation verdicts -------------------------------------------------------------


def _zlib_probes(version, st):
    wanted = {"params:multifd-zlib-level=10", "params:multifd-zlib-level=9",
              "params:multifd-zstd-level=21", "params:multifd-zlib-level=1"}
    probes = [p for p in generate_probes(version, BOOK.cap_names(version),
                                         BOOK.default_params(version), st) if p.id in wanted]
    assert {p.id for p in probes} == wanted
    return probes


def test_deviation_reproduced_is_a_deviation_not_agreement():
    st = src()
    fake = FakeQemu(V72, st, book=deviant_book("multifd-compression-level-dropped"))
    results = asyncio.run(run_probes(fake.execute, _zlib_probes(V72, st), V72, st,
                                     build="fake", build_version=(7, 2, 22)))
    by_id = {r.probe_id: r for r in results}
    for pid in ("params:multifd-zlib-level=10", "params:multifd-zstd-level=21",
                "params:multifd-zlib-level=9"):
        r = by_id[pid]
        assert r.verdict == "deviation" and r.deviation == "multifd-compression-level-dropped", r
        # zlib=9 is accepted by both (it agrees); the build does not apply it.
        assert r.ok and r.agree == pid.endswith("=9"), r
    # zlib=10: the contract refuses it, the build accepts it
    assert by_id["params:multifd-zlib-level=10"].expected_accept is False
    assert by_id["params:multifd-zlib-level=10"].observed_accept is True
    # zlib=9: both accept, but the build does not apply it
    assert by_id["params:multifd-zlib-level=9"].applied_as_expected is False
    # the default value tells nothing apart: plain agreement
    assert by_id["params:multifd-zlib-level=1"].verdict == "agree"
    summary = summarize(results)
    assert summary["deviations_reproduced"] == ["multifd-compression-level-dropped"]
    assert summary["deviations_not_reproduced"] == [] and summary["disagree"] == 0


def test_deviation_that_no_longer_reproduces_agrees_with_a_note():
    st = src()
    fake = FakeQemu(V72, st)  # a 7.2 build with the fix backported: answers as the contract
    results = asyncio.run(run_probes(fake.execute, _zlib_probes(V72, st), V72, st,
                                     build="fake", build_version=(7, 2, 22)))
    r = {r.probe_id: r for r in results}["params:multifd-zlib-level=10"]
    assert r.verdict == "agree" and r.ok and r.deviation is None
    assert r.deviation_not_reproduced == ["multifd-compression-level-dropped"]
    assert any("fixed in this build" in n for n in r.notes)
    summary = summarize(results)
    assert summary["deviations_not_reproduced"] == ["multifd-compression-level-dropped"]
    assert summary["deviations_reproduced"] == [] and summary["disagree"] == 0


def test_a_different_refusal_is_a_disagreement():
    st = src()
    fake = FakeQemu(V72, st, bug="refuses-zlib-level",
                    book=deviant_book("multifd-compression-level-dropped"))
    results = asyncio.run(run_probes(fake.execute, _zlib_probes(V72, st), V72, st,
                                     build="fake", build_version=(7, 2, 22)))
    r = {r.probe_id: r for r in results}["params:multifd-zlib-level=10"]
    assert r.verdict == "disagree" and not r.ok and r.deviation is None
    # every zlib probe (the zstd one still reproduces the deviation)
    assert summarize(results)["disagree"] == 3


def test_unmodelled_version_differences_do_not_fail():
    st = src()
    fake = FakeQemu(V100, st, bug="accepts-switchover-ack")
    probes = [p for p in generate_probes(V100, BOOK.cap_names(V100), BOOK.default_params(V100), st)
              if p.id in ("caps:single:switchover-ack", "caps:single:events")]
    results = asyncio.run(run_probes(fake.execute, probes, V100, st, build="fake",
                                     build_version=(11, 0, 0), modelled=False))
    by_id = {r.probe_id: r for r in results}
    assert by_id["caps:single:switchover-ack"].verdict == "unmodelled"
    assert by_id["caps:single:switchover-ack"].ok
    assert by_id["caps:single:events"].verdict == "agree"


def test_probe_report_table_and_summary():
    from harness.rules.prober import BuildProbeReport, conformance_table

    st = src()
    fake = FakeQemu(V72, st, book=deviant_book("multifd-compression-level-dropped"))
    results = asyncio.run(run_probes(fake.execute, _zlib_probes(V72, st), V72, st,
                                     build="fake", build_version=(7, 2, 22)))
    table = conformance_table(results)
    assert re.search(r"params\.multifd-zlib-level\.range +deviation "
                     r"multifd-compression-level-dropped +1  accepted", table), table
    rep = BuildProbeReport("fake", "7.2.22", results, rules_version=V72,
                           deviations=deviations_for((7, 2, 22)))
    assert rep.ok
    lines = rep.summary_lines()
    assert lines[0] == "4 probes: 1 agree, 3 known deviation, 0 unmodelled, 0 disagree"
    assert lines[1].startswith("deviation reproduced: multifd-compression-level-dropped "
                               "(3 probes; QEMU 5.0.0..<9.0.0; fixed in QEMU 9.0")
    # an unmodelled build's schema differences are reported, not failed on
    unmod = BuildProbeReport("old", "5.2.0", [], modelled=False,
                             schema_mismatches=["capability x is in the oracle but not ..."])
    assert unmod.ok and not BuildProbeReport("new", "7.2.0", [], schema_mismatches=["x"]).ok


def test_deviation_data_hygiene():
    from harness.rules import known_deviations

    ids = [d.id for d in known_deviations()]
    assert len(ids) == len(set(ids))
    book_ids = {r.id for r in (*BOOK.state_rules, *BOOK.cap_rules, *BOOK.param_rules)}
    for d in known_deviations():
        assert d.where and d.summary and d.contract, d.id
        assert d.until is None or d.since < d.until, d.id
        assert all(r.id in book_ids for r in d.replaces), d.id  # patches, never new rules
        assert all(BOOK.param_spec(V72, n) for n in d.drops_params), d.id


# -- the probe's machine, on any build ---------------------------------------------


def _build(arch: str, machines: dict[str, bool], accels=("tcg",), name="b"):
    from harness.cell import BuildSpec
    from harness.qemu.build import MachineType, QemuBuild

    return QemuBuild(spec=BuildSpec(name=name, binary=f"/x/qemu-system-{arch}"), version=(6, 0, 91),
                     arch=arch, accelerators=tuple(accels),
                     accel_problems={a: None for a in accels},
                     machines={m: MachineType(m, is_default=d) for m, d in machines.items()})


def test_probe_machine_follows_the_build(tmp_path):
    from harness.cell import TargetSpec
    from harness.rules.prober import choose_machine, probe_accel

    targets = [TargetSpec("x86_64-q35-kvm", arch="x86_64", machine="q35", accel="kvm",
                          cpu="qemu64,-kvmclock"),
               TargetSpec("x86_64-q35-tcg", arch="x86_64", machine="q35", accel="tcg"),
               TargetSpec("e2k-tcg-pattern", arch="e2k", machine="e2k", accel="tcg",
                          memory=128 << 20)]
    x86 = _build("x86_64", {"pc-q35-7.2": False, "pc-i440fx-7.2": True, "none": False},
                 accels=("kvm", "tcg"))
    x86.machines["pc-q35-7.2"] = type(x86.machines["pc-q35-7.2"])("pc-q35-7.2", alias="q35")
    m = choose_machine(x86, targets)
    assert (m.machine, m.accel, m.cpu, m.origin) == ("q35", "tcg", None,
                                                     "target profile x86_64-q35-tcg")
    e2k = _build("e2k", {"e2k": False, "none": False})
    m = choose_machine(e2k, targets)
    assert (m.machine, m.accel, m.memory) == ("e2k", "tcg", 128 << 20)
    argv = m.argv("e2k", tmp_path)
    assert argv[:5] == ["-M", "e2k", "-m", "128M", "-S"] and argv[5] == "-bios"
    arm = _build("aarch64", {"virt-7.2": False, "none": False})
    arm.machines["virt-7.2"] = type(arm.machines["virt-7.2"])("virt-7.2", alias="virt")
    assert choose_machine(arm, targets).machine == "virt-7.2"
    riscv = _build("riscv64", {"spike": True, "virt": False, "none": False})
    assert choose_machine(riscv, targets).machine == "spike"  # the build's default
    assert probe_accel(_build("x86_64", {}, accels=("kvm",))) == "kvm"
    assert probe_accel(e2k) == "tcg"
