"""The matrix format: precise errors, cell expansion, ids, -k selection."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NoReturn

import pytest

from harness.cell import BuildSpec, Cell
from harness.errors import HarnessError, MatrixError
from harness.failpaths import SCENARIO_IDS, TARGET as FAILPATH_TARGET
from harness.matrix import (
    Matrix,
    load_matrix,
    load_matrix_on,
    override_build,
    select,
    tier_cells,
    unknown_capabilities,
    unknown_parameters,
)
from harness.matrix.plan import dimensions
from harness.migration.transports import KNOWN_TRANSPORTS

REPO = Path(__file__).resolve().parent.parent


def no_binary(spec: BuildSpec) -> NoReturn:
    """The build resolver of these tests: nothing here may need a binary's
    version (explicit cells never do; covering builds declare ``version:``)."""
    raise AssertionError(f"planning asked the binary {spec.binary} for its version")


def cells_of(matrix: Matrix, tier: str, seed: int = 0) -> list[Cell]:
    return tier_cells(matrix, tier, seed, resolve=no_binary)

BASE = """\
version: 1
builds:
  sys: {binary: "/usr/bin/qemu-system-{arch}", required: true}
  new: {prefix: builds/qemu-10.0}
targets:
  t1: {arch: x86_64, machine: q35, build: sys, memory: 256M, workload: {region: 100M}}
  t2: {arch: x86_64, machine: pc, accel: kvm, build: sys}
transports: [unix, tcp]
capsets:
  precopy: {}
  rp: {return-path: true}
paramsets:
  fast: {max-bandwidth: 10G}
tiers:
  smoke:
    cells:
      - {target: t1, transport: unix, capset: precopy, paramset: fast}
