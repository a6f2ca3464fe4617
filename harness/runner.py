"""Runs a list of cells, one after another, and records every outcome.

A failing cell never stops the run; an interruption (Ctrl-C, SIGTERM) stops
scheduling, lets the running cell tear down its QEMUs, and still writes the
results gathered so far.
"""
from __future__ import annotations

import datetime as _dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from harness.cell import Cell
from harness.flow import run_cell
from harness.qemu.process import kill_all
from harness.report.files import write_junit, write_results_json
from harness.results import PASSED, SKIPPED, CellResult

Listener = Callable[[str, "RunState"], None]


@dataclass
class RunState:
    """The run as it goes: what is done, what runs now."""

    results_dir: Path
    total: int
    results: list[CellResult] = field(default_factory=list)
    current: str = ""
    phase: str = ""
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out


def default_results_dir(base: Path = Path("results")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def cell_logdir(results_dir: Path, cell_id: str) -> Path:
    return results_dir / "cells" / cell_id


def run_cells(cells: Iterable[Cell], results_dir: Path, *, keep_logs: bool = False,
              listener: Listener | None = None) -> RunState:
    cells = list(cells)
    results_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(results_dir=results_dir, total=len(cells))
    notify = listener or (lambda _e, _s: None)
    try:
        for cell in cells:
            state.current, state.phase = cell.id, "start"
            notify("cell-start", state)

            def on_phase(phase: str) -> None:
                state.phase = phase
                notify("phase", state)

            logdir = cell_logdir(results_dir, cell.id)
            result = run_cell(cell, logdir, on_phase)
            if result.verdict == PASSED and not keep_logs:
                shutil.rmtree(logdir, ignore_errors=True)
                result.logdir = None
            state.results.append(result)
            write_results_json(state)
            notify("cell-end", state)
    except BaseException:
        state.interrupted = True
        kill_all()
        raise
    finally:
        state.current = ""
        write_results_json(state)
        write_junit(state)
        notify("run-end", state)
    return state


def exit_status(state: RunState) -> int:
    """0 when every cell passed or was skipped with a reason, 1 otherwise."""
    if state.interrupted:
        return 130
    return 0 if all(r.verdict in (PASSED, SKIPPED) for r in state.results) else 1


__all__ = ["run_cells", "exit_status", "RunState", "default_results_dir"]
