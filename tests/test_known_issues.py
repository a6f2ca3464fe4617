"""Known issues, repeated cells and the exit status of a run (issue #18,
items 2, 3, 4 and 8), without QEMU: the judge on hand-made checks, the
matrix section's errors, the runner on stand-in cells, and the porter's
summary on a recorded e2k run (tests/data/e2k-run/results.json: the
README's qemu-e2k 6.0.91 run, judged with matrix.yaml's known issues).
"""
from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import cli
from harness.cell import BuildSpec, Cell, TargetSpec
from harness.errors import MatrixError
from harness.known_issues import (KnownIssue, VersionSpec, apply_known_issues, combine_runs,
                                  known_failure_summary)
from harness.logs import CELL_LOG
from harness.matrix import load_matrix, tier_cells
from harness.report.console import summary, table
from harness.report.files import read_results_json, write_junit, write_results_json
from harness.report.porter import porter_summary
from harness.results import (ERROR, FAILED, KNOWN_FAILURE, PASSED, SKIPPED, CellResult,
                             CheckResult, RunState, judge)
from harness.run import cellrun, runner
from harness.run.runner import EXIT_NOTHING_RAN, exit_status, nothing_ran

REPO = Path(__file__).resolve().parent.parent
E2K_RUN = REPO / "tests" / "data" / "e2k-run" / "results.json"

V72 = {"source": {"name": "system", "version": "7.2.22"},
       "destination": {"name": "system", "version": "7.2.22"}}


def issue(kid: str = "cpu", checks: tuple[str, ...] = ("cpu-state",), versions: str = "",
          intermittent: bool = False) -> KnownIssue:
    return KnownIssue(id=kid, title=f"{kid} is broken", checks=checks, reference="why",
                      versions=VersionSpec.parse(versions) if versions else VersionSpec(),
                      intermittent=intermittent)


def ran(*failing: str, builds: dict = V72, names: tuple[str, ...] = ("ram", "cpu-state",
                                                                      "liveness")) -> CellResult:
    """A cell whose checks ``failing`` failed, judged as the flow judges it."""
    checks = [CheckResult(n, n not in failing, f"{n} {'bad' if n in failing else 'ok'}")
              for n in names]
    r = CellResult(id="c", verdict=PASSED, checks=checks, builds=json.loads(json.dumps(builds)))
    r.verdict, r.reason = judge(checks)
    return r


# --- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, version, expected", [
    ("6.0", (6, 0, 91), True), ("6.0", (6, 1, 0), False), ("7.2.22", (7, 2, 22), True),
    ("7.2.22", (7, 2, 21), False), (">=7.2", (10, 0, 2), True), (">=7.2, <9.0", (9, 0, 0), False),
    (">=7.2, <9.0", (8, 2, 1), True), ("!=8.2.1", (8, 2, 1), False), ("<8", (7, 2, 22), True),
])
def test_version_spec(spec: str, version: tuple[int, ...], expected: bool) -> None:
    assert VersionSpec.parse(spec).matches(version) is expected


@pytest.mark.parametrize("bad", ["", "seven", ">=7.2,", "~7.2", "7.x"])
def test_version_spec_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="bad version clause"):
        VersionSpec.parse(bad)


# --- judging one run ------------------------------------------------------------------------


def test_failing_only_known_checks_is_a_known_failure() -> None:
    r = apply_known_issues(ran("cpu-state", "liveness"),
                           [issue(checks=("cpu-state", "liveness"), versions="7.2")])
    assert r.verdict == KNOWN_FAILURE
    assert r.reason == ("cpu-state: cpu-state bad [known issue cpu]; "
                        "liveness: liveness bad [known issue cpu]")
    assert [c.known_issue for c in r.checks] == [None, "cpu", "cpu"]
    assert r.known_issues[0]["id"] == "cpu" and r.known_issues[0]["reproduced"]
    assert not r.notes


def test_a_known_issue_that_no_longer_reproduces_passes_with_a_note() -> None:
    r = apply_known_issues(ran(), [issue()])
    assert r.verdict == PASSED and r.reason == ""
    assert r.notes == ["known issue cpu did not reproduce: remove it?"]
    assert r.known_issues[0]["reproduced"] is False


