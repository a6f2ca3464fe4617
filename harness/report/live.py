"""Live progress on a terminal, drawn with ``rich``: a bar of cells done,
pass/fail counts, elapsed time and an estimate of the time left, and one line
per running cell with its phase and, while it migrates, its migration's
progress (status, iteration, remaining and sent bytes, dirty rate: the
latest ``query-migrate`` sample, ``RunState.progress``), at ``-j 1`` and
``-j N`` alike.  Finished cells scroll above the display, one line each, as
the plain listener prints them, so the terminal's scrollback reads like a CI
log once the run is over.

It is a listener of the runner (``listener(event, state)``, events
``cell-start``, ``phase``, ``progress``, ``cell-end``, ``run-end``), like
:class:`harness.report.console.Progress`, which stays the choice when the
output is not a terminal (CI logs, pipes): see :func:`progress_listener`.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, TextIO

from harness.report.console import Progress, cell_line, migration_text
from harness.results import RunState

log = logging.getLogger(__name__)

Listener = Callable[[str, RunState], None]

_STYLE = {"passed": "green", "failed": "bold red", "error": "bold magenta", "skipped": "dim",
          "flaky": "yellow", "known-failure": "yellow"}


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def eta_seconds(state: RunState, jobs: int) -> float | None:
    """Time left: the cells not done, at the mean duration of the finished
    ones, spread over the cells that can run at once.  None before any cell
    has finished (nothing to go on)."""
    done = [r.duration for r in state.results if r.duration]
    left = state.total - len(state.results)
    if not done or left <= 0:
        return None if left > 0 else 0.0
    mean = sum(done) / len(done)
    return left * mean / max(1, min(jobs, left))


class LiveProgress:
    """The ``rich`` live display (a listener)."""

    def __init__(self, out: TextIO = sys.stderr, jobs: int = 1) -> None:
        from rich.console import Console
        from rich.live import Live

        self.jobs = max(1, jobs)
        self.console = Console(file=out, highlight=False)
        self._state: RunState | None = None
        self._live = Live(console=self.console, get_renderable=self._render,
                          refresh_per_second=4, transient=True, redirect_stdout=False,
                          redirect_stderr=False)
        self._started = False

    def __call__(self, event: str, state: RunState) -> None:
        self._state = state
        if event == "cell-end" and state.results:
            self._print_result(state)
        if event == "run-end":
            self.close()
            return
        if not self._started:
            self._live.start()
            self._started = True

    def _print_result(self, state: RunState) -> None:
        r = state.results[-1]
        style = _STYLE.get(str(r.verdict), "")
        text = cell_line(len(state.results), state.total, r)
        self.console.print(text, style=style, markup=False, highlight=False)

    def close(self) -> None:
        if self._started:
            self._live.stop()
            self._started = False

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        state = self._state
        if state is None:
            return Text("")
        counts = state.counts()
        done, total = len(state.results), max(state.total, 1)
        elapsed = time.monotonic() - state.started
        eta = eta_seconds(state, self.jobs)
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=total, completed=done, width=36),
            Text(f"{done}/{state.total} cells"),
            Text.assemble(
                (f"{counts.get('passed', 0)} passed", "green"), "  ",
                (f"{counts.get('failed', 0)} failed", "red" if counts.get("failed") else ""),
                "  ", (f"{counts.get('error', 0)} error", "magenta" if counts.get("error") else ""),
                "  ", (f"{counts.get('skipped', 0)} skipped", "dim"),
                *((("  ", (f"{counts['flaky']} flaky", "yellow")) if counts.get("flaky") else ()))),
            Text(f"elapsed {_duration(elapsed)}, ETA "
                 + ("-" if eta is None else _duration(eta)), style="cyan"))
        running = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
        for _ in range(5):
            running.add_column(no_wrap=True, overflow="ellipsis")
        now = time.monotonic()
        for cid in state.running:
            cell = state.progress.get(cid)
            if cell is None:
                continue
            running.add_row(Text("\u25b6", style="cyan"), Text(cid),
                            Text(cell.phase, style="bold"),
                            Text(f"{now - cell.started:.0f} s", style="dim"),
                            Text(migration_text(cell.migration) if cell.migration else "",
                                 style="cyan"))
        return Group(head, running)


def progress_listener(out: TextIO = sys.stderr, jobs: int = 1) -> Listener:
    """The live display when ``out`` is a terminal (and rich is installed),
    else the plain line-per-cell listener."""
    if out.isatty() and os.environ.get("TERM", "") != "dumb":
        try:
            return LiveProgress(out, jobs)
        except ImportError as exc:
            log.info("rich not available (%s): plain progress lines", exc)
    return Progress(out)