"""


def write(tmp_path: Path, text: str, name: str = "matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    hits = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1)
            if needle in line]
    return hits[nth - 1]


def load_error(tmp_path: Path, text: str) -> tuple[MatrixError, str]:
    path = write(tmp_path, text)
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    return info.value, str(path)


def assert_error(tmp_path: Path, text: str, line_needle: str, key: str,
                 reason: str, nth: int = 1) -> None:
    """The error is exactly ``FILE:LINE: key 'KEY': REASON``."""
    err, file = load_error(tmp_path, text)
    line = line_of(text, line_needle, nth)
    assert str(err) == f"{file}:{line}: key '{key}': {reason}"
    assert (err.file, err.line, err.key, err.reason) == (file, line, key, reason)


def with_tiers(tiers: str) -> str:
    """BASE with its tiers section replaced."""
    head = BASE[: BASE.index("tiers:")]
    return head + "tiers:\n" + textwrap.indent(textwrap.dedent(tiers), "  ")


# --- syntax and structure ------------------------------------------------------


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    text = BASE.replace("build: sys, memory: 256M", "build: sys, memroy: 256M")
    assert_error(tmp_path, text, "memroy", "targets.t1.memroy",
                 "unknown key (allowed: arch, machine, accel, accel-options, memory, cpu, smp, "
                 "build, workload, firmware, src-host, dst-host)")


def test_unknown_key_on_its_own_line_in_block_style(tmp_path: Path) -> None:
    text = BASE.replace("  rp: {return-path: true}\n",
                        "  rp:\n    return-path: true\n  xb:\n    xbzrle: true\n") \
        .replace("  fast: {max-bandwidth: 10G}\n",
                 "  fast:\n    max-bandwidth: 10G\n  bad:\n    max_bandwidth: 1G\n")
    assert_error(tmp_path, text, "max_bandwidth", "paramsets.bad.max_bandwidth",
                 "invalid parameter name 'max_bandwidth' (QMP spells it "
                 "'max-bandwidth')")


def test_yaml_syntax_error_has_file_and_line(tmp_path: Path) -> None:
    text = BASE.replace("transports: [unix, tcp]", "transports: [unix, tcp")
    err, file = load_error(tmp_path, text)
    assert err.file == file
    assert err.line == line_of(text, "capsets:")   # where the parser noticed
    assert str(err) == (f"{file}:{err.line}: invalid YAML: while parsing a flow "
                        f"sequence started at line {line_of(text, 'transports:')}, "
                        "expected ',' or ']', but got ':'")


def test_yaml_syntax_error_bad_indentation(tmp_path: Path) -> None:
    text = BASE.replace("  t2: {arch", " t2: {arch")
    err, file = load_error(tmp_path, text)
    assert err.line == line_of(text, "t2: {arch")
    assert "invalid YAML" in err.reason


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = BASE.replace("  t2: {arch: x86_64, machine: pc",
                        "  t1: {arch: x86_64, machine: pc")
    assert_error(tmp_path, text, "t1: {arch", "targets.t1",
                 f"duplicate key (first defined at line {line_of(text, 't1: {arch')})",
                 nth=2)


def test_duplicate_key_inside_flow_mapping(tmp_path: Path) -> None:
    text = BASE.replace("build: sys, memory: 256M", "build: sys, build: new")
    assert_error(tmp_path, text, "build: new", "targets.t1.build",
                 f"duplicate key (first defined at line {line_of(text, 'build: new')})")


def test_empty_file_and_non_mapping_root(tmp_path: Path) -> None:
    err, file = load_error(tmp_path, "# nothing\n")
    assert str(err) == f"{file}:1: the matrix file is empty"
    err, file = load_error(tmp_path, "- a\n- b\n")
    assert str(err) == f"{file}:1: expected a mapping, got a list"


def test_missing_file() -> None:
    with pytest.raises(MatrixError, match="cannot read matrix file /nonexistent/m.yaml"):
        load_matrix("/nonexistent/m.yaml")


def test_version_is_checked_first(tmp_path: Path) -> None:
    text = BASE.replace("version: 1", "version: 2\nnew-section: {}")
    assert_error(tmp_path, text, "version: 2", "version",
                 "unsupported matrix version 2 (this harness reads version 1)")
    text = BASE.replace("version: 1\n", "")
    err, file = load_error(tmp_path, text)
    assert str(err) == (f"{file}:1: key 'version': missing required key "
                        "(this harness reads version 1)")


def test_missing_required_key_points_at_its_mapping(tmp_path: Path) -> None:
    text = BASE.replace("machine: pc, accel: kvm, build: sys", "machine: pc, accel: kvm")
    assert_error(tmp_path, text, "t2: {", "targets.t2.build", "missing required key")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = BASE + "tiers2: {}\n"
    assert_error(tmp_path, text, "tiers2", "tiers2",
                 "unknown key (allowed: version, defaults, builds, targets, "
                 "transports, capsets, paramsets, tiers, known-issues, hosts)")


# --- types -----------------------------------------------------------------------


@pytest.mark.parametrize("old,new,needle,key,reason", [
    ("memory: 256M", "memory: lots", "lots", "targets.t1.memory",
     "expected a size like 256M or 1G, got 'lots'"),
    ("memory: 256M", "memory: [1, 2]", "memory: [1", "targets.t1.memory",
     "expected a size like 256M or 1G, got a list"),
    ("memory: 256M", "memory: 0", "memory: 0", "targets.t1.memory",
     "must be greater than 0"),
    ("machine: pc,", "machine: pc, smp: two,", "smp: two", "targets.t2.smp",
     "expected an integer, got 'two'"),
    ("machine: pc,", "machine: pc, smp: 0,", "smp: 0", "targets.t2.smp",
     "must be at least 1, got 0"),
    ("required: true", "required: maybe", "maybe", "builds.sys.required",
     "expected true or false, got 'maybe'"),
    ("arch: x86_64, machine: q35", "arch: x86_64, machine: {a: 1}", "machine: {a",
     "targets.t1.machine", "expected a string, got a mapping"),
    ("accel: kvm", "accel: yes", "accel: yes", "targets.t2.accel",
     "expected a string, got 'yes' (quote it)"),
    ("rp: {return-path: true}", "rp: {return-path: 1}", "return-path: 1",
     "capsets.rp.return-path", "expected true or false, got '1'"),
    ("fast: {max-bandwidth: 10G}", "fast: {max-bandwidth: fast}", "max-bandwidth: fast",
     "paramsets.fast.max-bandwidth", "expected a size like 256M or 1G, got 'fast'"),
    ("fast: {max-bandwidth: 10G}", "fast: {downtime-limit: 100M}", "downtime-limit",
     "paramsets.fast.downtime-limit",
     "sizes like '100M' are only allowed for byte-count parameters "
     "(avail-switchover-bandwidth, max-bandwidth, max-postcopy-bandwidth, "
     "xbzrle-cache-size)"),
    ("fast: {max-bandwidth: 10G}", "fast: {downtime-limit: [1]}", "downtime-limit",
     "paramsets.fast.downtime-limit",
     "expected an integer, true/false or a string, got a list"),
    ("fast: {max-bandwidth: 10G}", "fast: {Max-Bandwidth: 10G}", "Max-Bandwidth",
     "paramsets.fast.Max-Bandwidth",
     "invalid parameter name 'Max-Bandwidth' (QMP spells it 'max-bandwidth')"),
    ("transports: [unix, tcp]", "transports: [unix, unix]", "transports",
     "transports[1]", "duplicate transport 'unix' (also at line 8)"),
    ("transports: [unix, tcp]", "transports: {unix: 1}", "transports",
     "transports", "expected a list, got a mapping"),
    ("  t1: {arch", "  t 1: {arch", "t 1:", "targets.t 1",
     "invalid target name 't 1': use letters, digits and . _ + -"),
])
def test_wrong_types_name_key_and_expectation(tmp_path: Path, old: str, new: str,
                                              needle: str, key: str, reason: str) -> None:
    assert old in BASE
    assert_error(tmp_path, BASE.replace(old, new, 1), needle, key, reason)


def test_cell_setting_types(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, timeout: 0}
        """)
    assert_error(tmp_path, text, "timeout: 0", "tiers.smoke.cells[0].timeout",
                 "must be greater than 0, got 0")
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, downtime-tolerance-ms: lots}
        """)
    assert_error(tmp_path, text, "lots", "tiers.smoke.cells[0].downtime-tolerance-ms",
                 "expected a number, got 'lots'")
    text = with_tiers("""\
        smoke:
          cells:
            - target: t1
              transport: unix
              expect-fail: {downtime: true}
        """)
    assert_error(tmp_path, text, "expect-fail", "tiers.smoke.cells[0].expect-fail",
                 "expected a list, got a mapping")


def test_workload_must_fit_in_memory(tmp_path: Path) -> None:
    text = BASE.replace("workload: {region: 100M}", "workload: {region: 300M}")
    assert_error(tmp_path, text, "region: 300M", "targets.t1.workload",
                 "workload region 2M+300M does not fit in memory 256M")
    text = BASE.replace("machine: pc, accel: kvm", "machine: pc, accel: kvm, memory: 64M")
    assert_error(tmp_path, text, "memory: 64M", "targets.t2.memory",
                 "workload region 2M+100M does not fit in memory 64M")


def test_build_needs_binary_or_prefix(tmp_path: Path) -> None:
    text = BASE.replace("new: {prefix: builds/qemu-10.0}", "new: {required: false}")
    assert_error(tmp_path, text, "new: {", "builds.new",
                 "a build needs 'binary' (a QEMU executable) or 'prefix' (the root "
                 "of an unpacked QEMU package)")


def test_unknown_placeholder_in_path(tmp_path: Path) -> None:
    text = BASE.replace("qemu-system-{arch}", "qemu-system-{target}")
    assert_error(tmp_path, text, "{target}", "builds.sys.binary",
                 "unknown placeholder {target} (only {arch} is replaced, by the "
                 "target's arch)")


# --- references ------------------------------------------------------------------


def test_unknown_build_in_target(tmp_path: Path) -> None:
    text = BASE.replace("accel: kvm, build: sys", "accel: kvm, build: sytem")
    assert_error(tmp_path, text, "build: sytem", "targets.t2.build",
                 "unknown build 'sytem' (defined: sys, new)")


@pytest.mark.parametrize("cell,key,reason", [
    ("{target: t3, transport: unix}", "target", "unknown target 't3' (defined: t1, t2)"),
    ("{target: t1, transport: rdma}", "transport",
     "unknown transport 'rdma' (defined: unix, tcp)"),
    ("{target: t1, transport: unix, capset: xbzrle}", "capset",
     "unknown capset 'xbzrle' (defined: default, precopy, rp)"),
    ("{target: t1, transport: unix, paramset: slow}", "paramset",
     "unknown paramset 'slow' (defined: default, fast)"),
    ("{target: t1, transport: unix, src-build: old}", "src-build",
     "unknown build 'old' (defined: sys, new)"),
    ("{target: t1, transport: unix, dst-build: old}", "dst-build",
     "unknown build 'old' (defined: sys, new)"),
])
def test_unknown_references_in_cells(tmp_path: Path, cell: str, key: str,
                                     reason: str) -> None:
    text = with_tiers(f"""\
        smoke:
          cells:
            - {{target: t1, transport: unix}}
            - {cell}
        """)
    assert_error(tmp_path, text, cell[:-1], f"tiers.smoke.cells[1].{key}", reason)


def test_unknown_reference_in_product_names_the_list_entry(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          product:
            target: [t1, t2]
            transport:
              - unix
              - tpc
        """)
    assert_error(tmp_path, text, "- tpc", "tiers.smoke.product.transport[1]",
                 "unknown transport 'tpc' (defined: unix, tcp)")