def test_an_intermittent_issue_not_reproducing_is_expected() -> None:
    r = apply_known_issues(ran(), [issue(intermittent=True)])
    assert r.verdict == PASSED
    assert r.notes == ["intermittent known issue cpu did not reproduce in this run"]


def test_another_failing_check_fails_the_cell_and_marks_the_known_one() -> None:
    r = apply_known_issues(ran("ram", "cpu-state"), [issue()])
    assert r.verdict == FAILED
    assert r.reason == "ram: ram bad; cpu-state: cpu-state bad [known issue cpu]"


def test_versions_are_matched_on_the_builds_the_cell_ran_on() -> None:
    other = {"source": {"name": "x", "version": "10.0.2"},
             "destination": {"name": "x", "version": "10.0.2"}}
    r = apply_known_issues(ran("cpu-state", builds=other), [issue(versions="7.2")])
    assert r.verdict == FAILED and r.known_issues == [] and not r.notes
    # Either side counts: a cross-version cell with one affected build.
    cross = {"source": {"version": "10.0.2"}, "destination": {"version": "7.2.22"}}
    r = apply_known_issues(ran("cpu-state", builds=cross), [issue(versions="7.2")])
    assert r.verdict == KNOWN_FAILURE


def test_only_verdicts_that_came_from_the_checks_are_judged_again() -> None:
    early = ran("cpu-state")
    early.verdict, early.reason = FAILED, "unexpected run states after migration"
    assert apply_known_issues(early, [issue()]).verdict == FAILED
    for verdict in (SKIPPED, ERROR):
        r = CellResult(id="c", verdict=verdict, reason="why", builds=V72)
        assert apply_known_issues(r, [issue()]).verdict == verdict


def test_a_negative_control_that_passed_is_not_a_known_issue() -> None:
    r = ran()
    r.checks[1].expected_to_fail = True            # cpu-state declared expect-fail, passed
    r.verdict, r.reason = judge(r.checks)
    r = apply_known_issues(r, [issue()])
    assert r.verdict == FAILED and "negative control passed" in r.reason


# --- repeated runs --------------------------------------------------------------------------


def runs(*failing: tuple[str, ...], issues: list[KnownIssue]) -> list[CellResult]:
    return [apply_known_issues(ran(*f), issues) for f in failing]


def test_repeat_all_passed() -> None:
    ki = issue(intermittent=True)
    out = combine_runs(runs((), (), (), issues=[ki]), "cells/c", [ki])
    assert out.verdict == PASSED and out.reason == ""
    assert out.notes == ["intermittent known issue cpu did not reproduce in 3 runs"]
    assert out.figures["repeat"] == {"runs": 3, "failed": 0, "failed_runs": [],
                                     "verdicts": ["passed"] * 3}


def test_repeat_intermittent_failures_are_counted_known_failures() -> None:
    ki = issue(intermittent=True)
    out = combine_runs(runs((), ("cpu-state",), (), ("cpu-state",), (), issues=[ki]),
                       "cells/c", [ki])
    assert out.verdict == KNOWN_FAILURE
    assert out.reason.startswith("2 of 5 runs failed, each in known issues (cpu, intermittent): "
                                 "run 2: known-failure: cpu-state: cpu-state bad [known issue cpu]")
    assert [r["run"] for r in out.runs] == [1, 2, 3, 4, 5]
    assert [r["verdict"] for r in out.runs] == ["passed", "known-failure", "passed",
                                                 "known-failure", "passed"]
    assert out.known_issues[0]["reproduced_in_runs"] == [2, 4]
    # The cell shows its first failing run's evidence.
    assert out.check("cpu-state").known_issue == "cpu"


def test_repeat_a_steady_issue_that_comes_and_goes_is_a_failure() -> None:
    ki = issue(intermittent=False)
    out = combine_runs(runs(("cpu-state",), (), issues=[ki]), "cells/c", [ki])
    assert out.verdict == FAILED
    assert "known issue cpu is not declared intermittent but reproduced in 1 of 2 runs" \
        in out.reason


