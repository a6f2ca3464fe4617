"""results.json is what ``json.dumps(run, indent=2)`` gives, although each
cell is serialised once; summary.json carries the headline figures."""
from __future__ import annotations

import json
import platform
from pathlib import Path

from harness import __version__
from harness.report.files import SCHEMA, SUMMARY_SCHEMA, write_results_json
from harness.results import CellResult, CheckResult, RunState

from test_report_history import cell


def whole(st: RunState) -> str:
    data = {"schema": SCHEMA, "harness_version": __version__,
            "host": {"node": platform.node(), "machine": platform.machine(),
                     "python": platform.python_version()},
            "run": st.meta, "total_cells": st.total, "interrupted": st.interrupted,
            "counts": st.counts(), "cells": [r.to_json() for r in st.results]}
    return json.dumps(data, indent=2, default=str) + "\n"


def test_results_json_is_byte_for_byte_the_whole_dump(tmp_path):
    st = RunState(results_dir=tmp_path, total=3, meta={"tier": "smoke"})
    write_results_json(st)
    assert (tmp_path / "results.json").read_text() == whole(st)
    st.results.append(cell("a"))
    st.results.append(CellResult("b", "error", "QEMU died: \u00e9\n\"x\"", checks=[
        CheckResult("c", False, "s", {"nested": [1, {"p": Path("/x")}], "empty": {}})]))
    write_results_json(st)
    assert (tmp_path / "results.json").read_text() == whole(st)
    st.results[0].verdict = "flaky"    # a change after recording is seen
    st.results[0].reason = "failed before"
    st.interrupted = True
    write_results_json(st)
    assert (tmp_path / "results.json").read_text() == whole(st)


def test_summary_json_has_verdicts_and_headline_figures(tmp_path):
    st = RunState(results_dir=tmp_path, total=2, meta={"tier": "smoke"},
                  results=[cell("a", downtime=33.0), CellResult("b", "skipped", "no build")])
    write_results_json(st)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["schema"] == SUMMARY_SCHEMA and data["results_schema"] == SCHEMA
    rows = [dict(zip(data["columns"], row)) for row in data["cells"]]
    assert rows[0] == {"id": "a", "verdict": "passed", "reason": "", "downtime_ms": 33.0,
                       "total_time_ms": 200.0, "transferred_bytes": 100 << 20}
    assert rows[1]["verdict"] == "skipped" and rows[1]["downtime_ms"] is None
    assert (tmp_path / "summary.json").stat().st_mtime >= (tmp_path / "results.json").stat().st_mtime
