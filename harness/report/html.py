"""report.html: one self-contained page per run that a person reads first.

It opens from disk or from a CI artifact store, with no server and no
network: the plotting library (plotly.js, from the ``plotly`` PyPI package's
bundled ``plotly.min.js``) and the page's own script are inlined, and the
cells' data is one JSON block.  The grid (cells by target x capabilities /
mode / transport, coloured by verdict) and one collapsed section per cell are
plain HTML; a section's tables and plots are drawn by the page's script when
it is opened, so a 2,000-cell report stays a few MB and opens at once.

What goes into the JSON is chosen for reading, not for completeness:
results.json beside the page keeps everything.  Check figures are shortened
(long lists become counts), the ``query-migrate`` samples are kept as columns
in MiB and thinned to ``MAX_POINTS`` per cell, keeping every point where an
iteration or the migration state changes.
"""
from __future__ import annotations

import base64
import datetime as _dt
import gzip
import html
import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from harness import __version__
from harness.fileio import write_atomic
from harness.report.console import MARK
from harness.report.figures import capabilities_label, grid_column, grid_row, key_figures
from harness.report.html_assets import SCRIPT, STYLE
from harness.results import CellResult, RunState
from harness.units import PAGE, MiB

log = logging.getLogger(__name__)

REPORT = "report.html"
#: Points per plotted series at most (a plot is a few hundred pixels wide).
MAX_POINTS = 120
_VERDICTS = ("passed", "failed", "error", "known-failure", "flaky", "skipped")
#: Cell figures left out of the page: they are in results.json, and large.
_SKIP_FIGURES = {"samples", "query_migrate", "coverage"}


@dataclass
class Trend:
    """Verdict and downtime of each cell over the last runs of its tier (from
    the history database), oldest run first."""

    #: (history run id, ISO start time) of each run.
    runs: list[tuple[int, str]] = field(default_factory=list)
    #: cell id -> (index into ``runs``, verdict, QEMU downtime ms).
    cells: dict[str, list[tuple[int, str, float | None]]] = field(default_factory=dict)


def plotly_js() -> str:
    """plotly.js as bundled by the ``plotly`` package (no network, no CDN)."""
    try:
        text = (resources.files("plotly") / "package_data" / "plotly.min.js").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        log.warning("plotly.min.js not available (%s): report without plots", exc)
        return "window.Plotly = undefined;"
    # Inline in a <script>: the text must not close the element.
    return text.replace("</script", "<\\/script")


# --- the data of one cell -------------------------------------------------------------------


