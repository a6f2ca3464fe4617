"""Live progress: the rich display on a terminal, plain lines otherwise."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

from rich.console import Console

from harness.progress import CellProgress
from harness.report.console import Progress
from harness.report.live import LiveProgress, eta_seconds, progress_listener
from harness.results import CellResult, RunState


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    listener = progress_listener(out)
    assert isinstance(listener, Progress)
    st = RunState(results_dir=Path("/tmp"), total=2)
    listener("cell-start", st)
    st.results.append(CellResult("a", "failed", "ram: differs", duration=1.25))
    listener("cell-end", st)
    assert out.getvalue() == "[1/2] FAIL a (1.2 s): ram: differs\n"


def test_live_display_on_a_terminal():
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            listener = progress_listener(tty, jobs=2)
            assert isinstance(listener, LiveProgress)
            listener.close()
    finally:
        os.close(master)
        os.close(slave)


def render(live: LiveProgress) -> str:
    buf = io.StringIO()
    Console(file=buf, width=150, force_terminal=False).print(live._render())
    return buf.getvalue()


def test_live_shows_counts_eta_and_each_running_cell_with_its_phase():
    out = io.StringIO()
    live = LiveProgress(out, jobs=2)
    st = RunState(results_dir=Path("/tmp"), total=4)
    st.running = ["alpha", "bravo"]
    st.progress = {"alpha": CellProgress(), "bravo": CellProgress()}
    live("cell-start", st)
    st.progress["alpha"].update("migrate")
    live("phase", st)
    st.progress["bravo"].update("launch")
    live("phase", st)
    text = render(live)
    assert "0/4 cells" in text and "ETA -" in text
    row = {cid: next(line.split() for line in text.splitlines() if cid in line.split())
           for cid in ("alpha", "bravo")}
    assert "migrate" in row["alpha"] and "launch" in row["bravo"], text
    st.results.append(CellResult("alpha", "passed", duration=2.0))
    st.running = ["bravo"]
    live("cell-end", st)
    st.results.append(CellResult("bravo", "failed", "guest: broken", duration=4.0))
    st.running = []
    live("cell-end", st)
    text = render(live)
    assert "2/4 cells" in text and "1 passed" in text and "1 failed" in text
    assert "ETA 3s" in text      # 2 cells left, 3 s each on average, 2 at a time
    live("run-end", st)
    printed = out.getvalue()
    assert "[1/4] PASS alpha (2.0 s)" in printed
    assert "[2/4] FAIL bravo (4.0 s): guest: broken" in printed


def test_eta():
    st = RunState(results_dir=Path("/tmp"), total=10, started=time.monotonic())
    assert eta_seconds(st, 1) is None
    st.results = [CellResult(str(i), "passed", duration=1.0) for i in range(4)]
    assert eta_seconds(st, 1) == 6.0 and eta_seconds(st, 3) == 2.0
    st.results = [CellResult(str(i), "passed", duration=1.0) for i in range(10)]
    assert eta_seconds(st, 1) == 0.0
