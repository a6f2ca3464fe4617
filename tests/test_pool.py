"""The runner's worker pool and the per-cell harness log, with stand-in cells.

``run_cell`` is replaced by a function that logs, sleeps, dies or ignores
SIGTERM as a test asks: forked workers inherit the replacement, so what is
tested is the pool (scheduling, a worker's death, stopping) and the logging,
not QEMU (testcases/test_parallel.py proves the same against real QEMU).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from harness.cell import BuildSpec, Cell, TargetSpec
from harness.fileio import write_atomic
from harness.logs import CELL_LOG
from harness.qemu.procfs import running
from harness.results import CellResult
from harness.run import cellrun, pool, runner
from harness.waiting import poll_until_sync

say = logging.getLogger("harness.test_pool")

IDS = ["alpha", "bravo", "charlie", "delta"]


def cell(cell_id: str) -> Cell:
    build = BuildSpec(name="b", binary="/bin/true")
    return Cell(id=cell_id, target=TargetSpec(name="t", memory=1 << 20, smp=1),
                src_build=build, dst_build=build)


Behaviour = Callable[[Cell, Path], None]


@pytest.fixture
def fake_cells(monkeypatch: pytest.MonkeyPatch) -> dict[str, Behaviour]:
    """``run_cell`` replaced: logs two records, does what ``behaviour[cell.id]``
    says (if anything), passes."""
    behaviour: dict[str, Behaviour] = {}

    def fake_run_cell(c: Cell, logdir: Path, progress=None, inject=None) -> CellResult:
        say.info("first record of %s", c.id)
        # Whole or not at all: the tests poll for "pid" and read it at once, and
        # write_text's empty file was read once (CI).
        write_atomic(logdir / "pid", str(os.getpid()))
        if c.id in behaviour:
            behaviour[c.id](c, logdir)
        say.debug("last record of %s", c.id)
        return CellResult(id=c.id, verdict="passed", inputs=c.inputs(), logdir=str(logdir))

    monkeypatch.setattr(cellrun, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "discover", lambda spec: None)
    return behaviour


def sleep(seconds: float) -> Behaviour:
    return lambda _c, _d: time.sleep(seconds)


def records(logdir: Path) -> list[list[str]]:
    """harness.log's records split into fields: time, level, cell, logger, message..."""
    return [line.split() for line in (logdir / CELL_LOG).read_text().splitlines()]


def assert_own_log(logdir: Path, cell_id: str) -> None:
    recs = records(logdir)
    assert recs, f"{cell_id}: empty {CELL_LOG}"
    assert {r[2] for r in recs} == {cell_id}, recs
    text = (logdir / CELL_LOG).read_text()
    assert f"first record of {cell_id}" in text and f"last record of {cell_id}" in text
    assert not any(other in text for other in IDS if other != cell_id), text


@pytest.mark.parametrize("jobs", [1, 2])
def test_each_cell_folder_gets_its_own_harness_log(tmp_path: Path, fake_cells, jobs: int) -> None:
    fake_cells.update({"alpha": sleep(0.4), "bravo": sleep(0.1)})
    state = runner.run_cells([cell(i) for i in IDS], tmp_path, keep_logs=True, jobs=jobs,
                             budget=runner.Budget(cpus=2, memory=1 << 30))
    assert [r.id for r in state.results] == IDS   # tier order, whatever finished first
    assert [r.verdict for r in state.results] == ["passed"] * 4
    for i in IDS:
        assert_own_log(runner.cell_logdir(tmp_path, i), i)
    pids = {int((runner.cell_logdir(tmp_path, i) / "pid").read_text()) for i in IDS}
    if jobs == 1:
        assert pids == {os.getpid()}
    else:
        assert len(pids) == 2 and os.getpid() not in pids
        assert not any(running(p) for p in pids), "workers outlived the run"


