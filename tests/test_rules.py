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
    expected,
    rules_for,
)
from harness.rules.model import Verdict
from harness.rules.probes import (
    ProbeResult,
    build_facts,
    generate_probes,
    run_probes,
    schema_mismatches,
)
from harness.rules.params import bitmap_mapping_problem

V72, V82, V90, V100 = (7, 2), (8, 2), (9, 0), (10, 0)
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
    # 8.2: refused whenever multifd is on after incoming started, even if it was on before
    preset = started.replace(caps={"multifd": True})
    assert refused(expected(V82, CAPS_COMMAND, caps("events"), preset),
                   "caps.multifd.requires-before-incoming")
    # 10.0: only turning it on is refused
    assert expected(V100, CAPS_COMMAND, caps("events"), preset).accept
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


def test_multifd_levels_ignored_in_72():
    # QEMU 7.2 drops multifd-zlib-level/-zstd-level silently (observed on 7.2.22)
    assert expected(V72, PARAMS_COMMAND, {"multifd-zlib-level": 10}, src()).accept
    assert apply(V72, PARAMS_COMMAND, {"multifd-zlib-level": 5}, src()).params["multifd-zlib-level"] == 1
    assert refused(expected(V100, PARAMS_COMMAND, {"multifd-zlib-level": 10}, src()),
                   "params.multifd-zlib-level.range")


def test_max_cpu_throttle_cross_rule():
    assert refused(expected(V72, PARAMS_COMMAND, {"max-cpu-throttle": 19}, src()),
                   "params.max-cpu-throttle.range")
    low_max = src(params={"max-cpu-throttle": 50})
    assert refused(expected(V100, PARAMS_COMMAND, {"cpu-throttle-initial": 60}, low_max),
                   "params.max-cpu-throttle.range")
    assert expected(V100, PARAMS_COMMAND, {"cpu-throttle-initial": 60, "max-cpu-throttle": 60},
                    src()).accept


def test_mapped_ram_reads_current_parameters():
    on = src(caps={"mapped-ram": True})
    # the check reads QEMU's current multifd-compression, not the proposed one
    assert expected(V100, PARAMS_COMMAND, {"multifd-compression": "zlib"}, on).accept
    stuck = on.replace(params={"multifd-compression": "zlib"})
    v = expected(V100, PARAMS_COMMAND, {"multifd-compression": "none"}, stuck)
    assert refused(v, "params.mapped-ram.conflicts-multifd-compression")
    assert v.matches("Mapped-ram only available for non-compressed non-TLS multifd migration")


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
    """An in-memory QEMU that answers with the oracle, optionally with a bug."""

    def __init__(self, version, state: ProbeState, bug: str | None = None) -> None:
        self.version = version
        self.state = state.replace(caps=BOOK.default_caps(version),
                                   params=BOOK.default_params(version))
        self.bug = bug

    async def execute(self, cmd: str, args: Any) -> Any:
        if cmd == "query-migrate-capabilities":
            return [{"capability": k, "state": v} for k, v in self.state.caps.items()]
        if cmd == "query-migrate-parameters":
            return {k: v for k, v in self.state.params.items() if v is not None}
        v = expected(self.version, cmd, args, self.state)
        if self.bug == "accepts-switchover-ack" and args == caps("switchover-ack"):
            self.state = self.state.replace(caps={**self.state.caps, "switchover-ack": True})
            return {}
        if not v.accept:
            if self.bug == "partial-apply" and cmd == PARAMS_COMMAND and "announce-rounds" in args:
                self.state = self.state.replace(params={**self.state.params, "downtime-limit": 1000})
            raise _Refusal("GenericError", _message_for(v))
        self.state = apply(self.version, cmd, args, self.state)
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
