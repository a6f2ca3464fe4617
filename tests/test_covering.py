"""Covering arrays: complete, never refused by the oracle, deterministic.

Completeness is checked independently of the engine's own bookkeeping: every
t-tuple of the real capability set of QEMU 7.2 and 10.0 is either in some
generated row, or refused by the rule oracle whatever else is switched on with
it (tried with every single partner setting).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NoReturn

import pytest

from harness.cell import BuildSpec, Cell
from harness.errors import MatrixError
from harness.matrix import Matrix, Planner, TierPlan, load_matrix, override_build, plan_tier
from harness.matrix.covering import (
    ALWAYS_ON,
    Context,
    ContextPart,
    Factor,
    Judge,
    Refusal,
    SettingsModel,
    coverage,
    generate,
)
from harness.rules import default_book

REPO = Path(__file__).resolve().parent.parent
BOOK = default_book()


def no_binary(spec: BuildSpec) -> NoReturn:
    """The build resolver of these tests: every build here declares ``version:``,
    so planning must not ask a binary."""
    raise AssertionError(f"planning asked the binary {spec.binary} for its version")


def plan_of(matrix: Matrix, tier: str, seed: int = 0) -> TierPlan:
    return plan_tier(matrix, tier, seed, resolve=no_binary)


def cells_of(matrix: Matrix, tier: str, seed: int = 0) -> list[Cell]:
    return plan_of(matrix, tier, seed).cells


def cap_factors(version: tuple[int, int], extra: tuple[Factor, ...] = ()) -> list[Factor]:
    """Every capability of the version (each a boolean factor), as the oracle knows them."""
    return [Factor(c, "capability", (False, True)) for c in BOOK.cap_names(version)
            if c not in ALWAYS_ON] + list(extra)


COMPRESSION = Factor("multifd-compression", "parameter", (None, "zlib", "zstd"))


def settings_of(row: dict, factors: list[Factor]) -> list[tuple[str, object]]:
    return [(f.name, row[f.name]) for f in factors]


class Independent:
    """The oracle asked directly: can a tuple be part of an accepted cell?"""

    def __init__(self, ctx: Context, factors: list[Factor]) -> None:
        self.judge = Judge(ctx)
        self.model = SettingsModel(factors)
        self.factors = factors
        self.partners = [(f.name, v) for f in factors for v in f.values
                         if v not in (False, None)]

    def accepted(self, settings) -> bool:
        return self.judge.verdict(*self.model.split(settings)) is None

    @lru_cache(maxsize=None)  # noqa: B019
    def feasible(self, tup: tuple) -> bool:
        if self.accepted(tup):
            return True
        names = {n for n, _ in tup}
        return any(self.accepted(tup + (p,)) for p in self.partners if p[0] not in names)

    def infeasible(self, tup: tuple) -> bool:
        """Refused with any one partner, or containing a smaller such tuple."""
        for k in range(1, len(tup) + 1):
            for sub in itertools.combinations(tup, k):
                if not self.feasible(sub):
                    return True
        return False


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("version,extra", [((7, 2), ()), ((10, 0), ()),
                                           ((10, 0), (COMPRESSION,))],
                         ids=["7.2", "10.0", "10.0+multifd-compression"])
def test_covering_array_is_complete_and_accepted(version, extra, order) -> None:
    factors = cap_factors(version, extra)
    ctx = Context(version, version, "tcg")
    gen = generate(factors, order, Judge(ctx), SettingsModel(factors), seed=0)
    oracle = Independent(ctx, factors)
    # No constraint violated: the oracle accepts every row as a whole.
    for row in gen.rows:
        assert oracle.accepted(settings_of(row, factors)), row
    # Every t-tuple is covered or provably refused.
    covered = set()
    for row in gen.rows:
        items = settings_of(row, factors)
        covered.update(itertools.combinations(items, order))
    missing = []
    for combo in itertools.combinations(factors, order):
        for values in itertools.product(*(f.values for f in combo)):
            tup = tuple(zip((f.name for f in combo), values))
            if tup not in covered and not oracle.infeasible(tup):
                missing.append(tup)
    assert not missing, f"{len(missing)} feasible tuples not covered, e.g. {missing[:3]}"
    # The engine's own count agrees.
    cov = coverage(gen.rows, factors, [ContextPart(ctx, factors, gen.analysis)], order)
    assert cov.complete and cov.required > 0
    assert cov.required == len({t for t in covered})


def test_oracle_facts_become_exclusions_and_requirements() -> None:
    gen = generate(cap_factors((10, 0)), 2, Judge(Context((10, 0), (10, 0), "tcg")),
                   SettingsModel(cap_factors((10, 0))))
    a = gen.analysis
    assert a.unusable[("dirty-limit", True)].rule == "caps.dirty-limit.requires-kvm-dirty-ring"
    assert a.requires[("zero-copy-send", True)] == (("multifd", True),)
    assert a.requires[("switchover-ack", True)] == (("return-path", True),)
    assert a.conflicts[(("xbzrle", True), ("multifd", True))].rule == \
        "caps.multifd.conflicts-xbzrle"
    # 7.2 has no multifd/xbzrle rule: they may meet there.
    gen72 = generate(cap_factors((7, 2)), 2, Judge(Context((7, 2), (7, 2), "tcg")),
                     SettingsModel(cap_factors((7, 2))))
    assert (("xbzrle", True), ("multifd", True)) not in gen72.analysis.conflicts
    assert any(r["xbzrle"] and r["multifd"] for r in gen72.rows)


def test_absent_capability_is_excluded_per_build() -> None:
    factors = [Factor("compress", "capability", (False, True)),
               Factor("xbzrle", "capability", (False, True))]
    gen = generate(factors, 2, Judge(Context((10, 0), (10, 0), "tcg")), SettingsModel(factors))
    refusal = gen.analysis.unusable[("compress", True)]
    assert refusal.rule == "absent.capability" and "removed in 9.1" in refusal.reason
    assert not any(r["compress"] for r in gen.rows)


def test_seed_changes_the_array_but_not_its_coverage() -> None:
    factors = cap_factors((10, 0))
    ctx = Context((10, 0), (10, 0), "tcg")
    rows = {}
    for seed in (0, 1):
        gen = generate(factors, 2, Judge(ctx), SettingsModel(factors), seed=seed)
        cov = coverage(gen.rows, factors, [ContextPart(ctx, factors, gen.analysis)], 2)
        assert cov.complete
        rows[seed] = gen.rows
    assert rows[0] != rows[1]
    again = generate(factors, 2, Judge(ctx), SettingsModel(factors), seed=0)
    assert again.rows == rows[0]


# --- through matrix.yaml ------------------------------------------------------------------

MATRIX = """\
version: 1
defaults:
  capabilities: {events: true}
  parameters: {max-bandwidth: 10G}