def test_missing_cell_dimension(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, capset: precopy}
        """)
    assert_error(tmp_path, text, "capset: precopy}", "tiers.smoke.cells[0].transport",
                 "missing required key")


def test_unknown_tier_in_include(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
        nightly:
          include: [smoke, smok]
        """)
    assert_error(tmp_path, text, "include:", "tiers.nightly.include[1]",
                 "unknown tier 'smok' (defined: smoke, nightly)")


def test_include_cycle(tmp_path: Path) -> None:
    text = with_tiers("""\
        a:
          include: [b]
        b:
          include: [c]
        c:
          include: [a]
        """)
    assert_error(tmp_path, text, "include: [a]", "tiers.c.include[0]",
                 "include cycle: a -> b -> c -> a")


def test_self_include_is_a_cycle(tmp_path: Path) -> None:
    text = with_tiers("""\
        a:
          include: [a]
          cells:
            - {target: t1, transport: unix}
        """)
    assert_error(tmp_path, text, "include: [a]", "tiers.a.include[0]",
                 "include cycle: a -> a")


def test_covering_keys_are_checked_and_other_strategies_unknown(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          covering: {strength: 2, target: [t1], transport: [unix]}
        """)
    assert_error(tmp_path, text, "covering", "tiers.smoke.covering.strength",
                 "unknown key (allowed: order, target, transport, build, src-build, "
                 "dst-build, capset, capabilities, parameters, paramset, mode, dst-start, "
                 "timeout, downtime-tolerance-ms, expect-fail, repeat)")
    text = with_tiers("""\
        smoke:
          pairwise: {target: [t1]}
        """)
    assert_error(tmp_path, text, "pairwise", "tiers.smoke.pairwise",
                 "unknown key (allowed: description, include, cells, product, "
                 "covering, filter)")


def test_product_refuses_name_and_duplicates(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          product: {target: [t1], transport: [unix], name: x}
        """)
    assert_error(tmp_path, text, "name: x", "tiers.smoke.product.name",
                 "unknown key (allowed: target, transport, capset, paramset, "
                 "src-build, dst-build, mode, dst-start, timeout, downtime-tolerance-ms, "
                 "expect-fail, repeat, src-host, dst-host)")
    text = with_tiers("""\
        smoke:
          product: {target: [t1, t1], transport: [unix]}
        """)
    assert_error(tmp_path, text, "t1, t1", "tiers.smoke.product.target[1]",
                 f"duplicate target 't1' (also at line {line_of(text, 't1, t1')})")


def test_empty_tier_is_an_error(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells: []
        """)
    assert_error(tmp_path, text, "smoke:", "tiers.smoke",
                 "the tier has no cells: give it 'include', 'cells', 'product' or 'covering'")


def test_unknown_tier_in_cells_lists_defined(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, BASE))
    with pytest.raises(MatrixError) as info:
        cells_of(matrix, "nightly")
    assert str(info.value) == f"unknown tier 'nightly' in {matrix.path} (defined: smoke)"


# --- ids and duplicates ------------------------------------------------------------


def test_duplicate_id_in_tier_names_both_lines(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, capset: precopy}
            - {target: t2, transport: unix}
            - {target: t1, transport: unix, capset: precopy, timeout: 5}
        """)
    first = line_of(text, "capset: precopy}")
    assert_error(tmp_path, text, "timeout: 5", "tiers.smoke.cells[2]",
                 f"duplicate cell id 't1-unix-precopy' (also declared at line {first}); "
                 "give one of them a 'name:'")


def test_duplicate_id_between_product_and_cell(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          product: {target: [t1, t2], transport: [unix, tcp]}
          cells:
            - {target: t2, transport: tcp}
        """)
    assert_error(tmp_path, text, "- {target: t2", "tiers.smoke.cells[0]",
                 f"duplicate cell id 't2-tcp-default' (also declared at line "
                 f"{line_of(text, 'product:')}); give one of them a 'name:'")


def test_name_resolves_a_duplicate(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
            - {target: t1, transport: unix, timeout: 5, name: t1-unix-quick}
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    assert [c.id for c in cells] == ["t1-unix-default", "t1-unix-quick"]
    assert cells[1].timeout == 5.0


def test_same_id_for_different_cells_across_tiers(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
        slow:
          cells:
            - {target: t1, transport: unix, timeout: 600}
        """)
    path = write(tmp_path, text)
    assert_error(tmp_path, text, "timeout: 600", "tiers.slow.cells[0]",
                 f"cell id 't1-unix-default' already names a different cell at "
                 f"{path}:{line_of(text, '- {target: t1, transport: unix}')}; give "
                 "one of them a 'name:'")


def test_explicit_default_build_is_the_same_cell(tmp_path: Path) -> None:
    """Naming the target's own build explicitly gives the same id and cell."""
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, capset: precopy}
            - {target: t1, transport: unix, capset: precopy, dst-build: sys}
        """)
    err, _ = load_error(tmp_path, text)
    assert "duplicate cell id 't1-unix-precopy'" in err.reason


def test_id_formats(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, capset: precopy}
            - {target: t1, transport: tcp, capset: rp, paramset: fast}
            - {target: t1, transport: unix, capset: precopy, src-build: sys, dst-build: new}
            - {target: t1, transport: unix, capset: precopy, src-build: new, dst-build: new}
            - {target: t2, transport: tcp, name: my-own-id}
            - {target: t2, transport: tcp}
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    assert [c.id for c in cells] == [
        "t1-unix-precopy",
        "t1-tcp-rp-fast",
        "t1-unix-precopy-sys-to-new",
        "t1-unix-precopy-new",
        "my-own-id",
        "t2-tcp-default",
    ]
    assert cells[2].src_build.name == "sys" and cells[2].dst_build.name == "new"


def test_mode_and_fault_in_ids_and_cells(tmp_path: Path) -> None:
    text = BASE.replace("  rp: {return-path: true}",
                        "  rp: {return-path: true}\n  pc: {postcopy-ram: true}\n"
                        "  vu: {validate-uuid: true}")
    text = text[: text.index("tiers:")] + textwrap.dedent("""\
        tiers:
          smoke:
            cells:
              - {target: t1, transport: unix, capset: pc, mode: postcopy-after-3}
              - {target: t1, transport: unix, capset: precopy, mode: cancel-retry}
              - {target: t1, transport: unix, capset: precopy, mode: precopy}
              - {target: t1, transport: unix, capset: vu, fault: dst-uuid-differs,
                 expect-fail: [converged]}
            product: {target: [t1], transport: [tcp], capset: [precopy],
                      mode: [precopy, cancel-retry]}
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    assert [(c.id, c.mode, c.fault) for c in cells] == [
        ("t1-unix-pc-postcopy-after-3", "postcopy-after-3", ""),
        ("t1-unix-precopy-cancel-retry", "cancel-retry", ""),
        ("t1-unix-precopy", "", ""),
        ("t1-unix-vu-dst-uuid-differs", "", "dst-uuid-differs"),
        ("t1-tcp-precopy", "", ""),
        ("t1-tcp-precopy-cancel-retry", "cancel-retry", ""),
    ]