def test_repeat_a_steady_issue_in_every_run_is_a_known_failure() -> None:
    ki = issue()
    out = combine_runs(runs(("cpu-state",), ("cpu-state",), issues=[ki]), "cells/c", [ki])
    assert out.verdict == KNOWN_FAILURE and out.reason.startswith("2 of 2 runs failed")


def test_repeat_any_unexplained_failure_fails_the_cell() -> None:
    ki = issue(intermittent=True)
    out = combine_runs(runs(("cpu-state",), ("ram",), issues=[ki]), "cells/c", [ki])
    assert out.verdict == FAILED and out.reason.startswith("2 of 2 runs failed: run 1: "
                                                           "known-failure")


# --- the runner: repeat, logs, exit status --------------------------------------------------


def stand_in(cell_id: str, repeat: int = 1, known: tuple[KnownIssue, ...] = ()) -> Cell:
    build = BuildSpec(name="b", binary="/bin/true")
    return Cell(id=cell_id, target=TargetSpec(name="t", memory=1 << 20), src_build=build,
                dst_build=build, repeat=repeat, known_issues=known)


def test_a_repeated_cell_runs_n_times_each_in_its_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the runner (serial; the worker path calls the same run_logged):
    every run has its folder and harness.log; passed runs' folders go, the
    failing runs' evidence stays."""
    count = {"n": 0}

    def fake_run_cell(c: Cell, logdir: Path, progress=None, inject=None) -> CellResult:
        count["n"] += 1
        cellrun.log.info("run %d of %s", count["n"], c.id)
        (logdir / "src.stderr").write_text("evidence\n")
        r = ran(*(("cpu-state",) if count["n"] in (2, 3) else ()))
        r.logdir, r.inputs = str(logdir), c.inputs()
        return r

    monkeypatch.setattr(cellrun, "run_cell", fake_run_cell)
    ki = issue(intermittent=True)
    state = runner.run_cells([stand_in("c", repeat=4, known=(ki,))], tmp_path)
    (r,) = state.results
    assert count["n"] == 4 and r.verdict == KNOWN_FAILURE
    assert r.reason.startswith("2 of 4 runs failed")
    folder = runner.cell_logdir(tmp_path, "c")
    assert r.logdir == str(folder)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["run-2", "run-3"]
    assert "run 2 of c" in (folder / "run-2" / CELL_LOG).read_text()
    assert all(f"run {i} of c" in (folder / CELL_LOG).read_text() for i in range(1, 5))
    data = json.loads((tmp_path / "results.json").read_text())["cells"][0]
    assert [x["logdir"] is None for x in data["runs"]] == [True, False, False, True]
    assert data["runs"][1]["checks"][1]["known_issue"] == "cpu"
    assert data["inputs"]["repeat"] == 4 and data["inputs"]["known_issues"] == ["cpu"]
    assert exit_status(state) == 0 and exit_status(state, strict=True) == 1