builds:
  system: {binary: "/usr/bin/qemu-system-{arch}", required: true, version: "7.2"}
  new: {prefix: /nonexistent/qemu-10.0, version: "10.0"}
targets:
  q35: {arch: x86_64, machine: q35, build: system}
  pc: {arch: x86_64, machine: pc, build: system}
  q35-72: {arch: x86_64, machine: pc-q35-7.2, build: system}
  kvm: {arch: x86_64, machine: q35, accel: kvm, build: system}
transports: [unix, tcp, exec, file, fd, rdma]
paramsets:
  low: {downtime-limit: 100}
tiers:
  smoke:
    cells: [{target: q35, transport: unix}]
  nightly:
    include: [smoke]
    covering:
      target: [q35, pc, kvm]
      transport: [unix, tcp, rdma]
      capabilities: [xbzrle, multifd, auto-converge, return-path, zero-copy-send,
                     switchover-ack, compress, background-snapshot]
      parameters: {multifd-channels: [null, 8], downtime-limit: [null, 100]}
  cross:
    covering:
      order: 3
      target: [q35-72, q35]
      transport: [unix, file]
      src-build: [system, new]
      dst-build: [system, new]
      capabilities: [xbzrle, multifd, switchover-ack, return-path]
      paramset: [default, low]
  tcg-only:
    include: [nightly]
    filter: not kvm
