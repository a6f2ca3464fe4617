"""The live display's line for each running cell: its phase and, while it
migrates, its migration's progress (``RunState.progress``); plain output
(not a terminal) stays one line per finished cell."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

from rich.console import Console

from harness.progress import CellProgress, MigrationProgress
from harness.report.console import Progress, migration_text
from harness.report.live import LiveProgress
from harness.results import CellResult, RunState
from harness.units import KiB, MiB

MOVING = MigrationProgress(status="active", remaining=int(12.5 * MiB), transferred=300 * MiB,
                           iteration=3, dirty_rate=2100)


def rendered(live: LiveProgress) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(live._render())
    return console.export_text()


def two_running() -> RunState:
    """As the runner keeps it with -j 2: one cell migrating, one launching."""
    st = RunState(results_dir=Path("/tmp"), total=3)
    st.running = ["x86-precopy-tcp", "x86-postcopy-unix"]
    st.progress = {"x86-precopy-tcp": CellProgress(), "x86-postcopy-unix": CellProgress()}
    return st


def start_migrating(listener: Callable[[str, RunState], None], st: RunState) -> None:
    """The runner's events as x86-precopy-tcp starts and enters its migration."""
    listener("cell-start", st)
    st.progress["x86-precopy-tcp"].update("migrate")
    listener("phase", st)
    st.progress["x86-precopy-tcp"].update(MOVING)
    listener("progress", st)


def test_running_cells_show_phase_and_migration_progress() -> None:
    live = LiveProgress(io.StringIO(), jobs=2)
    st = two_running()
    start_migrating(live, st)
    st.progress["x86-postcopy-unix"].update("launch")
    live("phase", st)
    lines = rendered(live).splitlines()
    moving = next(line for line in lines if "x86-precopy-tcp" in line)
    for part in ("migrate", "active", "iter 3", "remaining 12.5 MiB", "sent 300.0 MiB",
                 "dirty 2.1k pages/s"):
        assert part in moving, (part, moving)
    launching = next(line for line in lines if "x86-postcopy-unix" in line)
    assert "launch" in launching and "remaining" not in launching, launching
    # The next phase: the migration's figures go (they would be stale).
    st.progress["x86-precopy-tcp"].update("verify")
    live("phase", st)
    moving = next(line for line in rendered(live).splitlines() if "x86-precopy-tcp" in line)
    assert "verify" in moving and "remaining" not in moving, moving
    live.close()


def test_plain_output_stays_one_line_per_finished_cell() -> None:
    out = io.StringIO()
    plain = Progress(out)
    st = two_running()
    start_migrating(plain, st)
    assert out.getvalue() == ""
    st.results.append(CellResult("x86-precopy-tcp", "passed", duration=3.0))
    plain("cell-end", st)
    assert out.getvalue() == "[1/3] PASS x86-precopy-tcp (3.0 s)\n"


def test_migration_text() -> None:
    assert migration_text(MOVING) == \
        "active  iter 3  remaining 12.5 MiB  sent 300.0 MiB  dirty 2.1k pages/s"
    assert migration_text(MigrationProgress(status="setup", remaining=512 * KiB,
                                            transferred=0, iteration=0, dirty_rate=0)) == \
        "setup  iter 0  remaining 512 KiB  sent 0 KiB"
    assert migration_text(MigrationProgress()) == "?"


def test_a_finished_cell_leaves_the_display_before_its_line_is_printed() -> None:
    """The runner drops a finished cell from ``running`` (and its progress)
    a moment before ``cell-end``; a redraw in between must not show it with
    a made-up phase."""
    live = LiveProgress(io.StringIO(), jobs=2)
    st = two_running()
    live("cell-start", st)
    st.running = ["x86-postcopy-unix"]
    del st.progress["x86-precopy-tcp"]
    text = rendered(live)
    assert "x86-precopy-tcp" not in text and "x86-postcopy-unix" in text
    live.close()