def test_a_skipped_first_run_skips_the_cell(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def skip(c: Cell, logdir: Path, progress=None, inject=None) -> CellResult:
        calls.append(logdir)
        return CellResult(id=c.id, verdict=SKIPPED, reason="source build 'b' is e2k, cell "
                          "needs x86_64", logdir=str(logdir))

    monkeypatch.setattr(cellrun, "run_cell", skip)
    r = cellrun.run_logged(stand_in("c", repeat=3), tmp_path / "c")
    assert len(calls) == 1 and r.verdict == SKIPPED and r.logdir == str(tmp_path / "c")


def state_of(*verdicts: str, reasons: tuple[str, ...] = (), **meta: str) -> RunState:
    st = RunState(results_dir=Path("/nonexistent"), total=len(verdicts), meta=dict(meta))
    st.results = [CellResult(id=f"c{i}", verdict=v,
                             reason=reasons[i] if i < len(reasons) else "")
                  for i, v in enumerate(verdicts)]
    return st


def test_exit_status() -> None:
    assert exit_status(state_of(PASSED, KNOWN_FAILURE, SKIPPED)) == 0
    assert exit_status(state_of(PASSED, KNOWN_FAILURE), strict=True) == 1
    assert exit_status(state_of(PASSED, SKIPPED), strict=True) == 0
    assert exit_status(state_of(KNOWN_FAILURE, FAILED)) == 1
    assert exit_status(state_of(SKIPPED, SKIPPED)) == EXIT_NOTHING_RAN == 5
    assert exit_status(state_of()) == 5
    st = state_of(SKIPPED)
    st.interrupted = True
    assert exit_status(st) == 130


def test_nothing_ran_says_why_in_one_line() -> None:
    why = "source build '/usr/bin/qemu-system-e2k' is e2k, cell needs x86_64"
    assert nothing_ran(state_of(*[SKIPPED] * 8, reasons=(why,) * 8)) == \
        f"all 8 cells skipped: {why}"
    assert nothing_ran(state_of(SKIPPED, SKIPPED, SKIPPED, reasons=("a", "b", "b"))) == \
        "all 3 cells skipped: b (2 cells); a"
    assert nothing_ran(state_of(SKIPPED, reasons=("a",))) == "the only cell was skipped: a"
    assert nothing_ran(state_of(tier="smoke", select="nothing")) == \
        "no cell selected (tier smoke, select nothing)"
    assert nothing_ran(state_of(SKIPPED, PASSED)) is None


def test_cli_report_strict_and_nothing_ran(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    st = state_of(PASSED, KNOWN_FAILURE)
    st.results_dir = tmp_path
    assert cli._report(st, tmp_path) == 0
    assert cli._report(st, tmp_path, strict=True) == 1
    assert "--strict: known failures fail the run" in capsys.readouterr().err
    st = state_of(SKIPPED, SKIPPED, reasons=("source build 'e2k' unavailable: not found",) * 2)
    assert cli._report(st, tmp_path) == 5
    err = capsys.readouterr().err
    assert "nothing ran: all 2 cells skipped: source build 'e2k' unavailable: not found (exit 5)" \
        in err
    assert cli.parser().parse_args(["run", "--strict"]).strict


# --- reports --------------------------------------------------------------------------------


def test_reports_name_the_known_failure(tmp_path: Path) -> None:
    ki = KnownIssue(id="e2k-cpu-vmstate", title="e2k: CPU state not migrated",
                    checks=("cpu-state",), reference="why")
    r = apply_known_issues(ran("cpu-state"), [ki])
    st = RunState(results_dir=tmp_path, total=4)
    st.results = [CellResult(id=f"p{i}", verdict=PASSED) for i in range(3)] + [r]
    line = summary(st)
    assert line.startswith("3 passed, 1 known failure (e2k: CPU state not migrated, "
                           "known-issue e2k-cpu-vmstate), 0 failed, 0 error, 0 skipped in ")
    assert "KNOWN-FAIL" in table(st.results)
    write_results_json(st)
    back = read_results_json(tmp_path / "results.json")[-1]
    assert back.verdict == KNOWN_FAILURE and back.check("cpu-state").known_issue == ki.id
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["counts"] == {"passed": 3, "known-failure": 1}
    write_junit(st)
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "1")
    case = suite.find("testcase[@name='c']")
    skipped = case.find("skipped")
    assert skipped.get("type") == "known-failure"
    assert skipped.get("message").startswith("known failure: cpu-state: cpu-state bad")
    assert case.find("properties/property").get("value") == "e2k-cpu-vmstate"


# --- the matrix -----------------------------------------------------------------------------

BASE = """\
version: 1
builds:
  sys: {binary: "/usr/bin/qemu-system-{arch}", required: true}
  e2k: {binary: /opt/qemu-system-e2k}
targets:
  t1: {arch: x86_64, machine: q35, build: sys}
  e2k-a: {arch: e2k, machine: e2k, build: e2k, workload: {kind: pattern, base: 64M, region: 16M}}
transports: [unix]
tiers:
  smoke:
    cells:
      - {target: t1, transport: unix}
      - {target: e2k-a, transport: unix, repeat: 2}
known-issues:
"""


def load(tmp_path: Path, known: str, base: str = BASE):
    path = tmp_path / "m.yaml"
    path.write_text(base + textwrap.indent(textwrap.dedent(known), "  "))
    return load_matrix(path), path


GOOD = """\
    e2k-cpu:
      title: "e2k: CPU state not migrated"
      build: {name: e2k, versions: "6.0"}
      targets: [e2k-*]
      checks: [cpu-state, liveness]
      reference: target/e2k/cpu.c registers no VMState
    flaky-ram:
      title: ram sometimes differs
      build: sys
      cells: [t1-unix-default]
      checks: [ram]
      intermittent: true
      reference: a race
"""


def test_known_issues_attach_to_the_cells_they_name(tmp_path: Path) -> None:
    matrix, _ = load(tmp_path, GOOD)
    cells = {c.id: c for c in tier_cells(matrix, "smoke", resolve=lambda s: None)}
    e2k = cells["e2k-a-unix-default"]
    assert [k.id for k in e2k.known_issues] == ["e2k-cpu"] and e2k.repeat == 2
    assert e2k.known_issues[0].versions.matches((6, 0, 91))
    assert [k.id for k in cells["t1-unix-default"].known_issues] == ["flaky-ram"]
    assert cells["t1-unix-default"].known_issues[0].intermittent
    assert cells["t1-unix-default"].repeat == 1


def test_repeat_and_known_issues_leave_seeds_alone(tmp_path: Path) -> None:
    matrix, _ = load(tmp_path, GOOD)
    bare, _ = load(tmp_path, "", BASE.replace(", repeat: 2", "").replace("known-issues:\n", ""))
    seeds = {c.id: c.seed for c in bare.expanded["smoke"]}
    assert {c.id: c.seed for c in matrix.expanded["smoke"]} == seeds


@pytest.mark.parametrize("known, needle, key, reason", [
    ("""\
    x:
      title: t
      build: sys
      checks: [ram]
      reference: r
      cell: [t1*]
    """, "cell: [t1*]", "known-issues.x.cell",
     "unknown key (allowed: title, build, cells, targets, checks, intermittent, reference)"),
    ("""\
    x: {title: t, build: sys, reference: r}
    """, "x: {", "known-issues.x.checks", "missing required key"),
    ("""\
    x: {title: t, build: nope, checks: [ram], reference: r}
    """, "x: {", "known-issues.x.build", "unknown build 'nope' (defined: sys, e2k)"),
    ("""\
    x: {title: t, build: {versions: "6.x"}, checks: [ram], reference: r}
    """, "x: {", "known-issues.x.build.versions",
     "bad version clause '6.x' in '6.x': expected e.g. \"6.0\", \">=7.2\" or \">=7.2, <9.0\""),
    ("""\
    x: {title: t, build: {}, checks: [ram], reference: r}
    """, "x: {", "known-issues.x.build", "give the build's 'name', its 'versions', or both"),
    ("""\
    x: {title: t, build: sys, targets: [arm-*], checks: [ram], reference: r}
    """, "x: {", "known-issues.x.targets[0]", "'arm-*' matches no target (defined: t1, e2k-a)"),
    ("""\
    x: {title: t, build: sys, cells: [t1-unix-typo], checks: [ram], reference: r}
    """, "x: {", "known-issues.x.cells[0]",
     "no cell has the id 't1-unix-typo' (a covering-array cell is named when its tier is "
     "planned: match it with a glob such as 't1-unix-typo*')"),
    ("""\
    x: {title: t, build: sys, checks: [ram], reference: r, intermittent: sometimes}
    """, "x: {", "known-issues.x.intermittent", "expected true or false, got 'sometimes'"),
    ("""\
    x: {title: "", build: sys, checks: [ram], reference: r}
    """, "x: {", "known-issues.x.title", "expected some text, got an empty string"),
    ("""\
    x: {title: t, build: sys, checks: [], reference: r}
    """, "x: {", "known-issues.x.checks", "expected at least one value"),
    ("""\
    bad id: {title: t, build: sys, checks: [ram], reference: r}
    """, "bad id", "known-issues.bad id",
     "invalid known issue id 'bad id': use letters, digits and . _ + -"),
])
def test_known_issue_errors_name_file_line_and_key(tmp_path: Path, known: str, needle: str,
                                                   key: str, reason: str) -> None:
    with pytest.raises(MatrixError) as info:
        load(tmp_path, known)
    text = BASE + textwrap.indent(textwrap.dedent(known), "  ")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)
    assert str(info.value) == f"{tmp_path / 'm.yaml'}:{line}: key '{key}': {reason}"


