"""Console output in the manner of a CI tool: one live progress line while the
run goes, then a table of cells, then where the full results are."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from harness.known_issues import known_failure_summary
from harness.progress import MigrationProgress
from harness.results import CellResult, RunState
from harness.units import GiB, KiB, MiB

if TYPE_CHECKING:
    from harness.report.history import CellRow, RunRow

#: A verdict as consoles and the HTML report's badges spell it.
MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "error": "ERROR",
        "flaky": "FLAKY", "known-failure": "KNOWN-FAIL"}


class Progress:
    """Listener for ``run_cells``: a rewritten status line on a terminal, plain
    lines otherwise (CI logs keep one line per finished cell)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, event: str, state: RunState) -> None:
        done = len(state.results)
        if event in ("phase", "cell-start", "progress") and self.tty:
            elapsed = time.monotonic() - state.started
            # One cell: its phase and migration; several (-j N): only their ids.
            cell = state.progress.get(state.running[0]) if len(state.running) == 1 else None
            phase = cell.phase if cell is not None else "running"
            moving = f"  {migration_text(cell.migration)}" if cell and cell.migration else ""
            self._line(f"[{done + 1}/{state.total}] {', '.join(state.running)}: {phase}{moving}  "
                       f"({elapsed:.0f} s)")
        elif event == "cell-end":
            self._line(cell_line(done, state.total, state.results[-1]), final=True)

    def _line(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            if final:
                self.out.write(text + "\n")
        self.out.flush()


def cell_line(done: int, total: int, r: CellResult) -> str:
    """The one line a finished cell gets (plain and live progress alike)."""
    msg = f"[{done}/{total}] {MARK.get(r.verdict, r.verdict)} {r.id} ({r.duration:.1f} s)"
    if r.reason:
        msg += f": {r.reason}"
    return msg


def _size(n: int) -> str:
    if n >= 10 * GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / KiB:.0f} KiB"


def migration_text(m: MigrationProgress) -> str:
    """A running migration in one line: "active  iter 3  remaining 12.5 MiB
    sent 301.2 MiB  dirty 2.1k pages/s" (the figures QEMU gave, as they came)."""
    parts = [m.status or "?"]
    if m.iteration is not None:
        parts.append(f"iter {m.iteration}")
    if m.remaining is not None:
        parts.append(f"remaining {_size(m.remaining)}")
    if m.transferred is not None:
        parts.append(f"sent {_size(m.transferred)}")
    if m.dirty_rate:
        rate = m.dirty_rate
        parts.append(f"dirty {rate / 1000:.1f}k pages/s" if rate >= 1000
                     else f"dirty {rate} pages/s")
    return "  ".join(parts)


def _fmt_ms(v: object) -> str:
    return "-" if v is None else f"{float(v):.0f}"  # type: ignore[arg-type]


def table(results: list[CellResult]) -> str:
    """One row per cell: verdict and the figures a reader wants first."""
    headers = ["cell", "verdict", "total ms", "downtime ms", "limit ms", "guest gap ms",
               "RAM", "guest"]
    rows = []
    for r in results:
        dt = r.check("downtime")
        ram = r.check("ram")
        guest = r.check("guest") or r.check("pattern")
        rows.append([
            r.id, MARK.get(r.verdict, r.verdict),
            _fmt_ms(r.figures.get("total_time_ms")),
            _fmt_ms(r.figures.get("downtime_ms")),
            _fmt_ms(dt.figures.get("downtime_limit_ms")) if dt else "-",
            _fmt_ms(dt.figures.get("guest_gap_ms")) if dt else "-",
            ("same" if ram.passed else f"{ram.figures['differing_pages']} pages differ") if ram else "-",
            ("ok" if guest.passed else "BROKEN") if guest else "-",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cols: "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()
    out = [line(headers), line("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def summary(state: RunState) -> str:
    counts = state.counts()
    parts = [f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped")]
    if counts.get("flaky"):
        parts.insert(1, f"{counts['flaky']} flaky")
    known = known_failure_summary(state.results)   # "1 known failure (e2k: ..., known-issue ...)"
    if known:
        parts.insert(1, known)
    text = ", ".join(parts) + f" in {time.monotonic() - state.started:.1f} s"
    if state.interrupted:
        text += f" (interrupted: {state.total - len(state.results)} cells not run)"
    return text


def history_table(runs: "list[RunRow]", by_cell: "dict[str, list[CellRow]]",
                  ids: list[str]) -> str:
    """A cell per line, a run per column (oldest first): verdict and QEMU's
    downtime in ms, ``.`` where the cell was not in that run."""
    heads = [f"#{r.id}" for r in runs]
    rows = []
    for cid in ids:
        got = {c.run_id: c for c in by_cell.get(cid, [])}
        cols = []
        for r in runs:
            c = got.get(r.id)
            if c is None:
                cols.append(".")
            else:
                mark = MARK.get(c.verdict, c.verdict)
                cols.append(mark if c.downtime_ms is None else f"{mark} {c.downtime_ms:.0f}")
        rows.append([cid, *cols])
    header = ["cell", *heads]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cols: "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    out = [f"{r.describe()}" for r in runs]
    out += ["", line(header), line("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append("(verdict and QEMU downtime in ms per run, oldest first; '.': not in that run)")
    return "\n".join(out)