def _compact(value: Any, depth: int = 0) -> Any:
    """A figure shortened for reading: long strings cut, long lists and lists
    of records replaced by their length."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return round(value, 3) if abs(value) < 1e6 else round(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:197] + "\u2026"
    if isinstance(value, dict):
        if depth >= 2:
            return f"{{{len(value)} keys}}"
        items = list(value.items())
        out = {str(k): _compact(v, depth + 1) for k, v in items[:16]}
        if len(items) > 16:
            out["\u2026"] = f"{len(items) - 16} more"
        return out
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict) and (len(value) > 3 or depth >= 1):
            return f"[{len(value)} entries]"
        items = [_compact(x, depth + 1) for x in value[:8]]
        if len(value) > 8:
            items.append(f"\u2026 {len(value) - 8} more")
        return items
    return str(value)[:200]


def _mib(v: Any) -> float | None:
    return round(v / MiB, 2) if isinstance(v, (int, float)) else None


def _samples(samples: Sequence[dict[str, Any]],
             figures: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The samples as columns, thinned to MAX_POINTS, keeping every change of
    iteration (dirty-sync-count) and state.

    A migration shorter than a few sample periods has one or two samples; when
    it completed and the first sample caught it in ``setup`` (the sampler
    starts right after ``migrate``), a last point at first-sample time plus
    QEMU's ``total-time`` shows where it ended (remaining 0, the final
    ``transferred``).
    """
    rows = [s for s in samples if isinstance(s, dict) and isinstance(s.get("t"), (int, float))]
    if not rows:
        return None
    f = figures or {}
    if f.get("status") == "completed" and rows[0].get("status") == "setup" \
            and isinstance(f.get("total_time_ms"), (int, float)) \
            and rows[-1].get("status") != "completed":
        end = rows[0]["t"] + f["total_time_ms"] / 1000
        if end > rows[-1]["t"]:
            rows.append({"t": end, "status": "completed", "remaining": 0,
                         "transferred": f.get("ram_transferred"),
                         "syncs": f.get("dirty_sync_count", rows[-1].get("syncs")),
                         "dirty_rate": None, "mbps": f.get("mbps")})
    keep = set(range(0, len(rows), max(1, -(-len(rows) // MAX_POINTS))))
    keep.add(len(rows) - 1)
    for i in range(1, len(rows)):
        if rows[i].get("syncs") != rows[i - 1].get("syncs") or \
                rows[i].get("status") != rows[i - 1].get("status"):
            keep.update((i - 1, i))
    rows = [rows[i] for i in sorted(keep)]
    out: dict[str, Any] = {
        "t": [round(s["t"], 3) for s in rows],
        "rem": [_mib(s.get("remaining")) for s in rows],
        "tx": [_mib(s.get("transferred")) for s in rows],
        "dr": [s.get("dirty_rate") for s in rows],
        "it": [s.get("syncs") for s in rows],
        # The state only where it changes: [index, state].
        "sc": [[i, s.get("status")] for i, s in enumerate(rows)
               if i == 0 or s.get("status") != rows[i - 1].get("status")],
    }
    if any("throttle" in s for s in rows):
        out["th"] = [s.get("throttle") for s in rows]
    if any(s.get("mbps") is not None for s in rows):
        out["mbps"] = [round(s["mbps"], 1) if isinstance(s.get("mbps"), (int, float)) else None
                       for s in rows]
    return out


def _ram_diff(r: CellResult) -> dict[str, Any] | None:
    """The RAM check's difference summary: count, first pages, and those
    first pages merged into contiguous ranges."""
    ram = r.check("ram")
    if ram is None or ram.passed:
        return None
    f = ram.figures
    gpas = []
    for g in f.get("first_differing_gpas") or []:
        try:
            gpas.append(int(str(g), 0))
        except ValueError:
            continue
    ranges: list[list[int]] = []
    for g in sorted(gpas):
        if ranges and g <= ranges[-1][1] + PAGE:
            ranges[-1][1] = max(ranges[-1][1], g)
        else:
            ranges.append([g, g])
    return {"pages": f.get("differing_pages"), "bytes": f.get("bytes_compared"),
            "first": [hex(g) for g in gpas[:16]],
            "ranges": [[hex(a), hex(b + PAGE - 1), (b - a) // PAGE + 1] for a, b in ranges[:16]],
            "explained": f.get("explained_pages"), "summary": ram.summary}


def _logs(r: CellResult, results_dir: Path) -> dict[str, Any] | None:
    """The cell's kept log folder, relative to the results folder (links work
    wherever the folder is copied), and the files in it."""
    if not r.logdir:
        return None
    folder = Path(r.logdir)
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return None
    try:
        rel = Path(os.path.relpath(folder, results_dir))
    except ValueError:
        rel = folder
    return {"dir": urllib.parse.quote(rel.as_posix()), "files": names} if names else None


def _builds(r: CellResult) -> str:
    parts = []
    for side in ("source", "destination"):
        b = r.builds.get(side) if isinstance(r.builds, dict) else None
        if isinstance(b, dict):
            parts.append(f"{b.get('name')} {b.get('version') or ''}".strip())
    if not parts:
        parts = [str(r.inputs.get("src_build", "?")), str(r.inputs.get("dst_build", "?"))]
    return " \u2192 ".join(parts)


def cell_data(r: CellResult, results_dir: Path,
              trend: list[tuple[int, str, float | None]] | None = None) -> dict[str, Any]:
    """What the page shows of one cell (short keys: 2,000 of these go in one file)."""
    inputs = r.inputs or {}
    target = inputs.get("target") if isinstance(inputs.get("target"), dict) else {}
    k = {key: v for key, v in key_figures(r).to_json().items() if v is not None}
    dt = r.check("downtime")
    if dt is not None and isinstance(dt.figures.get("guest_bound_ms"), (int, float)):
        k["guest_bound_ms"] = dt.figures["guest_bound_ms"]
    mig = {key: _compact(v) for key, v in r.figures.items()
           if key not in _SKIP_FIGURES and not isinstance(v, dict)
           and not (isinstance(v, list) and v and isinstance(v[0], dict))}
    data: dict[str, Any] = {
        "id": r.id, "v": str(r.verdict), "r": r.reason, "d": round(r.duration, 2),
        "in": {"target": target.get("name"), "machine": target.get("machine"),
               "accel": target.get("accel"), "transport": inputs.get("transport"),
               "mode": inputs.get("mode"), "caps": capabilities_label(inputs),
               "params": ", ".join(f"{a}={b}" for a, b in (inputs.get("parameters") or {}).items()),
               "builds": _builds(r), "fault": inputs.get("fault"),
               "xfail": inputs.get("expect_fail") or [], "origin": inputs.get("origin"),
               "timeout": inputs.get("timeout")},
        "k": k,
        "ch": [[c.name, c.passed, c.expected_to_fail, c.summary, _compact(c.figures)]
               for c in r.checks],
        "mf": mig,
        "ph": {a: round(b, 3) for a, b in r.phases.items() if isinstance(b, (int, float))},
    }
    logs = _logs(r, results_dir)
    if logs:
        data["logs"] = logs
    samples = r.figures.get("samples")
    if isinstance(samples, list) and samples:
        s = _samples(samples, r.figures)
        if s is not None:
            data["s"] = s
    ram = _ram_diff(r)
    if ram is not None:
        data["ram"] = ram
    if trend:
        data["tr"] = [[i, v, d] for i, v, d in trend]
    return data


# --- the page --------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def encode_data(data: Any) -> str:
    """The page's data: JSON, gzipped, in base64 (the page inflates it with the
    browser's own DecompressionStream).  2,000 cells of JSON are ~4-6 MB, most
    of it the same keys and texts over and over; gzipped they are a tenth of
    that, which keeps the page (plotly.js is 4.8 MB of it) under 10 MB.
    Base64 has no character that could end the <script> element."""
    text = json.dumps(data, separators=(",", ":"), default=str, ensure_ascii=False)
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=6,
                                          mtime=0)).decode("ascii")


def decode_data(block: str) -> Any:
    """The inverse of :func:`encode_data` (tests and tools reading a page)."""
    return json.loads(gzip.decompress(base64.b64decode(block)).decode("utf-8"))


def _grid(results: Sequence[CellResult]) -> str:
    rows: dict[str, dict[str, list[tuple[int, CellResult]]]] = {}
    cols: dict[str, None] = {}
    for i, r in enumerate(results):
        row, col = grid_row(r.inputs or {}, r.id), grid_column(r.inputs or {})
        cols.setdefault(col)
        rows.setdefault(row, {}).setdefault(col, []).append((i, r))
    out = ['<table class="grid"><thead><tr><th class="corner">target \u00b7 builds '
           '\\ capabilities \u00b7 mode \u00b7 transport</th>']
    out += [f'<th class="col"><span>{_e(c)}</span></th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for row, by_col in rows.items():
        out.append(f'<tr><th class="row">{_e(row)}</th>')
        for col in cols:
            squares = "".join(
                f'<a class="sq v-{_e(r.verdict)}" href="#c-{_e(r.id)}" data-i="{i}" '
                f'title="{_e(r.id)}: {_e(r.verdict)}{(": " + _e(r.reason[:200])) if r.reason else ""}">'
                '</a>' for i, r in by_col.get(col, []))
            out.append(f"<td>{squares}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _header(state: RunState, results: Sequence[CellResult], elapsed: float | None) -> str:
    meta = state.meta or {}
    counts = state.counts()
    tier = meta.get("tier") or "?"
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    builds: dict[str, str] = {}
    for r in results:
        for side in ("source", "destination"):
            b = r.builds.get(side) if isinstance(r.builds, dict) else None
            if isinstance(b, dict) and b.get("name") and not b.get("missing"):
                builds.setdefault(str(b["name"]), f"{b.get('version')} ({b.get('package') or b.get('binary')})")
    facts = [("tier", tier), ("seed", meta.get("seed", 0)), ("written", when),
             ("results", str(state.results_dir)), ("harness", __version__)]
    for key in ("select", "shard", "jobs", "rerun_of", "entry", "run_id"):
        if meta.get(key) not in (None, "", 1) or (key == "jobs" and meta.get(key, 1) != 1):
            facts.append((key, meta[key]))
    if elapsed is not None:
        facts.append(("duration", f"{elapsed:.1f} s"))
    host = " ".join(str(x) for x in (os.uname().nodename, os.uname().machine,
                                     os.uname().release)) if hasattr(os, "uname") else ""
    facts.append(("host", host))
    for name, text in builds.items():
        facts.append((f"build {name}", text))
    badges = "".join(f'<span class="badge v-{v}">{counts[v]} {v}</span>'
                     for v in _VERDICTS if counts.get(v))
    total = state.total or len(results)
    interrupted = (f'<p class="warn">Interrupted: {total - len(results)} of {total} cells '
                   'were not run.</p>') if state.interrupted else ""
    failing = [r for r in results if r.verdict in ("failed", "error", "known-failure", "flaky")]
    fail_list = ""
    if failing:
        items = "".join(f'<li><a href="#c-{_e(r.id)}"><b class="vb v-{_e(r.verdict)}">'
                        f'{MARK.get(r.verdict, r.verdict)}</b> {_e(r.id)}</a>'
                        f'<span class="why">{_e(r.reason[:300])}</span></li>'
                        for r in failing[:200])
        more = f"<li>\u2026 and {len(failing) - 200} more</li>" if len(failing) > 200 else ""
        fail_list = f'<section id="failures"><h2>Not passed</h2><ul>{items}{more}</ul></section>'
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (f'<header><h1>mharness report: tier {_e(tier)}</h1>'
            f'<p class="counts">{len(results)} cells: {badges}</p>{interrupted}'
            f'<dl class="facts">{dl}</dl></header>{fail_list}')


def _filters() -> str:
    boxes = "".join(f'<label class="fv v-{v}"><input type="checkbox" value="{v}" checked> {v}'
                    f'</label>' for v in _VERDICTS)
    return ('<nav id="filters"><input id="q" type="search" placeholder="filter cells: words '
            'in the id, -word to leave out" size="48"> ' + boxes +
            ' <span id="shown"></span></nav>')


def _sections(results: Sequence[CellResult]) -> str:
    out = []
    for i, r in enumerate(results):
        reason = f'<span class="why">{_e(r.reason[:300])}</span>' if r.reason else ""
        out.append(f'<details class="cell" id="c-{_e(r.id)}" data-i="{i}" data-v="{_e(r.verdict)}">'
                   f'<summary><b class="vb v-{_e(r.verdict)}">{MARK.get(r.verdict, r.verdict)}'
                   f'</b> <code>{_e(r.id)}</code> <span class="dur">{r.duration:.1f} s</span>'
                   f'{reason}</summary><div class="body"></div></details>')
    return "".join(out)


def render(state: RunState, trend: Trend | None = None, elapsed: float | None = None) -> str:
    """The page for ``state``'s results, as text."""
    results = list(state.results)
    trend_cells = trend.cells if trend else {}
    data = {
        "cells": [cell_data(r, state.results_dir, trend_cells.get(r.id)) for r in results],
        "runs": [[rid, started] for rid, started in (trend.runs if trend else [])],
    }
    tier = (state.meta or {}).get("tier") or "?"
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>mharness: tier {_e(tier)}, {len(results)} cells</title>"
        f"<style>{STYLE}</style></head><body>",
        _header(state, results, elapsed),
        '<section id="matrix"><h2>Matrix</h2>', _filters(),
        '<div class="gridwrap">', _grid(results), "</div></section>",
        '<section id="cells"><h2>Cells</h2>', _sections(results), "</section>",
        '<footer>Written by mharness; every figure is also in results.json beside this '
        "file.</footer>",
        f'<script type="application/octet-stream" id="mh-data" data-encoding="gzip+base64">'
        f'{encode_data(data)}</script>',
        f"<script>{plotly_js()}</script>",
        f"<script>{SCRIPT}</script></body></html>\n",
    ])


def write_report_html(state: RunState, trend: Trend | None = None,
                      elapsed: float | None = None) -> Path:
    """Write ``report.html`` into the run's results folder."""
    t0 = time.monotonic()
    path = state.results_dir / REPORT
    write_atomic(path, render(state, trend, elapsed))
    log.info("report %s written in %.2f s", path, time.monotonic() - t0)
    return path
