"""report.html without a browser: self-contained, escaped, and carrying what
each cell's section draws (the browser test draws it)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from harness.report.html import (MAX_POINTS, Trend, _samples, cell_data, decode_data,
                                 write_report_html)
from harness.results import CellResult, CheckResult, RunState

from test_report_history import cell


def data_of(page: str) -> dict:
    m = re.search(r'<script [^>]*id="mh-data"[^>]*>(.*?)</script>', page, re.S)
    assert m
    return decode_data(m.group(1))


def test_the_page_is_self_contained_and_has_a_section_per_cell(tmp_path):
    cells = [cell("x86-unix"), cell("x86-tcp", "failed"), CellResult("skip-me", "skipped", "no build")]
    path = write_report_html(RunState(results_dir=tmp_path, total=3, results=cells,
                                      meta={"tier": "smoke"}))
    page = path.read_text()
    assert path == tmp_path / "report.html"
    # No network: no external scripts, styles or images.
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page)
    assert "Plotly" in page and page.count("<details") == 3
    assert page.count('class="sq ') == 3
    assert 'href="#c-x86-tcp"' in page and 'id="c-x86-tcp"' in page
    assert [c["v"] for c in data_of(page)["cells"]] == ["passed", "failed", "skipped"]


def test_text_from_cells_cannot_become_markup(tmp_path):
    evil = CellResult("c", "failed", "</script><script>alert(1)</script><b>")
    page = write_report_html(RunState(results_dir=tmp_path, total=1, results=[evil])).read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert data_of(page)["cells"][0]["r"] == evil.reason


def test_samples_are_columns_thinned_keeping_every_iteration_change():
    samples = [{"t": i * 0.1, "status": "active", "transferred": i << 20,
                "remaining": (1000 - i) << 20, "dirty_rate": 100, "syncs": 1 + i // 250,
                "throttle": i % 100} for i in range(1000)]
    s = _samples(samples)
    assert s is not None and len(s["t"]) < MAX_POINTS + 10
    assert sorted(set(s["it"])) == [1, 2, 3, 4]
    assert s["tx"][0] == 0 and s["rem"][0] == 1000.0 and s["th"]
    assert s["sc"] == [[0, "active"]]
    i = s["it"].index(2)
    assert s["t"][i] == 25.0 and s["t"][i - 1] == 24.9   # both sides of the change kept


def test_a_short_completed_migration_gets_its_end_point():
    s = _samples([{"t": 2.0, "status": "setup"}, {"t": 2.1, "status": "active",
                  "transferred": 50 << 20, "remaining": 10 << 20, "syncs": 1}],
                 {"status": "completed", "total_time_ms": 300, "ram_transferred": 80 << 20,
                  "dirty_sync_count": 3})
    assert s is not None
    assert s["t"][-1] == 2.3 and s["sc"] == [[0, "setup"], [1, "active"], [2, "completed"]]
    assert s["tx"][-1] == 80.0 and s["rem"][-1] == 0.0 and s["it"][-1] == 3


def test_a_ram_failure_shows_counts_and_ranges(tmp_path):
    r = CellResult("c", "failed", "ram: 3 page(s) differ", checks=[CheckResult(
        "ram", False, "3 page(s) differ, first at guest-physical 0x345000",
        {"differing_pages": 3, "bytes_compared": 1 << 28,
         "first_differing_gpas": ["0x345000", "0x346000", "0x900000"]})])
    d = cell_data(r, tmp_path)
    assert d["ram"]["pages"] == 3
    assert d["ram"]["ranges"] == [["0x345000", "0x346fff", 2], ["0x900000", "0x900fff", 1]]


def test_logs_are_relative_links_and_trend_is_carried(tmp_path):
    logdir = tmp_path / "cells" / "c"
    logdir.mkdir(parents=True)
    for name in ("src.stderr", "dst.serial.log", "src.qmp.jsonl"):
        (logdir / name).write_text("x")
    r = cell("c")
    r.logdir = str(logdir)
    d = cell_data(r, tmp_path, [(0, "passed", 30.0), (1, "failed", None)])
    assert d["logs"] == {"dir": "cells/c",
                         "files": ["dst.serial.log", "src.qmp.jsonl", "src.stderr"]}
    assert d["tr"] == [[0, "passed", 30.0], [1, "failed", None]]
    page = write_report_html(RunState(results_dir=tmp_path, total=1, results=[r]),
                             Trend(runs=[(7, "2026-01-01T00:00:00Z"), (8, "x")],
                                   cells={"c": [(0, "passed", 30.0)]})).read_text()
    assert data_of(page)["runs"] == [[7, "2026-01-01T00:00:00Z"], [8, "x"]]


def test_long_figures_are_shortened(tmp_path):
    r = CellResult("c", "passed", checks=[CheckResult("coverage", True, "ok", {
        "covered": [{"path": f"/m/d{i}", "type": "t"} for i in range(40)],
        "numbers": list(range(100)), "text": "y" * 1000})])
    figs = cell_data(r, tmp_path)["ch"][0][4]
    assert figs["covered"] == "[40 entries]"
    assert len(figs["numbers"]) == 9 and figs["numbers"][-1] == "\u2026 92 more"
    assert len(figs["text"]) == 198


def test_an_interrupted_run_says_so(tmp_path):
    st = RunState(results_dir=tmp_path, total=5, results=[cell("a")], interrupted=True)
    assert "4 of 5 cells" in write_report_html(st).read_text()


def test_report_size_stays_small_per_cell(tmp_path):
    cells = []
    for i in range(200):
        r = cell(f"cell-{i}")
        r.figures["samples"] = [{"t": j * 0.1, "status": "active", "transferred": j << 20,
                                 "remaining": 1 << 30, "dirty_rate": 5000, "syncs": j // 10}
                                for j in range(300)]
        cells.append(r)
    page = write_report_html(RunState(results_dir=tmp_path, total=200, results=cells))
    data = data_of(page.read_text())
    per_cell = len(json.dumps(data, separators=(",", ":"))) / 200
    assert per_cell < 5000, per_cell
    # The data travels gzipped: well under a kilobyte a cell on top of plotly.js.
    assert Path(page).stat().st_size < 4_900_000 + 200 * 1500