@pytest.mark.parametrize("value, reason", [
    ("0", "must be at least 1, got 0"), ("101", "must be at most 100, got 101"),
    ("two", "expected an integer, got 'two'"),
])
def test_repeat_errors(tmp_path: Path, value: str, reason: str) -> None:
    base = BASE.replace("repeat: 2", f"repeat: {value}").replace("known-issues:\n", "")
    with pytest.raises(MatrixError) as info:
        load(tmp_path, "", base)
    line = next(i for i, ln in enumerate(base.splitlines(), 1) if "repeat:" in ln)
    assert str(info.value) == (f"{tmp_path / 'm.yaml'}:{line}: key 'tiers.smoke.cells[1]."
                               f"repeat': {reason}")


# --- the project's matrix: the e2k tier and the dirty-ring cells ----------------------------


@pytest.fixture(scope="module")
def project():
    return load_matrix(REPO / "matrix.yaml")


def test_the_e2k_tier_judges_against_the_contract(project) -> None:
    cells = project.expanded["e2k"]
    assert len(cells) == 4 and not any(c.expect_fail for c in cells)
    by_id = {c.id: {k.id for k in c.known_issues} for c in cells}
    assert by_id["e2k-tcg-dirtier-unix-precopy"] == {"e2k-cpu-vmstate", "e2k-devices-vmstate"}
    assert by_id["e2k-tcg-pattern-paused-unix-precopy"] == {"e2k-devices-vmstate"}
    ki = {k.id: k for k in project.known_issues}
    assert ki["e2k-cpu-vmstate"].versions.matches((6, 0, 91))
    assert not ki["e2k-cpu-vmstate"].versions.matches((7, 2, 22))