"""


@pytest.fixture
def matrix_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return path


def test_plan_lists_coverage_and_exclusions(matrix_path: Path) -> None:
    plan = plan_of(load_matrix(matrix_path), "nightly")
    assert plan.cells[0].id == "q35-unix-default"   # included tier first
    cov_cells = plan.cells[1:]
    assert cov_cells and all("-cov-" in c.id for c in cov_cells)
    (report,) = plan.coverings
    assert report.coverage.complete and report.coverage.describe().startswith("2-way: ")
    assert {c.transport for c in cov_cells} == {"unix", "tcp"}
    what = {(x.kind, x.what) for x in plan.exclusions}
    assert ("unsupported", "transport rdma") in what
    assert ("unsupported", "background-snapshot=on") in what
    assert ("absent", "switchover-ack=on") in what          # 7.2 has none
    assert ("error-path", "multifd=on + compress=on") in what
    rules = {x.what: x.rule for x in plan.exclusions}
    assert rules["multifd=on + compress=on"] == "caps.multifd.conflicts-compress"
    # What runs never combines what the oracle refuses.
    for cell in cov_cells:
        caps = {k for k, v in cell.capabilities if v}
        assert not {"multifd", "compress"} <= caps
        assert "zero-copy-send" not in caps or "multifd" in caps
        assert "-fd-" not in cell.id and "background-snapshot" not in caps


def test_cross_builds_need_a_versioned_machine(matrix_path: Path) -> None:
    plan = plan_of(load_matrix(matrix_path), "cross")
    for cell in plan.cells:
        if cell.src_build.name != cell.dst_build.name:
            assert cell.target.machine == "pc-q35-7.2", cell.id
            assert f"-{cell.src_build.name}-to-{cell.dst_build.name}" in cell.id
        caps = {k for k, v in cell.capabilities if v}
        if "switchover-ack" in caps:   # only 10.0 on both sides has it, with return-path
            assert cell.src_build.name == cell.dst_build.name == "new"
            assert "return-path" in caps
    assert any(x.what.startswith("target q35 with") for x in plan.exclusions)
    # file: exists from 8.2: only 10.0 -> 10.0 cells use it.
    for cell in plan.cells:
        if cell.transport == "file":
            assert cell.src_build.name == cell.dst_build.name == "new", cell.id
    assert any(c.transport == "file" for c in plan.cells)
    assert any(x.what == "transport file" and x.kind == "absent" for x in plan.exclusions)
    (report,) = plan.coverings
    assert report.order == 3 and report.coverage.complete
    assert any(c.id.endswith("-low") or "-low-" in c.id for c in plan.cells)


def test_filter_applies_to_included_cells(matrix_path: Path) -> None:
    m = load_matrix(matrix_path)
    plan = plan_of(m, "tcg-only")
    assert plan.cells and not any("kvm" in c.id for c in plan.cells)
    assert plan.filtered_out == sum("kvm" in c.id for c in cells_of(m, "nightly"))


def test_ids_are_unique_readable_and_stable_across_processes(matrix_path: Path) -> None:
    ids = [c.id for c in cells_of(load_matrix(matrix_path), "nightly")]
    assert len(ids) == len(set(ids))
    assert any("+" in i for i in ids)          # capabilities are spelled out
    code = ("import sys; from harness.matrix import load_matrix, tier_cells; "
            "from harness.qemu.build import discover; "
            "m = load_matrix(sys.argv[1]); "
            "print('\\n'.join(c.id for c in tier_cells(m, 'nightly', resolve=discover)))")
    for hashseed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code, str(matrix_path)], cwd=REPO,
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": hashseed})
        assert out.stdout.split() == ids


def test_seed_changes_covering_cells_only(matrix_path: Path) -> None:
    m = load_matrix(matrix_path)
    a, b = cells_of(m, "nightly", seed=0), cells_of(m, "nightly", seed=7)
    assert a[0] == b[0]                         # explicit cells do not move
    assert [c.id for c in a] != [c.id for c in b]
    assert plan_of(m, "nightly", 7).coverings[0].coverage.complete


@pytest.mark.parametrize("snippet,key,reason", [
    ("covering: {target: [q35], transport: [unix], order: 0}", "tiers.x.covering.order",
     "must be at least 1, got 0"),
    ("covering: {target: [q35], transport: [unix], capabilities: [events]}",
     "tiers.x.covering.capabilities[0]",
     "capability 'events' is set for every cell in defaults.capabilities; it cannot also "
     "be a factor"),
    ("covering: {target: [q35], transport: [unix], parameters: {downtime-limit: 5}}",
     "tiers.x.covering.parameters.downtime-limit",
     "expected a list of values (null: QEMU's default)"),
    ("covering: {target: [nope], transport: [unix]}", "tiers.x.covering.target[0]",
     "unknown target 'nope' (defined: q35, pc, q35-72, kvm)"),
    ("cells: [{target: q35, transport: rdma}]", "tiers.x.cells[0].transport",
     "transport 'rdma' is not supported by the cell flow yet (supported: unix, tcp, exec, "
     "file, fd)"),
    ("filter: 'not ('", "tiers.x.filter",
     "bad -k expression 'not (': expected a word, 'not' or '(' at column 6"),
])
def test_covering_errors_name_the_key(tmp_path: Path, snippet: str, key: str,
                                      reason: str) -> None:
    text = MATRIX + textwrap.indent(f"x:\n  {snippet}\n", "  ")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert info.value.key == key and info.value.reason == reason


def test_list_json_has_cells_coverage_and_exclusions(matrix_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "harness", "list", "--matrix", str(matrix_path),
                          "--tier", "nightly", "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["count"] == len(data["cells"]) > 1
    assert data["cells"][1]["dimensions"]["target"] in ("q35", "pc", "kvm")
    (cov,) = data["coverage"]
    assert cov["complete"] and cov["covered"] == cov["required"] > 0
    assert any(x["kind"] == "error-path" and x["rule"] for x in data["exclusions"])
    text = subprocess.run([sys.executable, "-m", "harness", "list", "--matrix",
                           str(matrix_path), "--tier", "nightly"], cwd=REPO,
                          capture_output=True, text=True, timeout=120).stdout
    assert f"2-way: {cov['covered']}/{cov['required']}" in text
    assert "error-path: multifd=on + compress=on" in text
    assert text.splitlines()[-1] == f"{data['count']} cells"


class TripleRule(Judge):
    """A made-up oracle: a, b and c may not all be on (every pair is fine)."""

    def verdict(self, caps, params, transport=None, mode=""):  # type: ignore[override]
        if {"a", "b", "c"} <= {k for k, v in caps.items() if v}:
            return Refusal("test.triple", "a, b and c together")
        return None


def test_a_rule_over_three_settings_is_learnt_from_refused_rows() -> None:
    factors = [Factor(n, "capability", (False, True)) for n in "abcde"]
    gen = generate(factors, 3, TripleRule(Context((10, 0), (10, 0), "tcg")),
                   SettingsModel(factors))
    assert not gen.analysis.conflicts and not gen.analysis.unusable
    assert list(gen.analysis.nogoods) == [(("a", True), ("b", True), ("c", True))]
    assert gen.repair_rounds >= 1
    assert not any(r["a"] and r["b"] and r["c"] for r in gen.rows)
    ctx = Context((10, 0), (10, 0), "tcg")
    cov = coverage(gen.rows, factors, [ContextPart(ctx, factors, gen.analysis)], 3)
    assert cov.complete and cov.required == 10 * 8 - 1


def test_cli_seed_and_shard_change_the_listing(matrix_path: Path) -> None:
    def ids(*extra: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "harness", "list", "--matrix",
                              str(matrix_path), "--tier", "nightly", "--json", *extra],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [c["id"] for c in json.loads(out.stdout)["cells"]]

    base = ids()
    assert ids("--seed", "0") == base and ids("--seed", "5") != base
    halves = ids("--shard", "1/2") + ids("--shard", "2/2")
    assert sorted(halves) == sorted(base) and len(set(halves)) == len(base)


# --- the build resolver ----------------------------------------------------------


@dataclass
class FakeBuild:
    version: tuple[int, ...] = (0, 0, 0)
    missing: str | None = None


def test_planning_asks_the_resolver_only_for_builds_without_a_version(matrix_path: Path
                                                                     ) -> None:
    """With --qemu every build is the given binary: its version comes from the
    resolver (the CLI passes harness.qemu.build.discover) and names the context."""
    asked: list[BuildSpec] = []

    def resolve(spec: BuildSpec) -> FakeBuild:
        asked.append(spec)
        return FakeBuild((10, 0, 2))

    matrix = override_build(load_matrix(matrix_path), "/opt/qemu/bin/qemu-system-x86_64")
    plan = plan_tier(matrix, "nightly", resolve=resolve)
    assert asked and {s.binary for s in asked} == {"/opt/qemu/bin/qemu-system-x86_64"}
    (report,) = plan.coverings
    assert report.coverage.complete
    assert all("QEMU 10.0" in c for c in report.contexts), report.contexts
    # The same matrix without --qemu declares every version: nobody is asked.
    assert plan_of(load_matrix(matrix_path), "nightly").coverings


def test_a_build_the_resolver_cannot_find_is_excluded_with_the_reason(matrix_path: Path
                                                                      ) -> None:
    matrix = override_build(load_matrix(matrix_path), "/nonexistent/qemu")
    plan = plan_tier(matrix, "nightly",
                     resolve=lambda spec: FakeBuild(missing=f"binary not found: {spec.binary}"))
    assert [c.id for c in plan.cells] == ["q35-unix-default"]   # explicit cells stay
    unavailable = [x for x in plan.exclusions if x.kind == "unavailable"]
    assert unavailable and all("binary not found: /nonexistent/qemu" in x.reason
                               for x in unavailable)


def test_one_planner_plans_an_included_tier_once(matrix_path: Path) -> None:
    planner = Planner(load_matrix(matrix_path), resolve=no_binary)
    nightly = planner.plan("nightly")
    assert planner.plan("tcg-only").coverings[0] is nightly.coverings[0]
    assert planner.cells("nightly") == nightly.cells


def test_the_matrix_package_plans_without_qemu_discovery() -> None:
    """Loading and planning the project's matrix imports nothing from
    harness.qemu: the version of a build comes through the resolver argument."""
    code = ("import sys; from harness.matrix import load_matrix, plan_tier; "
            "m = load_matrix(sys.argv[1]); "
            "[plan_tier(m, t, resolve=lambda s: 1 / 0) for t in ('nightly', 'release')]; "
            "print(sorted(n for n in sys.modules if n.startswith('harness.qemu')))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "matrix.yaml")], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not hasattr(Matrix, "plan") and not hasattr(Matrix, "cells")


# --- transport rules -------------------------------------------------------------


@pytest.mark.parametrize("version,caps,transport,rule", [
    ((10, 0), {"mapped-ram": True}, "unix", "migrate.transport.needs-seekable"),
    ((10, 0), {"mapped-ram": True}, "file", None),
    ((10, 0), {"multifd": True}, "exec", "migrate.transport.needs-multi-channel"),
    ((10, 0), {"multifd": True}, "file", "migrate.transport.needs-multi-channel"),
    ((10, 0), {"multifd": True, "mapped-ram": True}, "file", None),
    ((10, 0), {"postcopy-preempt": True}, "exec", "migrate.transport.needs-multi-channel"),
    ((10, 0), {"multifd": True}, "tcp", None),
    ((7, 2), {"multifd": True}, "exec", "migrate.transport.multifd-protocol"),
    ((7, 2), {"multifd": True}, "unix", None),
    ((10, 0), {"multifd": True}, "fd", "migrate.transport.needs-multi-channel"),
    ((7, 2), {"multifd": True}, "fd", "migrate.transport.multifd-protocol"),
    ((10, 0), {"postcopy-ram": True, "return-path": True}, "fd", None),
])
def test_transport_rules(version, caps, transport, rule) -> None:
    from harness.migration.transports import transport_refusal

    got = transport_refusal(version, caps, transport)
    assert (got[0] if got else None) == rule


def test_covering_ties_mapped_ram_to_the_file_transport() -> None:
    """With the transport a factor, mapped-ram only ever meets file:, and the
    refused pairs are listed with QEMU's rule."""
    factors = [Factor("transport", "transport", ("unix", "file")),
               Factor("mapped-ram", "capability", (False, True)),
               Factor("xbzrle", "capability", (False, True))]
    judge = Judge(Context((10, 0), (10, 0), "tcg"))
    gen = generate(factors, 2, judge, SettingsModel(factors))
    rows = gen.rows
    assert any(r["mapped-ram"] and r["transport"] == "file" for r in rows)
    assert not any(r["mapped-ram"] and r["transport"] != "file" for r in rows)
    rules = {r.rule for r in gen.analysis.conflicts.values()}
    assert "migrate.transport.needs-seekable" in rules
    # Every pair the oracle allows is covered.
    for a, b in itertools.combinations(factors, 2):
        for va in a.values:
            for vb in b.values:
                pair = {a.name: va, b.name: vb}
                ok = judge.verdict(*SettingsModel(factors).split(list(pair.items()))) is None
                if ok:
                    assert any(all(r[k] == v for k, v in pair.items()) for r in rows), pair


