"""A running cell's progress reaches the runner's state: the phases it enters
and samples of its migration, from the runner's own process (``-j 1``) and
over a worker's pipe (``-j N``), throttled (harness.progress.Throttle).

``run_cell`` is replaced by a stand-in that reports as the flow does (as in
tests/test_pool.py; forked workers inherit the replacement): what is tested
is the channel, not QEMU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.cell import BuildSpec, Cell, TargetSpec
from harness.progress import CellProgress, MigrationProgress, Throttle
from harness.results import CellResult, RunState
from harness.run import cellrun, runner
from harness.units import MiB

IDS = ["alpha", "bravo", "charlie"]
SAMPLES = 50


def cell(cell_id: str) -> Cell:
    build = BuildSpec(name="b", binary="/bin/true")
    return Cell(id=cell_id, target=TargetSpec(name="t", memory=1 << 20, smp=1),
                src_build=build, dst_build=build)


def sample(i: int, status: str = "active") -> MigrationProgress:
    return MigrationProgress(status=status, remaining=(SAMPLES - i) * MiB, transferred=i * MiB,
                             iteration=1 + i // 10, dirty_rate=2000 + i)


@pytest.fixture
def reporting_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_cell`` replaced: enters two phases, reports ``SAMPLES`` samples
    as fast as it can (the throttle must drop most) and a final one with a new
    status (which must pass), then a last phase, and passes."""

    def fake_run_cell(c: Cell, logdir: Path, progress=None, inject=None) -> CellResult:
        assert progress is not None
        progress("launch")
        progress("migrate")
        for i in range(SAMPLES):
            progress(sample(i))
        progress(sample(SAMPLES, "completed"))
        progress("verify")
        return CellResult(id=c.id, verdict="passed", inputs=c.inputs(), logdir=str(logdir))

    monkeypatch.setattr(cellrun, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "discover", lambda spec: None)


class Recorder:
    """A runner listener keeping what each event let it see."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, tuple[str, MigrationProgress | None]]]] = []
        self.ended_while_shown: list[str] = []

    def __call__(self, event: str, state: RunState) -> None:
        self.seen.append((event, {cid: (p.phase, p.migration)
                                  for cid, p in state.progress.items()}))
        if event == "cell-end" and state.results[-1].id in state.progress:
            self.ended_while_shown.append(state.results[-1].id)

    def phases(self, cid: str) -> list[str]:
        out: list[str] = []
        for event, progress in self.seen:
            phase = progress[cid][0] if cid in progress else "start"
            if event == "phase" and phase not in ("start", *out[-1:]):
                out.append(phase)
        return out

    def migration(self, cid: str) -> list[MigrationProgress]:
        out: list[MigrationProgress] = []
        for event, progress in self.seen:
            moving = progress.get(cid, ("", None))[1]
            if event == "progress" and moving is not None and moving not in out[-1:]:
                out.append(moving)
        return out


@pytest.mark.parametrize("jobs", [1, 2])
def test_running_cells_phases_and_migration_progress_reach_the_run_state(
        tmp_path: Path, reporting_cells: Any, jobs: int) -> None:
    seen = Recorder()
    state = runner.run_cells([cell(i) for i in IDS], tmp_path, jobs=jobs, listener=seen,
                             budget=runner.Budget(cpus=2, memory=1 << 30))
    assert [r.verdict for r in state.results] == ["passed"] * len(IDS)
    for cid in IDS:
        assert seen.phases(cid) == ["launch", "migrate", "verify"], cid
        moving = seen.migration(cid)
        assert moving[0] == sample(0), cid
        # The final sample's new status always passes the throttle ...
        assert moving[-1] == sample(SAMPLES, "completed"), cid
        # ... the rest at most every MIN_INTERVAL: the pipe carries few.
        assert len(moving) <= 5, (cid, len(moving))
    # A finished cell leaves the display; none is left once the run is over.
    assert seen.ended_while_shown == [] and state.progress == {}
    if jobs == 2:
        # Cells ran side by side and both showed at once.
        assert any(len(progress) == 2 for _, progress in seen.seen)


def test_a_new_phase_clears_the_migration_figures() -> None:
    p = CellProgress()
    assert p.phase == "start" and p.migration is None
    p.update("migrate")
    p.update(sample(3))
    assert (p.phase, p.migration) == ("migrate", sample(3))
    p.update("verify")
    assert (p.phase, p.migration) == ("verify", None)


def test_throttle_passes_phases_and_status_changes_and_samples_every_interval() -> None:
    now = [0.0]
    got: list[object] = []
    throttle = Throttle(got.append, interval=0.25, clock=lambda: now[0])
    throttle("migrate")
    for i in range(10):               # 0.0 .. 0.9 s, every 0.1 s
        throttle(sample(i))
        now[0] += 0.1
    throttle(sample(10, "completed"))  # at 1.0 s, 0.2 s after the last one passed
    throttle("verify")
    assert got == ["migrate", sample(0), sample(3), sample(6), sample(9),
                   sample(10, "completed"), "verify"]


def test_migration_progress_from_a_driver_sample() -> None:
    # The keys of harness.migration.driver._sample.
    s = {"t": 1.5, "status": "active", "transferred": 300 * MiB, "remaining": 12 * MiB,
         "dirty_rate": 2100, "syncs": 3, "mbps": 1000.0}
    assert MigrationProgress.from_sample(s) == MigrationProgress(
        status="active", remaining=12 * MiB, transferred=300 * MiB, iteration=3,
        dirty_rate=2100)
    assert MigrationProgress.from_sample({"status": None}) == MigrationProgress()