@pytest.mark.parametrize("cell,needle,key,reason", [
    ("{target: t1, transport: unix, mode: sideways}", "sideways", "tiers.smoke.cells[0].mode",
     "unknown mode 'sideways' (modes: precopy, postcopy-after-N, cancel-retry)"),
    ("{target: t1, transport: unix, capset: precopy, mode: postcopy-after-1}",
     "postcopy-after-1", "tiers.smoke.cells[0].mode",
     "mode 'postcopy-after-1' needs capability postcopy-ram in the cell's capset"),
    ("{target: t1, transport: unix, fault: gremlins}", "gremlins",
     "tiers.smoke.cells[0].fault",
     "unknown fault 'gremlins' (faults: dst-uuid-differs, dst-no-switchover-ack)"),
])
def test_mode_and_fault_errors(tmp_path: Path, cell: str, needle: str, key: str,
                               reason: str) -> None:
    text = with_tiers(f"""\
        smoke:
          cells:
            - {cell}
        """)
    assert_error(tmp_path, text, needle, key, reason)


def test_ids_and_seeds_are_stable(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    a = cells_of(load_matrix(path), "smoke")
    b = cells_of(load_matrix(path), "smoke")
    assert a == b
    assert [c.seed for c in a] == [c.seed for c in b]
    assert a[0].origin == f"{path}:{line_of(BASE, '- {target: t1')}"


# --- expansion -------------------------------------------------------------------


def test_product_expands_in_order(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          product:
            target: [t1, t2]
            transport: [unix, tcp]
            capset: [precopy, rp]
            paramset: fast
            timeout: 30
            expect-fail: [ram]
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    assert [c.id for c in cells] == [
        f"{t}-{tr}-{c}-fast" for t in ("t1", "t2") for tr in ("unix", "tcp")
        for c in ("precopy", "rp")]
    assert all(c.timeout == 30.0 and c.expect_fail == ("ram",) for c in cells)
    assert len({c.id for c in cells}) == 8


def test_product_list_and_cross_builds(tmp_path: Path) -> None:
    text = with_tiers("""\
        cross:
          product:
            - {target: t1, transport: unix, src-build: [sys, new], dst-build: [sys, new]}
            - {target: t2, transport: tcp}
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "cross")
    assert [c.id for c in cells] == [
        "t1-unix-default", "t1-unix-default-sys-to-new",
        "t1-unix-default-new-to-sys", "t1-unix-default-new", "t2-tcp-default"]


def test_declaration_order_include_first_and_dedup(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
        kvm:
          cells:
            - {target: t2, transport: unix}
            - {target: t1, transport: unix}
        nightly:
          description: everything
          cells:
            - {target: t2, transport: tcp, capset: rp}
          product: {target: [t1], transport: [tcp]}
          include: [smoke, kvm]
        """)
    matrix = load_matrix(write(tmp_path, text))
    cells = cells_of(matrix, "nightly")
    assert [c.id for c in cells] == [
        "t1-unix-default", "t2-unix-default", "t2-tcp-rp", "t1-tcp-default"]
    assert [c.tier for c in cells] == ["smoke", "kvm", "nightly", "nightly"]
    assert matrix.tiers["nightly"].description == "everything"
    assert matrix.tiers["nightly"].include == ("smoke", "kvm")


def test_own_cell_identical_to_included_is_deduplicated(tmp_path: Path) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
        nightly:
          include: [smoke]
          product: {target: [t1, t2], transport: unix}
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "nightly")
    assert [(c.id, c.tier) for c in cells] == [
        ("t1-unix-default", "smoke"), ("t2-unix-default", "nightly")]


def test_capabilities_and_parameters_merge_over_defaults(tmp_path: Path) -> None:
    text = BASE.replace("builds:", """\
defaults:
  timeout: 42
  downtime-tolerance-ms: 10.5
  capabilities: {events: true, xbzrle: true}
  parameters: {max-bandwidth: 1G, downtime-limit: 300}
builds:""", 1).replace("rp: {return-path: true}", "rp: {return-path: true, xbzrle: false}") \
        .replace("fast: {max-bandwidth: 10G}",
                 "fast: {max-bandwidth: 10G, xbzrle-cache-size: 64M, tls-creds: tls0, "
                 "block-incremental: false}")
    text = text.replace(
        "- {target: t1, transport: unix, capset: precopy, paramset: fast}",
        "- {target: t1, transport: unix, capset: rp, paramset: fast}\n"
        "      - {target: t1, transport: tcp, timeout: 7, downtime-tolerance-ms: 0}")
    a, b = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    assert a.capabilities == (("events", True), ("return-path", True), ("xbzrle", False))
    assert a.parameters == (("block-incremental", False), ("downtime-limit", 300),
                            ("max-bandwidth", 10 << 30), ("tls-creds", "tls0"),
                            ("xbzrle-cache-size", 64 << 20))
    assert (a.timeout, a.downtime_tolerance_ms) == (42.0, 10.5)
    assert b.capabilities == (("events", True), ("xbzrle", True))
    assert b.parameters == (("downtime-limit", 300), ("max-bandwidth", 1 << 30))
    assert (b.timeout, b.downtime_tolerance_ms) == (7.0, 0.0)


def test_transport_parameters_lie_between_defaults_and_paramsets(tmp_path: Path) -> None:
    """defaults.transport-parameters: a transport's own parameters, over
    ``parameters`` and under a paramset, in explicit and covering cells alike."""
    text = SCENARIO_BASE.replace("builds:", """\
defaults:
  parameters: {max-bandwidth: 1G, downtime-limit: 300}
  transport-parameters:
    exec: {downtime-limit: 1000}
builds:""", 1).replace("transports: [unix, tcp]", "transports: [unix, exec]") \
        .replace("fast: {max-bandwidth: 10G}", "fast: {downtime-limit: 50}")
    text = text[: text.index("tiers:")] + "tiers:\n" + textwrap.indent(textwrap.dedent("""\
        smoke:
          cells:
            - {target: t1, transport: exec}
            - {target: t1, transport: unix}
            - {target: t1, transport: exec, paramset: fast, name: exec-fast}
          covering: {target: [t1], transport: [unix, exec], capabilities: [validate-uuid]}
        """), "  ")
    cells = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    limits = {c.id: dict(c.parameters)["downtime-limit"] for c in cells}
    assert limits["t1-exec-default"] == 1000
    assert limits["t1-unix-default"] == 300
    assert limits["exec-fast"] == 50, "a paramset still says last"
    cov = {c.transport: dict(c.parameters) for c in cells if "-cov-" in c.id}
    assert cov == {"exec": {"downtime-limit": 1000, "max-bandwidth": 1 << 30},
                   "unix": {"downtime-limit": 300, "max-bandwidth": 1 << 30}}


def test_transport_parameters_name_known_transports(tmp_path: Path) -> None:
    text = BASE.replace("builds:", """\
defaults:
  transport-parameters:
    pipe: {downtime-limit: 1000}
builds:""", 1)
    assert_error(tmp_path, text, "pipe:", "defaults.transport-parameters.pipe",
                 "unknown transport 'pipe' (QEMU's are: " + ", ".join(KNOWN_TRANSPORTS) + ")")
    text = BASE.replace("builds:", """\
defaults:
  transport-parameters:
    exec: {downtime_limit: 1000}
builds:""", 1)
    err, _ = load_error(tmp_path, text)
    assert err.key == "defaults.transport-parameters.exec.downtime_limit"
    assert err.line == line_of(text, "downtime_limit")


def test_target_fields_and_workload(tmp_path: Path) -> None:
    text = BASE.replace(
        "workload: {region: 100M}",
        "cpu: 'qemu64,-kvmclock', smp: 2, workload: {kind: dirtier, base: 4M, "
        "region: 64M, warmup-passes: 0}")
    matrix = load_matrix(write(tmp_path, text))
    t1 = matrix.targets["t1"]
    assert (t1.arch, t1.machine, t1.accel, t1.memory, t1.cpu, t1.smp) == (
        "x86_64", "q35", "tcg", 256 << 20, "qemu64,-kvmclock", 2)
    assert (t1.workload.kind, t1.workload.region_base, t1.workload.region_size,
            t1.workload.warmup_passes) == ("dirtier", 4 << 20, 64 << 20, 0)
    assert matrix.target_builds == {"t1": "sys", "t2": "sys"}


def test_accel_options_reach_the_command_line_and_keep_old_seeds(tmp_path: Path) -> None:
    plain = load_matrix(write(tmp_path, BASE)).tiers
    text = BASE.replace("accel: kvm, build: sys}",
                        "accel: kvm, accel-options: {dirty-ring-size: 4096}, build: sys}")
    t2 = load_matrix(write(tmp_path, text)).targets["t2"]
    assert t2.accel_options == (("dirty-ring-size", "4096"),)
    assert plain  # the matrix without the key still loads
    from harness.cell import Cell, BuildSpec, TargetSpec
    b = BuildSpec("b", "/bin/true")
    base = Cell(id="c", target=TargetSpec("t"), src_build=b, dst_build=b)
    ring = Cell(id="c", target=TargetSpec("t", accel_options=(("dirty-ring-size", "4096"),)),
                src_build=b, dst_build=b)
    # A cell without accel options keeps the seed it had before the field existed.
    assert "accel_options" not in base.fingerprint()
    assert base.seed != ring.seed


@pytest.mark.parametrize("opts,needle,key,reason", [
    ("{Dirty: 1}", "Dirty", "targets.t2.accel-options.Dirty",
     "invalid accelerator property name 'Dirty'"),
    ("{dirty-ring-size: 'a,b'}", "a,b", "targets.t2.accel-options.dirty-ring-size",
     "accelerator property 'dirty-ring-size' must not contain ','"),
    ("[1]", "accel-options", "targets.t2.accel-options", "expected a mapping, got a list"),
])
def test_accel_options_errors(tmp_path: Path, opts: str, needle: str, key: str,
                              reason: str) -> None:
    text = BASE.replace("accel: kvm, build: sys}", f"accel: kvm, accel-options: {opts}, "
                        "build: sys}")
    assert_error(tmp_path, text, needle, key, reason)


def test_merge_keys_share_target_settings(tmp_path: Path) -> None:
    text = BASE.replace(
        "  t2: {arch: x86_64, machine: pc, accel: kvm, build: sys}",
        "  base: &base {arch: x86_64, machine: q35, build: sys, memory: 512M}\n"
        "  t2:\n    <<: *base\n    machine: pc")
    t2 = load_matrix(write(tmp_path, text)).targets["t2"]
    assert (t2.machine, t2.memory) == ("pc", 512 << 20)


# --- builds and paths --------------------------------------------------------------


def test_build_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMU_TREE", "/opt/qemu")
    monkeypatch.setenv("HOME", "/home/porter")
    text = BASE.replace("  new: {prefix: builds/qemu-10.0}\n", """\
  new: {prefix: builds/qemu-10.0}
  home: {prefix: ~/q, required: false}
  env: {binary: $QEMU_TREE/build/qemu-system-e2k, data-dirs: [pc-bios, /abs],
        env: {LD_LIBRARY_PATH: $QEMU_TREE/lib, N: 3}, extra-args: [-audio, none]}
  rel: {binary: ../bin/qemu}
""")
    builds = load_matrix(write(tmp_path, text)).builds
    assert builds["sys"].binary == "/usr/bin/qemu-system-{arch}"
    assert builds["sys"].required is True
    prefix = tmp_path / "builds" / "qemu-10.0"
    assert builds["new"].binary == f"{prefix}/usr/bin/qemu-system-{{arch}}"
    assert builds["new"].data_dirs == (f"{prefix}/usr/share/qemu",
                                       f"{prefix}/usr/share/seabios",
                                       f"{prefix}/usr/lib/ipxe/qemu")
    assert builds["new"].required is False
    assert builds["home"].binary == "/home/porter/q/usr/bin/qemu-system-{arch}"
    assert builds["env"].binary == "/opt/qemu/build/qemu-system-e2k"
    assert builds["env"].data_dirs == (str(tmp_path / "pc-bios"), "/abs")
    assert builds["env"].env == (("LD_LIBRARY_PATH", "/opt/qemu/lib"), ("N", "3"))
    assert builds["env"].extra_args == ("-audio", "none")
    assert builds["rel"].binary == str(tmp_path.parent / "bin" / "qemu")


def test_cells_get_arch_substituted(tmp_path: Path) -> None:
    text = BASE.replace("  t2: {arch: x86_64,", "  t2: {arch: aarch64,")
    text = text.replace("- {target: t1, transport: unix, capset: precopy, paramset: fast}",
                        "- {target: t2, transport: unix, dst-build: new}")
    matrix = load_matrix(write(tmp_path, text))
    (cell,) = cells_of(matrix, "smoke")
    assert cell.src_build.binary == "/usr/bin/qemu-system-aarch64"
    assert cell.dst_build.binary.endswith("/qemu-10.0/usr/bin/qemu-system-aarch64")
    assert [b.binary for b in matrix.build_specs()] == [
        "/usr/bin/qemu-system-aarch64", cell.dst_build.binary]


def test_override_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = with_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, src-build: sys, dst-build: new}
            - {target: t2, transport: tcp}
        """)
    matrix = load_matrix(write(tmp_path, text))
    cells = cells_of(matrix, "smoke")
    monkeypatch.chdir(tmp_path)
    for result in (override_build(cells, "my/qemu"),
                   cells_of(override_build(matrix, "my/qemu"), "smoke")):
        assert [c.id for c in result] == [c.id for c in cells]
        for cell in result:
            assert cell.src_build == cell.dst_build
            assert cell.src_build.name == cell.src_build.binary == str(tmp_path / "my/qemu")
            assert cell.src_build.required
    assert cells_of(matrix, "smoke") == cells   # the original is untouched
    assert override_build(matrix, "/q").build_specs()[0].binary == "/q"


def test_load_matrix_on_refuses_a_missing_binary_naming_the_option(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(HarnessError, match="^--mharness-qemu /nowhere/qemu: no such executable$"):
        load_matrix_on(path, "/nowhere/qemu", "--mharness-qemu")
    exe = tmp_path / "qemu"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (cell,) = cells_of(load_matrix_on(path, str(exe)), "smoke")
    assert cell.src_build.binary == cell.dst_build.binary == str(exe)
    assert cells_of(load_matrix_on(path, None), "smoke") == cells_of(load_matrix(path), "smoke")


def test_override_build_looks_up_bare_names(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "qemu-system-x86_64"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    cells = cells_of(load_matrix(write(tmp_path, BASE)), "smoke")
    (cell,) = override_build(cells, "qemu-system-x86_64")
    assert cell.src_build.binary == str(exe)


def test_unknown_capabilities_and_parameters(tmp_path: Path) -> None:
    text = BASE.replace("rp: {return-path: true}", "rp: {return-path: true, compress: false}")
    text = text.replace("capset: precopy, paramset: fast", "capset: rp, paramset: fast")
    (cell,) = cells_of(load_matrix(write(tmp_path, text)), "smoke")
    assert unknown_capabilities(cell, {"return-path", "events"}) == ["compress"]
    assert unknown_capabilities(cell, {"return-path", "compress"}) == []
    assert unknown_parameters(cell, {"downtime-limit"}) == ["max-bandwidth"]


# --- -k selection ------------------------------------------------------------------


def _cells(*ids: str) -> list[Cell]:
    from harness.cell import BuildSpec, TargetSpec
    build = BuildSpec("b", "/b")
    return [Cell(id=i, target=TargetSpec("t"), src_build=build, dst_build=build)
            for i in ids]


IDS = ("x86_64-q35-tcg-unix-precopy", "x86_64-q35-tcg-tcp-precopy",
       "x86_64-pc-kvm-unix-precopy", "x86_64-pc-kvm-tcp-xbzrle-fast",
       "x86_64-q35-tcg-unix-precopy-system-to-debian-10.0")


@pytest.mark.parametrize("expr,expected", [
    ("", IDS),
    ("   ", IDS),
    ("tcg", (IDS[0], IDS[1], IDS[4])),
    ("TCG", (IDS[0], IDS[1], IDS[4])),            # case-insensitive, like pytest
    ("unix and kvm", (IDS[2],)),
    ("kvm or debian", (IDS[2], IDS[3], IDS[4])),
    ("not unix", (IDS[1], IDS[3])),
    ("not not unix", (IDS[0], IDS[2], IDS[4])),
    ("tcg and not debian", (IDS[0], IDS[1])),
    ("tcp or unix and kvm", (IDS[1], IDS[2], IDS[3])),   # and binds tighter
    ("(tcp or unix) and kvm", (IDS[2], IDS[3])),
    ("not (tcg or xbzrle)", (IDS[2],)),
    ("debian-10.0", (IDS[4],)),
    ("x86_64-pc", (IDS[2], IDS[3])),
    ("nothing", ()),
])
def test_select(expr: str, expected: tuple[str, ...]) -> None:
    assert tuple(c.id for c in select(_cells(*IDS), expr)) == expected


@pytest.mark.parametrize("expr,column", [
    ("tcg and", 8),
    ("(tcg or kvm", 12),
    ("tcg)", 4),
    ("or tcg", 1),
    ("tcg kvm", 5),
    ("not", 4),
    ("()", 2),
])
def test_select_syntax_errors(expr: str, column: int) -> None:
    with pytest.raises(MatrixError, match=rf"bad -k expression .* at column {column}$"):
        select(_cells(*IDS), expr)


# --- the project's matrix.yaml -------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> Matrix:
    return load_matrix(REPO / "matrix.yaml")


def test_project_matrix_loads_with_unique_ids(project: Matrix) -> None:
    for tier in project.tiers:
        ids = [c.id for c in cells_of(project, tier)]
        assert ids and len(ids) == len({i.lower() for i in ids}), tier
    assert project.builds["system"].required
    assert not project.builds["debian-10.0"].required


def test_project_smoke_tier_covers_the_basics(project: Matrix) -> None:
    # Its failure paths: test_project_failure_paths_run_in_tiers.
    cells = [c for c in cells_of(project, "smoke") if not c.scenario]
    assert len(cells) >= 8
    assert {c.transport for c in cells} >= {"unix", "tcp"}
    assert {c.target.accel for c in cells} >= {"tcg", "kvm"}
    assert {c.target.machine for c in cells} >= {"q35", "pc"}
    kvm = [c for c in cells if c.target.accel == "kvm"]
    assert 1 <= len(kvm) <= 3, "KVM boots slowly here: keep KVM cells few"
    for cell in cells:
        params = dict(cell.parameters)
        caps = dict(cell.capabilities)
        # precopy never converges against the dirtier at the default bandwidth
        assert params.get("max-bandwidth", 0) >= 1 << 30, cell.id
        assert caps.get("events") is True, cell.id
        assert not cell.expect_fail, cell.id
        if cell.target.accel == "kvm":
            assert "-kvmclock" in (cell.target.cpu or ""), cell.id
    assert any(dict(c.parameters).get("downtime-limit", 300) != 300
               and dict(c.parameters).get("max-bandwidth", 128 << 20) != 128 << 20
               for c in cells)


def test_project_controls_have_a_downtime_negative_control(project: Matrix) -> None:
    controls = cells_of(project, "controls")
    assert controls and all(c.expect_fail for c in controls)
    (neg,) = [c for c in controls if c.expect_fail == ("downtime",)]
    assert dict(neg.parameters)["downtime-limit"] == 1
    assert neg.downtime_tolerance_ms == 0
    assert neg.target.workload.region_size <= 4 << 20


def test_project_cross_version_pins_the_machine(project: Matrix) -> None:
    for cell in cells_of(project, "cross-version"):
        assert cell.src_build.name != cell.dst_build.name
        assert cell.target.machine not in ("q35", "pc")


# --- YAML corner cases -----------------------------------------------------------------


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("transports: [unix, tcp]", "transports: &t [unix, *t]")
    err, file = load_error(tmp_path, text)
    assert str(err) == (f"{file}:{line_of(text, 'transports:')}: key 'transports[1]': "
                        "recursive YAML alias")


def test_merge_must_name_a_mapping(tmp_path: Path) -> None:
    text = BASE.replace("  t2: {arch: x86_64,", "  t2: {<<: [1], arch: x86_64,")
    assert_error(tmp_path, text, "<<", "targets.t2",
                 "'<<' must merge a mapping or a list of mappings")


def test_unknown_yaml_tag(tmp_path: Path) -> None:
    text = BASE.replace("memory: 256M", "memory: !size 256M")
    err, file = load_error(tmp_path, text)
    assert err.line == line_of(text, "!size")
    assert "could not determine a constructor for the tag '!size'" in err.reason


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert str(info.value) == f"{path}:2: file is not valid UTF-8"


# --- failure-path scenario cells -------------------------------------------------

#: BASE with declared versions on ``sys`` only: ``new`` is labelled by its name.
SCENARIO_BASE = BASE.replace('required: true}', 'required: true, version: "7.2"}')


def with_scenario_tiers(tiers: str) -> str:
    head = SCENARIO_BASE[: SCENARIO_BASE.index("tiers:")]
    return head + "tiers:\n" + textwrap.indent(textwrap.dedent(tiers), "  ")


def test_scenario_cells_ids_order_and_shape(tmp_path: Path) -> None:
    text = with_scenario_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
            - {scenario: cancel-in-active, build: sys}
            - {scenarios: [uuid-mismatch, postcopy-recover], builds: [sys, new]}
            - {target: t2, transport: tcp}
        """)
    path = write(tmp_path, text)
    cells = cells_of(load_matrix(path), "smoke")
    # Explicit cells first, then the scenario cells, each scenario on each build.
    assert [c.id for c in cells] == [
        "t1-unix-default", "t2-tcp-default",
        "failpath-cancel-in-active-qemu-7.2",
        "failpath-uuid-mismatch-qemu-7.2", "failpath-uuid-mismatch-new",
        "failpath-postcopy-recover-qemu-7.2", "failpath-postcopy-recover-new"]
    migration, scenario = cells[0], cells[2]
    assert migration.kind == "migration" and not migration.scenario
    assert scenario.kind == "scenario" and scenario.scenario == "cancel-in-active"
    assert scenario.target == FAILPATH_TARGET
    assert scenario.src_build == scenario.dst_build
    assert scenario.src_build.binary == "/usr/bin/qemu-system-x86_64" and \
        scenario.src_build.required
    assert cells[4].src_build.name == "new" and not cells[4].src_build.required
    assert scenario.transport == "" and scenario.capabilities == () and \
        scenario.parameters == () and not scenario.expect_fail
    assert scenario.tier == "smoke"
    assert scenario.origin == f"{path}:{line_of(text, 'cancel-in-active')}"
    assert cells[3].origin == f"{path}:{line_of(text, 'uuid-mismatch')}"
    inputs = scenario.inputs()
    assert inputs["kind"] == "scenario" and inputs["scenario"] == "cancel-in-active"
    assert inputs["src_build"] == inputs["dst_build"] == "sys"
    assert "transport" not in inputs and "capabilities" not in inputs
    assert migration.inputs()["kind"] == "migration"
    assert dimensions(scenario) == {"kind": "scenario", "scenario": "cancel-in-active",
                                    "target": FAILPATH_TARGET.name, "src_build": "sys",
                                    "dst_build": "sys"}
    # Stable, and different per scenario and per build.
    again = cells_of(load_matrix(path), "smoke")
    assert [c.seed for c in again] == [c.seed for c in cells]
    assert len({c.seed for c in cells}) == len(cells)