def test_save_restore_transports_exclude_capabilities_needing_a_peer() -> None:
    judge = Judge(Context((10, 0), (10, 0), "tcg"))
    refusal = judge.verdict({"return-path": True}, {}, "exec")
    assert refusal is not None and refusal.rule.startswith("unsupported.")
    assert judge.verdict({"return-path": True}, {}, "tcp") is None


def test_covering_ties_modes_to_what_they_need() -> None:
    """postcopy-after-N only with postcopy-ram; cancel-retry only over a live
    transport; every other pair covered."""
    factors = [Factor("transport", "transport", ("unix", "exec")),
               Factor("postcopy-ram", "capability", (False, True)),
               Factor("mode", "mode", ("", "postcopy-after-1", "cancel-retry"))]
    judge = Judge(Context((10, 0), (10, 0), "tcg"))
    gen = generate(factors, 2, judge, SettingsModel(factors))
    for r in gen.rows:
        if r["mode"] == "postcopy-after-1":
            assert r["postcopy-ram"] and r["transport"] == "unix", r
        if r["mode"] == "cancel-retry":
            assert r["transport"] == "unix", r
    assert {r["mode"] for r in gen.rows} == {"", "postcopy-after-1", "cancel-retry"}
    assert any(r["mode"] == "cancel-retry" and r["postcopy-ram"] for r in gen.rows)
