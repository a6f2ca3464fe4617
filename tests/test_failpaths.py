"""Unit tests of the failure scenarios' catalogue, verdicts and registry (no QEMU)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.cell import BuildSpec, Cell
from harness.qemu.build import MachineType, QemuBuild
from harness.results import SKIPPED
from harness.scenarios import SCENARIOS, get, run_scenario
from harness.scenarios.postcopy import RECOVERED
from harness.scenarios.catalogue import CHECKED_ON, ERRORS, Expect
from harness.scenarios.verdicts import judge_error, judge_running, judge_sequence, judge_state

#: Texts QEMU 7.2.22 (Debian) and 10.0.2 (bookworm-backports) gave here.
OBSERVED = {
    "tcp-refused": ["Failed to connect to '127.0.0.1:43249': Connection refused"],
    "unix-missing": ["Failed to connect to '/dev/shm/mharness-x/no-such.sock': "
                     "No such file or directory"],
    "uuid-mismatch": ["qemu-system-x86_64: UUID received is 6f1a3c52-7d0e-4b8a-9c11-2e5f4a6b7c8d"
                      " and local is 0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"],
    "uuid-unset-warning": ["qemu-system-x86_64: warning: UUID is received "
                           "6f1a3c52-7d0e-4b8a-9c11-2e5f4a6b7c8d, but local uuid isn't set"],
    "ram-size": ["qemu-system-x86_64: Size mismatch: ram0: 0x8000000 != 0x10000000: "
                 "Invalid argument"],
    "machine-type": ["qemu-system-x86_64: Machine type received is 'pc-q35-7.2' and local is "
                     "'pc-i440fx-7.2'",
                     "qemu-system-x86_64: Machine type received is 'pc-q35-10.0' and local is "
                     "'pc-i440fx-10.0'"],
    "caps-while-active": ["There's a migration process in progress"],
    "migrate-while-active": ["There's a migration process in progress"],
    "migrate-from-inmigrate": ["Guest is waiting for an incoming migration"],
    "migrate-from-postmigrate": ["Can't migrate the vm that was paused due to previous "
                                 "migration"],
    "postcopy-disabled": ["Enable postcopy with migrate_set_capability before the start of "
                          "migration"],
    "incoming-twice": ["The incoming migration has already been started"],
    "migrate-bad-scheme": ["Parameter 'uri' expects a valid migration protocol",   # 7.2
                           "unknown migration protocol: bogus:1234"],              # 10.0
    "incoming-bad-scheme": ["unknown migration protocol: bogus:1234"],
}
#: Errors that share a text on purpose (the same QEMU message, other commands).
SAME_TEXT = [{"caps-while-active", "migrate-while-active"},
             {"migrate-bad-scheme", "incoming-bad-scheme"}]


def test_every_error_has_observed_texts() -> None:
    assert set(OBSERVED) == set(ERRORS)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_pattern_matches_observed_and_cites_source(name: str) -> None:
    expect = ERRORS[name]
    assert "/" in expect.source or ".c" in expect.source
    for text in OBSERVED[name]:
        assert expect.matches(text), (name, text)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_pattern_rejects_other_errors(name: str) -> None:
    """A pattern that matched any error would pass on the wrong failure."""
    expect = ERRORS[name]
    for other, texts in OBSERVED.items():
        if other == name or {name, other} in SAME_TEXT:
            continue
        for text in texts:
            assert not expect.matches(text), (name, other, text)


def test_judge_error() -> None:
    e = Expect("GenericError", r"in progress", "x.c f")
    assert judge_error("n", e, "GenericError", "There's a migration process in progress").passed
    assert not judge_error("n", e, None, None).passed
    assert not judge_error("n", e, "CommandNotFound", "in progress").passed
    assert not judge_error("n", e, "GenericError", "something else").passed
    # No class expected (an error-desc or a stderr line): any class is fine.
    assert judge_error("n", Expect(None, r"refused", "y.c"), None, "Connection refused").passed


def test_judge_state() -> None:
    assert judge_state("s", "failed", "failed", ["setup", "failed"]).passed
    bad = judge_state("s", "completed", "failed", ["setup", "active", "completed"])
    assert not bad.passed and "completed" in bad.summary
    assert not judge_state("s", None, "cancelled", []).passed


def test_judge_running() -> None:
    assert judge_running("running", 10, 13, 2, 0.1).passed
    stopped = judge_running("paused", 10, 10, 2, 0.0)
    assert not stopped.passed and "paused" in stopped.summary
    assert not judge_running("postmigrate", 10, 20, 2, 0.1).passed
    stalled = judge_running("running", 10, 11, 2, 10.0)
    assert not stalled.passed and "stalled" in stalled.summary


def test_judge_sequence() -> None:
    want = ["a", "b", "c"]
    assert judge_sequence("x", ["z", "a", "y", "b", "c"], want).passed
    missing = judge_sequence("x", ["a", "c"], want)
    assert not missing.passed and "b" in missing.summary
    assert not judge_sequence("x", ["b", "a", "c"], want).passed


def test_recovery_sequence_check_fails() -> None:
    """The recovered-states check of postcopy-recover fails on a run that
    paused and never recovered, and on states out of order."""
    assert judge_sequence("x", ["active", *RECOVERED], RECOVERED).passed
    unrecovered = judge_sequence("x", ["active", "postcopy-active", "postcopy-paused"],
                                 RECOVERED)
    assert not unrecovered.passed and "postcopy-recover" in unrecovered.summary
    assert not judge_sequence("x", ["postcopy-active", "completed", "postcopy-paused",
                                    "postcopy-recover", "postcopy-active"], RECOVERED).passed


def test_every_error_names_checked_versions() -> None:
    for name, expect in ERRORS.items():
        assert expect.versions and set(expect.versions) <= set(CHECKED_ON), name


# -- the registry ---------------------------------------------------------------

#: The ids tests and results use: changing one breaks history and test ids.
STABLE_IDS = [
    "bad-destination-tcp-refused", "bad-destination-unix-missing", "destination-killed",
    "cancel-in-setup", "cancel-in-active", "cancel-in-pre-switchover",
    "uuid-mismatch", "uuid-source-only", "uuid-destination-only", "ram-size-mismatch",
    "machine-type-mismatch",
    "refused-while-active", "postcopy-without-capability", "destination-refusals",
    "unknown-uri-scheme",
    "postcopy-recover", "postcopy-break-unrecovered",
]


def test_registry_ids_are_stable() -> None:
    assert list(SCENARIOS) == STABLE_IDS


def test_scenarios_describe_themselves() -> None:
    for sid, sc in SCENARIOS.items():
        assert sc.id == sid
        assert sc.description and "\n" not in sc.description and len(sc.description) <= 100, sid
        assert sc.doc, sid
        assert sc.theme in {"destination", "cancel", "mismatch", "refusals", "postcopy"}, sid
        info = sc.describe()
        assert info["id"] == sid and info["versions"] == ">= 7.2"
    assert get("cancel-in-active") is SCENARIOS["cancel-in-active"]
    with pytest.raises(KeyError, match="known: bad-destination"):
        get("no-such-scenario")


def _build(**kw) -> QemuBuild:
    args = dict(spec=BuildSpec(name="b", binary="/opt/qemu-system-x86_64"), version=(7, 2, 22),
                arch="x86_64",
                capabilities=("events", "return-path", "postcopy-ram", "validate-uuid",
                              "pause-before-switchover"),
                machines={"pc-q35-7.2": MachineType("pc-q35-7.2", alias="q35"),
                          "pc-i440fx-7.2": MachineType("pc-i440fx-7.2", alias="pc")})
    args.update(kw)
    return QemuBuild(**args)


def test_applies_to_says_why_not() -> None:
    recover, tcp = SCENARIOS["postcopy-recover"], SCENARIOS["bad-destination-tcp-refused"]
    assert recover.applies_to(_build()) is None
    assert "missing" in recover.applies_to(_build(missing="no binary"))
    assert "x86_64" in recover.applies_to(_build(arch="aarch64"))
    assert "7.1" in recover.applies_to(_build(version=(7, 1, 0)))
    assert "postcopy-ram" in recover.applies_to(_build(capabilities=("events",)))
    assert tcp.applies_to(_build(capabilities=("events",))) is None
    q35_only = {"pc-q35-7.2": MachineType("pc-q35-7.2", alias="q35")}
    assert "pc" in SCENARIOS["machine-type-mismatch"].applies_to(_build(machines=q35_only))
    assert tcp.applies_to(_build(machines=q35_only)) is None


def test_run_skips_with_reason_where_it_does_not_apply(tmp_path: Path) -> None:
    result = run_scenario("postcopy-recover", _build(capabilities=("events",)), tmp_path)
    assert result.verdict == SKIPPED and "postcopy-ram" in result.reason
    assert result.id == "failpath-postcopy-recover-b"
    assert result.inputs["theme"] == "postcopy"
    named = run_scenario("postcopy-recover", _build(missing="gone"), tmp_path, "failpath-x")
    assert named.id == "failpath-x" and named.verdict == SKIPPED


# -- scenarios as matrix cells ----------------------------------------------------

def test_failpaths_ids_are_the_registry() -> None:
    """The matrix validates tiers against harness.failpaths (no QEMU code
    imported); the registry must be exactly that list, in that order."""
    from harness.failpaths import SCENARIO_IDS

    assert list(SCENARIO_IDS) == list(SCENARIOS) == STABLE_IDS


def _scenario_cell(scenario_id: str = "cancel-in-active", **spec) -> Cell:
    from harness.failpaths import scenario_cell

    build = BuildSpec(**{"name": "b", "binary": "/opt/qemu-system-x86_64", **spec})
    return scenario_cell(scenario_id, build, "qemu-7.2", tier="failpaths", origin="m.yaml:3")


def test_scenario_cell_needs_its_rigs_qemus() -> None:
    from harness.failpaths import TARGET
    from harness.run.runner import Budget, cell_needs, fits

    cell = _scenario_cell()
    assert cell.id == SCENARIOS["cancel-in-active"].result_id("qemu-7.2") == \
        "failpath-cancel-in-active-qemu-7.2"
    # One running guest; the source and two destinations' RAM at once.
    assert cell_needs(cell) == (1.0, 3 * TARGET.memory)
    # ram-size-mismatch's first destination has 256 MiB.
    assert cell_needs(_scenario_cell("ram-size-mismatch")) == (1.0, 512 * 2 ** 20)
    budget = Budget(cpus=2.0, memory=5 * TARGET.memory)
    assert fits(cell, [], budget) and not fits(cell, [cell], budget)
    assert fits(cell, [cell], Budget(cpus=2.0, memory=6 * TARGET.memory))


def test_run_scenario_cell_missing_builds(tmp_path: Path) -> None:
    from harness.results import ERROR
    from harness.scenarios.cells import run_scenario_cell

    optional = run_scenario_cell(_scenario_cell(binary="/nonexistent/qemu"), tmp_path / "a")
    assert optional.verdict == SKIPPED and "missing" in optional.reason
    assert optional.id == "failpath-cancel-in-active-qemu-7.2"
    assert optional.inputs["kind"] == "scenario" and optional.inputs["tier"] == "failpaths"
    # Never a green nightly on a machine without the required QEMU.
    required = run_scenario_cell(_scenario_cell(binary="/nonexistent/qemu", required=True),
                                 tmp_path / "b")
    assert required.verdict == ERROR and "required build 'b' is missing" in required.reason


def test_runner_runs_scenario_cells_through_the_registry(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """run_logged (serial runs and workers) dispatches a scenario cell to its
    scenario: one harness.log (not two handlers writing each record twice),
    the scenario's checks, inputs of both the cell and the scenario."""
    import dataclasses

    from harness.logs import CELL_LOG
    from harness.results import PASSED, CheckResult
    from harness.run import cellrun
    from harness.scenarios import cells as scenario_cells

    async def body(rig) -> None:
        rig.add(CheckResult("stub", True, "no QEMU started"))

    real = SCENARIOS["cancel-in-active"]
    monkeypatch.setitem(SCENARIOS, "cancel-in-active", dataclasses.replace(real, body=body))
    monkeypatch.setattr(scenario_cells, "discover", lambda spec: _build(spec=spec))
    monkeypatch.setattr(cellrun, "run_cell", lambda *a, **k: pytest.fail("ran the flow"))
    cell = _scenario_cell()
    result = cellrun.run_logged(cell, tmp_path)
    assert result.verdict == PASSED, result.reason
    assert result.id == cell.id and [c.name for c in result.checks] == ["stub"]
    assert result.inputs["scenario"] == "cancel-in-active"
    assert result.inputs["theme"] == "cancel" and result.inputs["origin"] == "m.yaml:3"
    lines = (tmp_path / CELL_LOG).read_text().splitlines()
    starts = [line for line in lines if "scenario cancel-in-active on b" in line]
    assert len(starts) == 1, lines
    assert len(lines) == len(set(lines)), lines