def test_scenarios_all_is_every_registered_scenario(tmp_path: Path) -> None:
    text = with_scenario_tiers("""\
        failpaths:
          cells:
            - {scenarios: all, builds: [sys, new]}
        """)
    cells = cells_of(load_matrix(write(tmp_path, text)), "failpaths")
    assert [c.id for c in cells] == [f"failpath-{sid}-{label}" for sid in SCENARIO_IDS
                                     for label in ("qemu-7.2", "new")]


def test_scenario_cells_select_shard_and_include(tmp_path: Path) -> None:
    text = with_scenario_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix}
            - {scenario: cancel-in-active, build: sys}
        failpaths:
          cells:
            - {scenarios: [cancel-in-active, cancel-in-setup], builds: [sys]}
        nightly:
          include: [smoke, failpaths]
        """)
    matrix = load_matrix(write(tmp_path, text))
    nightly = cells_of(matrix, "nightly")
    # The same scenario on the same build in two tiers is one cell.
    assert [c.id for c in nightly] == ["t1-unix-default", "failpath-cancel-in-active-qemu-7.2",
                                       "failpath-cancel-in-setup-qemu-7.2"]
    assert [c.id for c in select(nightly, "failpath and not setup")] == \
        ["failpath-cancel-in-active-qemu-7.2"]
    assert [c.id for c in select(nightly, "not failpath")] == ["t1-unix-default"]


def test_scenario_cells_follow_override_build(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    text = with_scenario_tiers("""\
        smoke:
          cells:
            - {scenarios: [cancel-in-active], builds: [sys, new]}
        """)
    matrix = load_matrix(write(tmp_path, text))
    monkeypatch.chdir(tmp_path)
    cells = cells_of(override_build(matrix, "my/qemu"), "smoke")
    assert [c.id for c in cells] == ["failpath-cancel-in-active-qemu-7.2",
                                     "failpath-cancel-in-active-new"]
    assert all(c.src_build.binary == c.dst_build.binary == str(tmp_path / "my/qemu")
               and c.scenario == "cancel-in-active" for c in cells)


def test_migration_cells_keep_their_fingerprint() -> None:
    """``scenario`` is left out of a migration cell's fingerprint, so every
    existing cell keeps its seed."""
    cell = Cell(id="c", target=FAILPATH_TARGET, src_build=BuildSpec("b", "/q"),
                dst_build=BuildSpec("b", "/q"))
    assert '"scenario"' not in cell.fingerprint()
    assert cell.seed == 2578904866   # as before scenario cells existed


@pytest.mark.parametrize("entry,needle,key,reason", [
    ("{scenario: cancel-in-actve, build: sys}", "cancel-in-actve", "scenario",
     "unknown scenario 'cancel-in-actve' (known: " + ", ".join(SCENARIO_IDS) + ")"),
    ("{scenarios: [cancel-in-active, nope], builds: [sys]}", "nope", "scenarios[1]",
     "unknown scenario 'nope' (known: " + ", ".join(SCENARIO_IDS) + ")"),
    ("{scenario: cancel-in-active, build: old}", "build: old", "build",
     "unknown build 'old' (defined: sys, new)"),
    ("{scenarios: all, builds: [sys, old]}", "builds: [sys, old]", "builds[1]",
     "unknown build 'old' (defined: sys, new)"),
    ("{scenario: cancel-in-active}", "{scenario: cancel-in-active}", "build",
     "missing required key: a scenario runs on the build named by 'build' (or on each "
     "of 'builds')"),
    ("{scenario: cancel-in-active, scenarios: all, build: sys}", "scenarios: all", "scenarios",
     "give either 'scenario' or 'scenarios', not both"),
    ("{scenario: cancel-in-active, build: sys, builds: [new]}", "builds: [new]", "builds",
     "give either 'build' or 'builds', not both"),
    ("{scenario: all, build: sys}", "scenario: all", "scenario",
     "'all' goes in 'scenarios', not 'scenario'"),
    ("{scenario: [cancel-in-active, cancel-in-setup], build: sys}", "cancel-in-setup",
     "scenario", "expected one scenario id (a list goes in 'scenarios')"),
    ("{scenario: cancel-in-active, build: [sys, new]}", "build: [sys, new]", "build",
     "expected one build name (a list goes in 'builds')"),
    ("{scenario: cancel-in-active, build: sys, target: t1}", "sys, target: t1", "target",
     "unknown key (allowed: scenario, scenarios, build, builds)"),
    ("{scenarios: [cancel-in-active, cancel-in-active], builds: [sys]}", "cancel-in-active]",
     "scenarios[1]", "duplicate scenario 'cancel-in-active' (also at line {line})"),
])
def test_scenario_entry_errors(tmp_path: Path, entry: str, needle: str, key: str,
                               reason: str) -> None:
    text = with_scenario_tiers(f"""\
        smoke:
          cells:
            - {{target: t1, transport: unix}}
            - {entry}
        """)
    line = line_of(text, needle)
    assert_error(tmp_path, text, needle, f"tiers.smoke.cells[1].{key}",
                 reason.format(line=line))


def test_scenario_duplicates_name_both_lines(tmp_path: Path) -> None:
    text = with_scenario_tiers("""\
        smoke:
          cells:
            - {scenario: cancel-in-active, build: sys}
            - {scenarios: [cancel-in-setup, cancel-in-active], builds: [sys]}
        """)
    assert_error(tmp_path, text, "cancel-in-setup", "tiers.smoke.cells[1]",
                 f"scenario 'cancel-in-active' on build 'sys' is already declared at line "
                 f"{line_of(text, '- {scenario: cancel-in-active')}")
    # Two builds that declare one version make the same label: say so.
    same = SCENARIO_BASE.replace("new: {prefix: builds/qemu-10.0}",
                                 'new: {prefix: builds/qemu-10.0, version: "7.2"}')
    same = same[: same.index("tiers:")] + "tiers:\n" + textwrap.indent(textwrap.dedent("""\
        smoke:
          cells:
            - {scenarios: [cancel-in-active], builds: [sys, new]}
        """), "  ")
    err, _ = load_error(tmp_path, same)
    assert err.reason == ("duplicate cell id 'failpath-cancel-in-active-qemu-7.2' (also "
                          f"declared at line {line_of(same, 'builds: [sys, new]')}): builds "
                          "'sys' and 'new' are both labelled 'qemu-7.2' (their declared "
                          "version)")


def test_scenario_cell_ids_are_one_cell_across_tiers(tmp_path: Path) -> None:
    """The id rule holds across tiers: a migration cell named like a
    scenario cell is refused."""
    text = with_scenario_tiers("""\
        smoke:
          cells:
            - {target: t1, transport: unix, name: failpath-cancel-in-active-qemu-7.2}
        failpaths:
          cells:
            - {scenario: cancel-in-active, build: sys}
        """)
    path = write(tmp_path, text)
    assert_error(tmp_path, text, "- {scenario: cancel-in-active", "tiers.failpaths.cells[0]",
                 "cell id 'failpath-cancel-in-active-qemu-7.2' already names a different "
                 f"cell at {path}:{line_of(text, 'name: failpath')}")


def test_project_failure_paths_run_in_tiers(project: Matrix) -> None:
    """Every scenario on both Debian builds in failpaths, nightly and release
    (the ids testcases/test_failure_paths.py reports); smoke has a few."""
    want = [f"failpath-{sid}-{label}" for sid in SCENARIO_IDS
            for label in ("qemu-7.2", "qemu-10.0")]
    failpaths = cells_of(project, "failpaths")
    assert [c.id for c in failpaths] == want
    assert all(c.scenario and c.src_build.name in ("system", "debian-10.0") for c in failpaths)
    for tier in ("nightly", "release"):
        ids = [c.id for c in cells_of(project, tier) if c.scenario]
        assert sorted(ids) == sorted(want), tier
    smoke = [c for c in cells_of(project, "smoke") if c.scenario]
    assert 2 <= len(smoke) <= 6
    assert {c.src_build.name for c in smoke} == {"system"}
    assert {c.id for c in smoke} <= set(want)
