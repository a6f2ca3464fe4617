"""``mharness compare``: what it finds between two runs, and its exit status
(0 nothing new, 1 a new failure or regression, 2 bad input)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.compare import (CompareError, Side, compare, last_two, previous_run,
                                    side_from_folder)
from harness.report.files import write_results_json
from harness.report.history import History, run_record
from harness.results import RunState

from test_report_history import cell

ROOT = Path(__file__).resolve().parent.parent


def folder(path: Path, cells, tier: str = "smoke", uid: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    st = RunState(results_dir=path, total=len(cells), results=list(cells),
                  meta={"tier": tier, "seed": 0, **({"run_id": uid} if uid else {})})
    write_results_json(st)
    return path


def mharness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60,
                          env={**os.environ, "MHARNESS_HISTORY": "off", **(env or {})})


def test_new_failures_fixes_flaky_added_removed_and_regressions(tmp_path):
    a = folder(tmp_path / "a", [cell("same"), cell("breaks"), cell("fixed", "failed"),
                                cell("flakes"), cell("gone"), cell("slower", downtime=50),
                                cell("still", "error")])
    b = folder(tmp_path / "b", [cell("same", downtime=60), cell("breaks", "failed"),
                                cell("fixed"), cell("flakes", "flaky"), cell("new"),
                                cell("new-bad", "error"), cell("slower", downtime=400),
                                cell("still", "failed")])
    result = compare(side_from_folder(a), side_from_folder(b))
    assert [c.id for c in result.new_failures] == ["breaks", "new-bad"]
    assert [c.id for c in result.fixes] == ["fixed"]
    assert [c.id for c in result.newly_flaky] == ["flakes"]
    assert [c.id for c in result.still_failing] == ["still"]
    assert [c.id for c in result.added] == ["new", "new-bad"]
    assert [c.id for c in result.removed] == ["gone"]
    assert [(r.id, r.figure.key) for r in result.regressions] == [("slower", "downtime_ms")]
    assert result.exit_status == 1
    text = result.text()
    assert "breaks: passed -> failed" in text and "slower: downtime 50 ms -> 400 ms" in text


def test_small_or_relative_only_changes_are_not_regressions(tmp_path):
    a = folder(tmp_path / "a", [cell("x", downtime=10, total=100, transferred=10 << 20)])
    # +500% but under the floors (100 ms, 1000 ms, 64 MiB); then over a floor but +20%.
    b = folder(tmp_path / "b", [cell("x", downtime=60, total=590, transferred=60 << 20)])
    assert compare(side_from_folder(a), side_from_folder(b)).regressions == []
    c = folder(tmp_path / "c", [cell("x", downtime=1000, total=10000, transferred=1000 << 20)])
    d = folder(tmp_path / "d", [cell("x", downtime=1200, total=12000, transferred=1200 << 20)])
    assert compare(side_from_folder(c), side_from_folder(d)).regressions == []
    e = folder(tmp_path / "e", [cell("x", downtime=2500, total=25000, transferred=3000 << 20)])
    found = compare(side_from_folder(c), side_from_folder(e))
    assert {r.figure.key for r in found.regressions} == {"downtime_ms", "total_time_ms",
                                                          "transferred_bytes"}


def test_figures_of_failed_cells_are_not_compared(tmp_path):
    a = folder(tmp_path / "a", [cell("x", "failed", total=100)])
    b = folder(tmp_path / "b", [cell("x", "failed", total=60000)])
    assert compare(side_from_folder(a), side_from_folder(b)).regressions == []


def test_summary_and_results_json_give_the_same_side(tmp_path):
    a = folder(tmp_path / "a", [cell("x"), cell("y", "failed", downtime=7)])
    from_summary = side_from_folder(a)
    (a / "summary.json").unlink()
    assert side_from_folder(a).cells == from_summary.cells
    # A summary older than results.json is not trusted.
    folder(tmp_path / "a", [cell("x", "failed")])
    os.utime(a / "results.json", (2e9, 2e9))
    assert side_from_folder(a).cells["x"].verdict == "failed"


def test_bad_input_is_compare_error(tmp_path):
    with pytest.raises(CompareError, match="no such results folder"):
        side_from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no results.json"):
        side_from_folder(tmp_path / "empty")
    old = folder(tmp_path / "old", [cell("x")])
    (old / "summary.json").unlink()
    data = json.loads((old / "results.json").read_text())
    (old / "results.json").write_text(json.dumps({**data, "schema": "mharness-results/0"}))
    with pytest.raises(CompareError, match="schema 'mharness-results/0'"):
        side_from_folder(old)
    with pytest.raises(CompareError, match="tier 'smoke'.*tier 'nightly'"):
        compare(Side("a", "smoke"), Side("b", "nightly"))


def test_default_runs_come_from_history(tmp_path):
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        st = lambda cells, tier="smoke", **kw: RunState(  # noqa: E731
            results_dir=tmp_path, total=len(cells), results=cells, meta={"tier": tier}, **kw)
        first = h.record(run_record(st([cell("x")])))
        h.record(run_record(st([cell("x")], tier="nightly")))
        h.record(run_record(st([cell("x", "failed")], interrupted=True)))
        second = h.record(run_record(st([cell("x", "failed")])))
        a, b = last_two(h, None)
        assert (a.history_id, b.history_id) == (first, second)
        assert [c.id for c in compare(a, b).new_failures] == ["x"]
        only = h.record(run_record(st([cell("y")], tier="alone")))
        with pytest.raises(CompareError, match="no earlier complete run"):
            last_two(h, "alone")
        assert previous_run(h, Side("f", "smoke", "run", uid="nope")).history_id == second
        assert only


def test_cli_exit_status(tmp_path):
    a = folder(tmp_path / "a", [cell("x"), cell("y")])
    same = folder(tmp_path / "same", [cell("x"), cell("y")])
    worse = folder(tmp_path / "worse", [cell("x"), cell("y", "failed")])
    slower = folder(tmp_path / "slower", [cell("x", downtime=900), cell("y")])
    other = folder(tmp_path / "other", [cell("x")], tier="nightly")

    out = mharness("compare", str(a), str(same))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no new failure, no regression" in out.stdout
    out = mharness("compare", str(a), str(worse))
    assert out.returncode == 1 and "new failures (1)" in out.stdout
    out = mharness("compare", str(a), str(slower), "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["regressions"][0]["figure"] == "downtime_ms"
    out = mharness("compare", str(a), str(slower), "--floor", "downtime=1000")
    assert out.returncode == 0, out.stdout

    out = mharness("compare", str(a), str(tmp_path / "missing"))
    assert out.returncode == 2 and "no such results folder" in out.stderr
    out = mharness("compare", str(a), str(other))
    assert out.returncode == 2 and "tier 'nightly'" in out.stderr
    (same / "summary.json").unlink()
    (same / "results.json").write_text(json.dumps({"schema": "mharness-results/9", "cells": []}))
    out = mharness("compare", str(a), str(same))
    assert out.returncode == 2 and "mharness-results/9" in out.stderr
    out = mharness("compare", "--history", str(tmp_path / "none.sqlite"))
    assert out.returncode == 2 and "no history database" in out.stderr


def test_cli_compare_and_history_over_history_ids(tmp_path):
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        for d in (40, 45, 500):
            h.record(run_record(RunState(results_dir=tmp_path, total=1, meta={"tier": "smoke"},
                                         results=[cell("x-unix", downtime=d), cell("y-tcp")])))
    out = mharness("compare", "1", "2", "--history", str(db))
    assert out.returncode == 0, out.stdout + out.stderr
    out = mharness("compare", "--history", str(db))
    assert out.returncode == 1 and "x-unix: downtime 45 ms -> 500 ms" in out.stdout
    out = mharness("history", "--history", str(db), "-k", "unix", "-n", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row = next(line for line in lines if line.startswith("x-unix"))
    assert row.split() == ["x-unix", "PASS", "45", "PASS", "500"]
    assert not any(line.startswith("y-tcp") for line in lines)