def test_cells_logging_at_once_in_one_process_keep_their_records_apart(tmp_path: Path,
                                                                       fake_cells) -> None:
    """As under pytest, where several cells may share a process: each cell's
    log holds only its own records."""
    fake_cells.update({i: sleep(0.2) for i in IDS})
    threads = [threading.Thread(target=cellrun.run_logged, args=(cell(i), tmp_path / i))
               for i in IDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in IDS:
        assert_own_log(tmp_path / i, i)


def test_a_worker_dying_mid_cell_errors_that_cell_and_the_run_goes_on(tmp_path: Path,
                                                                     fake_cells) -> None:
    fake_cells["bravo"] = lambda _c, _d: os.kill(os.getpid(), signal.SIGKILL)
    state = runner.run_cells([cell(i) for i in IDS], tmp_path, jobs=2,
                             budget=runner.Budget(cpus=2, memory=1 << 30))
    verdicts = {r.id: r for r in state.results}
    assert [r.id for r in state.results] == IDS
    assert verdicts["bravo"].verdict == "error"
    assert "ended mid-cell (killed by signal SIGKILL)" in verdicts["bravo"].reason
    assert all(verdicts[i].verdict == "passed" for i in IDS if i != "bravo")
    logdir = runner.cell_logdir(tmp_path, "bravo")
    assert verdicts["bravo"].logdir == str(logdir)
    assert "ended mid-cell" in (logdir / CELL_LOG).read_text()
    assert runner.exit_status(state) == 1 and not state.interrupted


def test_a_harness_bug_in_one_cell_is_that_cells_error(tmp_path: Path, fake_cells) -> None:
    def bug(_c: Cell, _d: Path) -> None:
        raise RuntimeError("harness bug")
    fake_cells["alpha"] = bug
    state = runner.run_cells([cell(i) for i in IDS[:2]], tmp_path)
    alpha, bravo = state.results
    assert alpha.verdict == "error" and "harness bug" in alpha.reason
    assert "Traceback" in (runner.cell_logdir(tmp_path, "alpha") / CELL_LOG).read_text()
    assert bravo.verdict == "passed"


def _wait_for_pids(logdirs: list[Path]) -> list[int]:
    poll_until_sync(lambda: all((d / "pid").exists() for d in logdirs), bool,
                    timeout=20, what="workers to start their cells")
    return [int((d / "pid").read_text()) for d in logdirs]


def test_stop_sigterms_busy_workers_then_sigkills_late_ones(tmp_path: Path, fake_cells,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(pool, "WORKER_GRACE", 1.0)

    def stubborn(_c: Cell, _d: Path) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (_d / "ignoring").write_text("")
        time.sleep(60)

    fake_cells.update({"alpha": sleep(60), "bravo": stubborn})
    workers = pool.WorkerPool()
    for i in ("alpha", "bravo"):
        workers.start(cell(i), tmp_path / i)
    procs = {w.cell.id: w.process for w in workers.busy if w.cell}
    _wait_for_pids([tmp_path / "alpha", tmp_path / "bravo"])
    poll_until_sync(lambda: (tmp_path / "bravo" / "ignoring").exists(), bool, timeout=20)
    t0 = time.monotonic()
    assert workers.stop() == []
    took = time.monotonic() - t0
    assert procs["alpha"].exitcode == 130          # tore its cell down on SIGTERM
    assert procs["bravo"].exitcode == -signal.SIGKILL
    assert 1.0 <= took < 10, took
    assert "interrupted" in (tmp_path / "alpha" / CELL_LOG).read_text()


def test_interrupting_a_parallel_run_stops_workers_and_writes_partial_results(
        tmp_path: Path, fake_cells) -> None:
    fake_cells.update({"alpha": sleep(60), "bravo": sleep(0)})

    def interrupt_after_first_result(event: str, state) -> None:
        if event == "cell-end":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_cells([cell(i) for i in IDS], tmp_path, jobs=2,
                         listener=interrupt_after_first_result,
                         budget=runner.Budget(cpus=2, memory=1 << 30))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["interrupted"] is True and data["total_cells"] == 4
    assert [c["id"] for c in data["cells"]] == ["bravo"]
    (alpha,) = _wait_for_pids([runner.cell_logdir(tmp_path, "alpha")])
    assert not running(alpha), "a busy worker outlived the interrupted run"
    assert "interrupted" in (runner.cell_logdir(tmp_path, "alpha") / CELL_LOG).read_text()