def test_expect_fail_is_only_for_what_the_harness_sets_up(project) -> None:
    """No cell of a porter's or host-defect tier is a negative control."""
    for tier in ("e2k", "dirty-ring"):
        assert not any(c.expect_fail for c in project.expanded[tier]), tier


def test_the_dirty_ring_cells_are_counted(project) -> None:
    cells = project.expanded["dirty-ring"]
    assert cells and all(c.repeat == 3 for c in cells)
    assert all("kvm-dirty-ring-stale-pages" in {k.id for k in c.known_issues} for c in cells)
    (stale,) = [k for k in project.known_issues if k.id == "kvm-dirty-ring-stale-pages"]
    assert stale.intermittent and set(stale.checks) == {"ram", "guest"}
    nightly = {c.id: c for c in project.expanded["nightly"]}
    assert all(nightly[c.id].repeat == 3 for c in cells)


# --- the porter's summary, from a recorded e2k run ------------------------------------------


@pytest.fixture(scope="module")
def e2k_run() -> list[CellResult]:
    return read_results_json(E2K_RUN)


def test_recorded_e2k_run_is_what_the_matrix_says_today(e2k_run, project) -> None:
    """Judged again from its checks with today's matrix: the same verdicts."""
    known = {c.id: c.known_issues for c in project.expanded["e2k"]}
    for r in e2k_run:
        fresh = CellResult(id=r.id, verdict=PASSED, checks=[
            CheckResult(c.name, c.passed, c.summary, c.figures) for c in r.checks],
            builds=r.builds)
        fresh.verdict, fresh.reason = judge(fresh.checks)
        assert fresh.verdict == FAILED   # against the contract, every e2k cell fails ...
        fresh = apply_known_issues(fresh, known[r.id])
        assert (fresh.verdict, fresh.reason) == (r.verdict, r.reason)   # ... in known ways
        assert fresh.verdict == KNOWN_FAILURE


