"""Two runs of one tier side by side: what broke, what got fixed, what got
slower.  ``mharness compare`` prints this and exits 1 on a new failure or a
figure regression, so a nightly job can gate on it.

A side is a results folder (its summary.json, or results.json when there is
no up-to-date summary) or a run in the history database.  Runs of different
tiers, missing folders and results files of another schema version are bad
input (``CompareError``, exit 2): comparing them would report every cell as
added or removed, which is noise, not news.

Figures are compared only for cells that passed in both runs (a failed cell's
total time says how long it took to fail), and a change counts as a
regression only when it is both relatively large (``threshold``) and large in
absolute terms (the figure's floor): on a loaded host a TCG smoke cell's
downtime moves by tens of milliseconds and its total time by hundreds from one
run to the next (256 -> 881 ms between two back-to-back smoke runs on this
shared 2-core machine), so the defaults ask for a doubling and at least
100 ms of downtime, 1 s of total time or 64 MiB more sent.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report.figures import FAILING, key_figures
from harness.report.files import SCHEMA, SUMMARY_COLUMNS, SUMMARY_SCHEMA
from harness.report.history import History
from harness.results import CellResult
from harness.units import MiB

log = logging.getLogger(__name__)


class CompareError(HarnessError):
    """The two sides cannot be compared (exit 2)."""


@dataclass(frozen=True)
class Figure:
    """A figure ``compare`` watches: its field, label, unit and floor."""

    key: str
    label: str
    unit: str
    #: A change smaller than this (in the figure's unit) is never a regression.
    floor: float
    scale: float = 1.0   # stored value / scale = value in ``unit``


FIGURES = (
    Figure("downtime_ms", "downtime", "ms", 100.0),
    Figure("total_time_ms", "total time", "ms", 1000.0),
    Figure("transferred_bytes", "transferred", "MiB", 64.0, MiB),
)
DEFAULT_THRESHOLD = 1.0


@dataclass(frozen=True)
class Outcome:
    """What ``compare`` needs of one cell of one run."""

    id: str
    verdict: str
    reason: str = ""
    downtime_ms: float | None = None
    total_time_ms: float | None = None
    transferred_bytes: float | None = None

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING


@dataclass
class Side:
    """One of the two runs."""

    label: str
    tier: str | None
    entry: str | None = None
    uid: str | None = None
    history_id: int | None = None
    cells: dict[str, Outcome] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.label} (tier {self.tier or '?'}, {len(self.cells)} cells)"


# --- reading a side --------------------------------------------------------------------


def _from_summary(path: Path, data: dict[str, Any]) -> list[Outcome]:
    cols = data.get("columns") or list(SUMMARY_COLUMNS)
    idx = {c: i for i, c in enumerate(cols)}
    if "id" not in idx or "verdict" not in idx:
        raise CompareError(f"{path}: no id/verdict columns")

    def get(row: list[Any], name: str) -> Any:
        i = idx.get(name)
        return row[i] if i is not None and i < len(row) else None

    return [Outcome(str(get(r, "id")), str(get(r, "verdict")), str(get(r, "reason") or ""),
                    get(r, "downtime_ms"), get(r, "total_time_ms"), get(r, "transferred_bytes"))
            for r in data.get("cells", [])]


def _from_results(data: dict[str, Any]) -> list[Outcome]:
    out = []
    for c in data.get("cells", []):
        r = CellResult.from_json(c)
        k = key_figures(r)
        out.append(Outcome(r.id, str(r.verdict), r.reason, k.downtime_ms, k.total_time_ms,
                           k.transferred_bytes))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: not a results file (a JSON {type(data).__name__})")
    return data


def side_from_folder(folder: Path) -> Side:
    """A results folder: its summary.json when that is up to date, else results.json."""
    results = folder / "results.json"
    if not folder.exists():
        raise CompareError(f"{folder}: no such results folder")
    if not results.is_file():
        raise CompareError(f"{folder}: no results.json (not a results folder)")
    summary = folder / "summary.json"
    data: dict[str, Any] | None = None
    if summary.is_file() and summary.stat().st_mtime >= results.stat().st_mtime:
        data = _read_json(summary)
        if data.get("schema") != SUMMARY_SCHEMA or data.get("results_schema") != SCHEMA:
            data = None   # a summary this code does not know: results.json decides
    if data is not None:
        cells = _from_summary(summary, data)
    else:
        data = _read_json(results)
        if data.get("schema") != SCHEMA:
            raise CompareError(f"{results}: results schema {data.get('schema')!r}, this "
                               f"mharness reads {SCHEMA!r}")
        cells = _from_results(data)
    run = data.get("run") or {}
    return Side(label=f"results folder {folder}", tier=run.get("tier"), entry=run.get("entry"),
                uid=run.get("run_id"), cells={c.id: c for c in cells})


def side_from_history(history: History, run_id: int) -> Side:
    row = history.run(run_id)
    if row is None:
        raise CompareError(f"history {history.where} has no run #{run_id}")
    cells = {c.cell_id: Outcome(c.cell_id, c.verdict, c.reason, c.downtime_ms, c.total_time_ms,
                                c.transferred_bytes) for c in history.cells([run_id])}
    return Side(label=f"history run #{row.id} ({row.started_at})", tier=row.tier,
                entry=row.entry, uid=row.uid, history_id=row.id, cells=cells)


def run_id_of(spec: str) -> int | None:
    text = spec[1:] if spec.startswith("#") else spec
    return int(text) if text.isdigit() else None


def resolve(spec: str, history: History | None) -> Side:
    """A command-line side: an existing folder, else a history run id (``N`` or
    ``#N``), else a folder that does not exist (an error naming it)."""
    path = Path(spec)
    run_id = run_id_of(spec)
    if path.exists() or run_id is None:
        return side_from_folder(path)
    if history is None:
        raise CompareError(f"{spec}: no such results folder (and no history to look up "
                           f"run #{run_id} in)")
    return side_from_history(history, run_id)


def previous_run(history: History, b: Side) -> Side:
    """The complete run of ``b``'s tier (and entry point) just before ``b``."""
    before = b.history_id
    if before is None and b.uid:
        row = history.run_by_uid(b.uid)
        before = row.id if row else None
    for row in history.runs(b.tier, b.entry, limit=5, complete=True, before=before):
        if row.uid != b.uid:
            return side_from_history(history, row.id)
    raise CompareError(f"history {history.where} has no earlier complete run of tier "
                       f"{b.tier!r} to compare {b.label} with")


def last_two(history: History, tier: str | None) -> tuple[Side, Side]:
    """The last two complete runs of ``tier`` (default: the newest run's tier)."""
    runs = history.runs(tier, None, limit=1, complete=True)
    if not runs:
        raise CompareError(f"history {history.where} has no complete run"
                           + (f" of tier {tier!r}" if tier else ""))
    b = side_from_history(history, runs[0].id)
    return previous_run(history, b), b


# --- comparing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A cell whose verdict changed (or that appeared or vanished)."""

    id: str
    before: str | None
    after: str | None
    reason: str = ""


@dataclass(frozen=True)
class Regression:
    id: str
    figure: Figure
    before: float
    after: float

    @property
    def ratio(self) -> float:
        return (self.after - self.before) / self.before if self.before else float("inf")

    def describe(self) -> str:
        f = self.figure
        b, a = self.before / f.scale, self.after / f.scale
        pct = "new" if not self.before else f"+{self.ratio * 100:.0f}%"
        return f"{self.id}: {f.label} {b:.0f} {f.unit} -> {a:.0f} {f.unit} ({pct})"


@dataclass
class Comparison:
    a: Side
    b: Side
    threshold: float
    figures: tuple[Figure, ...]
    new_failures: list[Change] = field(default_factory=list)
    fixes: list[Change] = field(default_factory=list)
    newly_flaky: list[Change] = field(default_factory=list)
    still_failing: list[Change] = field(default_factory=list)
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return 1 if self.new_failures or self.regressions else 0

    def text(self) -> str:
        lines = [f"A: {self.a.describe()}", f"B: {self.b.describe()}"]

        def section(title: str, items: list[Any], show: Any) -> None:
            lines.append(f"{title} ({len(items)})" + (":" if items else ""))
            lines.extend(f"  {show(x)}" for x in items)

        def change(c: Change) -> str:
            return f"{c.id}: {c.before or '-'} -> {c.after or '-'}" + \
                (f": {c.reason}" if c.reason else "")

        section("new failures", self.new_failures, change)
        section("fixed", self.fixes, change)
        section("newly flaky", self.newly_flaky, change)
        section("still failing", self.still_failing, change)
        section("cells added", self.added, change)
        section("cells removed", self.removed, change)
        floors = ", ".join(f"{f.label} {f.floor:g} {f.unit}" for f in self.figures)
        section(f"figure regressions (over +{self.threshold * 100:.0f}% and at least {floors})",
                self.regressions, Regression.describe)
        verdict = (f"{len(self.new_failures)} new failure(s), {len(self.regressions)} "
                   f"regression(s)") if self.exit_status else "no new failure, no regression"
        lines.append(f"{verdict}: exit {self.exit_status}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def changes(items: list[Change]) -> list[dict[str, Any]]:
            return [{"id": c.id, "before": c.before, "after": c.after, "reason": c.reason}
                    for c in items]
        return {
            "a": {"label": self.a.label, "tier": self.a.tier, "cells": len(self.a.cells)},
            "b": {"label": self.b.label, "tier": self.b.tier, "cells": len(self.b.cells)},
            "threshold": self.threshold,
            "new_failures": changes(self.new_failures), "fixes": changes(self.fixes),
            "newly_flaky": changes(self.newly_flaky),
            "still_failing": changes(self.still_failing),
            "added": changes(self.added), "removed": changes(self.removed),
            "regressions": [{"id": r.id, "figure": r.figure.key, "before": r.before,
                             "after": r.after} for r in self.regressions],
            "exit_status": self.exit_status,
        }


def compare(a: Side, b: Side, threshold: float = DEFAULT_THRESHOLD,
            figures: tuple[Figure, ...] = FIGURES) -> Comparison:
    """What changed from ``a`` (before) to ``b`` (after)."""
    if a.tier != b.tier:
        raise CompareError(f"A is tier {a.tier!r} ({a.label}), B is tier {b.tier!r} "
                           f"({b.label}): compare two runs of one tier")
    out = Comparison(a, b, threshold, figures)
    for cid, after in b.cells.items():
        before = a.cells.get(cid)
        if before is None:
            out.added.append(Change(cid, None, after.verdict, after.reason))
            if after.failing:
                out.new_failures.append(Change(cid, None, after.verdict, after.reason))
            continue
        if after.failing and not before.failing:
            out.new_failures.append(Change(cid, before.verdict, after.verdict, after.reason))
        elif after.failing:
            out.still_failing.append(Change(cid, before.verdict, after.verdict, after.reason))
        elif before.failing and after.verdict == "passed":
            out.fixes.append(Change(cid, before.verdict, after.verdict))
        if after.verdict == "flaky" and before.verdict != "flaky":
            out.newly_flaky.append(Change(cid, before.verdict, after.verdict, after.reason))
        if before.verdict in ("passed", "flaky") and after.verdict in ("passed", "flaky"):
            for f in figures:
                old, new = getattr(before, f.key), getattr(after, f.key)
                if old is None or new is None:
                    continue
                if (new - old) / f.scale >= f.floor and new > old * (1 + threshold):
                    out.regressions.append(Regression(cid, f, float(old), float(new)))
    out.removed = [Change(cid, o.verdict, None) for cid, o in a.cells.items()
                   if cid not in b.cells]
    return out
