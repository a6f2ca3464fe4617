"""The conformance suite sees the same cells as ``mharness run``.

Options: ``--matrix`` (default: the project's matrix.yaml), ``--tier``
(default: smoke), ``--mh-results`` (where cell logs and results.json go;
default: results/pytest-<timestamp>).  The required QEMU build of the matrix
must exist: without it the run stops at once with an error rather than
skipping its way to a green result.
"""
from __future__ import annotations

import datetime as _dt
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness.cell import Cell
from harness.errors import HarnessError
from harness.logs import cell_logging
from harness.matrix import load_matrix, tier_cells
from harness.qemu.build import discover
from harness.qemu.process import live_processes
from harness.report.files import write_junit, write_results_json
from harness.results import CellResult
from harness.results import RunState
from harness.run.runner import cell_logdir

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mharness")
    group.addoption("--matrix", default=str(ROOT / "matrix.yaml"), help="matrix file")
    group.addoption("--tier", default="smoke", help="tier whose cells test_cells runs")
    group.addoption("--mh-results", default=None, help="results folder for cell logs")
    group.addoption("--mh-history", default=None, metavar="PATH|URL",
                    help="history database for the session's cells ('off': none; default: "
                         "$MHARNESS_HISTORY, else ~/.local/share/mharness/history.sqlite)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cell: a migration cell from the matrix")
    # The session's own history is decided once (xdist workers inherit it);
    # the mharness commands that tests start record nowhere unless told to.
    from harness.report.history import ENV, default_location
    if SESSION_HISTORY not in os.environ:
        os.environ[SESSION_HISTORY] = default_location() or "off"
        os.environ[ENV] = "off"


#: Where this session's history goes unless --mh-history says.
SESSION_HISTORY = "MHARNESS_SESSION_HISTORY"


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        matrix = load_matrix(Path(session.config.getoption("--matrix")))
    except HarnessError as exc:
        pytest.exit(f"bad matrix: {exc}", returncode=2)
    for spec in matrix.build_specs():
        if spec.required:
            build = discover(spec)
            if build.missing:
                pytest.exit(f"required QEMU build '{spec.name}' is missing: {build.missing}. "
                            "Install Debian's qemu-system-x86 (bash scripts/setup.sh).",
                            returncode=4)


@pytest.fixture(scope="session")
def matrix(pytestconfig: pytest.Config):
    return load_matrix(Path(pytestconfig.getoption("--matrix")))


_state: RunState | None = None


@pytest.fixture(scope="session")
def run_state(pytestconfig: pytest.Config) -> RunState:
    """Collects every cell result of the session into one results folder."""
    global _state
    if _state is None:
        base = pytestconfig.getoption("--mh-results")
        if base is None:
            # xdist workers share one run id, so they share one folder.
            stamp = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:12] or \
                _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            base = ROOT / "results" / f"pytest-{stamp}"
        path = Path(base)
        # Under pytest-xdist each worker keeps its own results.json; merge them
        # with `mharness merge` (same cell ids, disjoint cells).
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        if worker:
            path = path / worker
        path.mkdir(parents=True, exist_ok=True)
        # The same run id in every xdist worker: their cells make one history run.
        run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
        _state = RunState(results_dir=path, total=0, meta={
            "matrix": pytestconfig.getoption("--matrix"), "tier": pytestconfig.getoption("--tier"),
            "seed": 0, "entry": "pytest", "run_id": run_id})
    return _state


_finished: Any = None


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The session's cells get what ``mharness run`` leaves: report.html and a history run."""
    global _finished
    if _state is None or not _state.results:
        return
    from harness.report.artefacts import finish_run
    from harness.report.history import OFF, default_location

    location = session.config.getoption("--mh-history") or os.environ.get(SESSION_HISTORY) \
        or default_location()
    if location is not None and location.lower() in OFF:
        location = None
    _finished = finish_run(_state, location, "pytest")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _finished is None:
        return
    if _finished.report is not None:
        terminalreporter.write_line(f"mharness report: {_finished.report}")
    if _finished.history_run is not None:
        terminalreporter.write_line(f"mharness history: run #{_finished.history_run} in "
                                    f"{_finished.history}")
    for err in _finished.errors:
        terminalreporter.write_line(f"mharness: {err}", red=True)


@pytest.fixture(scope="session")
def record(run_state: RunState):
    """Add a cell result to the session's results folder (results.json, junit.xml)."""
    def add(result: CellResult) -> CellResult:
        run_state.total += 1
        run_state.results.append(result)
        write_results_json(run_state)
        write_junit(run_state)
        return result
    return add


#: Test parameters that are matrix cells (see pytest_generate_tests).
CELL_PARAMS = ("cell", "control_cell", "mode_cell")


@pytest.fixture(autouse=True)
def cell_log(request: pytest.FixtureRequest):
    """A test run over a matrix cell writes the harness's records, stamped with
    the cell's id, to ``harness.log`` in that cell's log folder (as ``mharness
    run`` does)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    cell = next((params[n] for n in CELL_PARAMS if isinstance(params.get(n), Cell)), None)
    if cell is None:
        yield
        return
    state: RunState = request.getfixturevalue("run_state")
    with cell_logging(cell.id, cell_logdir(state.results_dir, cell.id)):
        yield


@pytest.fixture(autouse=True)
def no_leaked_qemu():
    """Every test must leave no QEMU it started running."""
    yield
    left = live_processes()
    assert not left, f"QEMU processes left running: {[p.pid for p in left]}"


def cells_of(config: pytest.Config, tier: str) -> list[Cell]:
    return tier_cells(load_matrix(Path(config.getoption("--matrix"))), tier, resolve=discover)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``cell`` runs over the selected tier, ``control_cell`` over 'controls',
    ``mode_cell`` over 'modes'."""
    for name, tier in (("cell", metafunc.config.getoption("--tier")), ("control_cell", "controls"),
                       ("mode_cell", "modes")):
        if name in metafunc.fixturenames:
            # Failure-path cells are test_failure_paths.py's (the failpaths tier).
            cells = [c for c in cells_of(metafunc.config, tier) if not c.scenario]
            metafunc.parametrize(name, cells, ids=[c.id for c in cells])