def test_a_build_that_migrates_cpu_state_passes_with_a_note(e2k_run, project) -> None:
    known = {c.id: c.known_issues for c in project.expanded["e2k"]}
    (dirtier,) = [r for r in e2k_run if r.id == "e2k-tcg-dirtier-unix-precopy"]
    fixed = [CheckResult(c.name, c.name in ("cpu-state", "liveness") or c.passed, c.summary)
             for c in dirtier.checks]
    r = CellResult(id=dirtier.id, verdict=PASSED, checks=fixed, builds=dirtier.builds)
    r.verdict, r.reason = judge(fixed)
    r = apply_known_issues(r, known[dirtier.id])
    assert r.verdict == KNOWN_FAILURE and "cpu-state" not in r.reason   # devices still
    assert r.notes == ["known issue e2k-cpu-vmstate did not reproduce: remove it?"]


def test_porters_summary(e2k_run) -> None:
    text = porter_summary(e2k_run)
    lines = text.splitlines()
    assert lines[0] == ("Porter's summary: e2k on build '/home/porter/qemu-e2k/build/"
                        "qemu-system-e2k' (QEMU 6.0.91), 4 cells ran (4 known-failure)")
    assert lines[1:7] == [
        "  migrated:",
        "    RAM: identical in 4 of 4 cells (128 MiB identical)",
        "    pattern intact in 3 of 3 cells",
        "    guest invariant held in 1 of 1 cells",
        "    devices with VMState (2 of 8): iohub-pcihost, mc146818rtc",
        "    CPU state identical in e2k-tcg-pattern-paused-unix-precopy (146 registers identical "
        "on 1 vCPU(s); the CPU never ran), e2k-tcg-pattern-paused-exec-precopy (146 registers "
        "identical on 1 vCPU(s); the CPU never ran)",
    ]
    assert lines[7:10] == [
        "  not migrated:",
        "    devices without VMState (5 of 8): e8c CPU, apic, iohub, iohub-pcibridge, escc-pci",
        "    sections absent from the saved stream (e2k-tcg-pattern-paused-exec-precopy): "
        "e8c CPU (cpu_common only), apic, iohub, iohub-pcibridge, escc-pci",
    ]
    assert ("    CPU registers (e2k-tcg-pattern-unix-precopy): not migrated, 4 of 146 differ: "
            "ip 00000001008e0000 -> 0000000100000000, ctpr1 8000000100000001 -> "
            "0000000000000000, psr 74 -> 01, upsr 0083 -> 0081") in lines
    assert any(ln.startswith("    CPU registers (e2k-tcg-dirtier-unix-precopy): not migrated, "
                             "8 of 146 differ: ip 00000001000000e0 -> 0000000100000000, g0 ")
               and ln.endswith(" and 2 more") for ln in lines)
    assert ("    guest after cont (e2k-tcg-dirtier-unix-precopy): guest restarted on the "
            "destination (boots counter 1 -> 2, passes 405 -> 410): CPU state not migrated") \
        in lines
    assert "  known issues:" in lines
    assert "    e2k-devices-vmstate (e2k: devices without VMState): reproduced in 4 cells" in lines
    assert "    e2k-cpu-vmstate (e2k: CPU state not migrated): reproduced in 2 cells" in lines
    assert known_failure_summary(e2k_run) == (
        "4 known failures (e2k: devices without VMState, known-issue e2k-devices-vmstate; "
        "e2k: CPU state not migrated, known-issue e2k-cpu-vmstate)")


def test_no_porters_summary_for_x86_or_skipped_cells(e2k_run) -> None:
    x86 = CellResult(id="x", verdict=PASSED, inputs={"target": {"arch": "x86_64"}})
    skipped = CellResult(id="e", verdict=SKIPPED, inputs={"target": {"arch": "e2k"}})
    assert porter_summary([x86, skipped]) == ""
