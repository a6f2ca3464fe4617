"""What a run leaves besides results.json and junit.xml: its row in the
history database and report.html, written once the run ends (also when it
was interrupted, with the cells that finished).

``mharness run`` and the pytest plugin (testcases/conftest.py) both finish a
run through :func:`finish_run`, so both entry points give the same artefacts.
History comes first, so the report's per-cell trend includes this run.
Neither step may cost the run its results: failures are returned as messages
for the caller to print, never raised.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.report.history import History, HistoryError, run_record
from harness.report.html import Trend, write_report_html
from harness.results import RunState

log = logging.getLogger(__name__)

#: Runs of the tier shown in each cell's trend plot.
TREND_RUNS = 10


@dataclass
class Finished:
    report: Path | None = None
    history_run: int | None = None
    history: str | None = None
    errors: list[str] = field(default_factory=list)


def check_history(location: str | None) -> None:
    """Open (and create or upgrade) the history database before a run starts,
    so a bad one is bad input (exit 2) rather than a surprise at the end."""
    if location:
        History(location).close()


def trend_of(history: History, state: RunState, run_id: int, entry: str,
             last: int = TREND_RUNS) -> Trend:
    tier = str(state.meta.get("tier") or "smoke")
    runs, by_cell = history.trend(tier, entry, last=last, upto=run_id)
    index = {r.id: i for i, r in enumerate(runs)}
    ids = {r.id for r in state.results}
    return Trend(runs=[(r.id, r.started_at) for r in runs],
                 cells={cid: [(index[c.run_id], c.verdict, c.downtime_ms) for c in rows]
                        for cid, rows in by_cell.items() if cid in ids})


def finish_run(state: RunState, history: str | None, entry: str = "run") -> Finished:
    """Record ``state`` in ``history`` (None: no history), then write report.html."""
    out = Finished(history=history)
    elapsed = time.monotonic() - state.started
    trend = None
    if history:
        try:
            with History(history) as db:
                out.history = db.where
                out.history_run = db.record(run_record(state, entry))
                trend = trend_of(db, state, out.history_run, str(state.meta.get("entry") or entry))
        except HistoryError as exc:
            out.errors.append(str(exc))
    try:
        out.report = write_report_html(state, trend, elapsed)
    except Exception as exc:  # noqa: BLE001 -- the run's results matter more than its page
        log.exception("report.html not written")
        out.errors.append(f"report.html not written: {exc.__class__.__name__}: {exc}")
    return out


class FinishListener:
    """A runner listener that finishes the run at ``run-end`` (normal end,
    failure or interruption alike)."""

    def __init__(self, history: str | None, entry: str = "run") -> None:
        self.history, self.entry = history, entry
        self.finished: Finished | None = None

    def __call__(self, event: str, state: RunState) -> None:
        if event == "run-end" and self.finished is None:
            self.finished = finish_run(state, self.history, self.entry)
