"""The history database on a real SQLite file: what a run stores, concurrent
writers, schema versions, and files it must refuse without touching."""
from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from harness.report.history import (SCHEMA_VERSION, History, HistoryError, default_location,
                                    run_record)
from harness.results import CellResult, CheckResult, RunState


def cell(cid: str, verdict: str = "passed", downtime: float = 40.0, total: float = 200.0,
         transferred: int = 100 << 20, **builds: str) -> CellResult:
    checks = [CheckResult("ram", verdict == "passed", "256 MiB identical",
                          {"differing_pages": 0, "first_differing_gpas": []}),
              CheckResult("downtime", True, "ok",
                          {"qemu_downtime_ms": downtime, "downtime_limit_ms": 300.0,
                           "tolerance_ms": 250.0, "guest_gap_ms": downtime + 5,
                           "tolerance_reason": "why"})]
    return CellResult(
        cid, verdict, "" if verdict == "passed" else "ram: 1 page(s) differ", checks=checks,
        figures={"downtime_ms": downtime, "total_time_ms": total, "ram_transferred": transferred,
                 "samples": [{"t": 0.1}]},
        phases={"launch": 0.5, "migrate": 0.2},
        builds={"source": {"name": "system", "version": builds.get("v", "7.2.22"),
                           "package": "Debian", "binary": "/usr/bin/qemu"},
                "destination": {"name": "system", "version": builds.get("v", "7.2.22")}},
        duration=1.5)


def state(tmp: Path, cells: list[CellResult], tier: str = "smoke", uid: str | None = None,
          interrupted: bool = False) -> RunState:
    meta = {"tier": tier, "seed": 0, "jobs": 1, "matrix": "m.yaml"}
    if uid:
        meta["run_id"] = uid
    return RunState(results_dir=tmp, total=len(cells), results=list(cells), meta=meta,
                    interrupted=interrupted)


def test_a_run_is_stored_with_its_cells_figures_builds_and_host(tmp_path):
    db = tmp_path / "sub" / "history.sqlite"
    with History(db) as h:
        run_id = h.record(run_record(state(tmp_path, [cell("a"), cell("b", "failed")])))
        row = h.run(run_id)
        assert row is not None and row.tier == "smoke" and row.entry == "run"
        assert row.counts == {"passed": 1, "failed": 1}
        assert row.builds["system"]["version"] == "7.2.22"
        assert row.host_node and row.started_at.endswith("Z")
        cells = {c.cell_id: c for c in h.cells([run_id])}
        assert cells["a"].downtime_ms == 40.0 and cells["a"].total_time_ms == 200.0
        assert cells["a"].transferred_bytes == 100 << 20 and cells["a"].guest_gap_ms == 45.0
        assert cells["b"].verdict == "failed" and "differ" in cells["b"].reason
        checks = {c["name"]: c for c in h.checks(run_id, "a")}
        assert checks["downtime"]["figures"]["downtime_limit_ms"] == 300.0
        assert "first_differing_gpas" not in checks["ram"]["figures"]  # lists stay in results.json
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT MAX(version) FROM mh_schema").fetchone()[0] == SCHEMA_VERSION


def test_runs_trend_and_filters(tmp_path):
    with History(tmp_path / "h.sqlite") as h:
        ids = [h.record(run_record(state(tmp_path, [cell("a", downtime=d)]))) for d in (10, 20, 30)]
        h.record(run_record(state(tmp_path, [cell("a")], tier="nightly")))
        h.record(run_record(state(tmp_path, [cell("a", downtime=99)], interrupted=True)))
        assert [r.id for r in h.runs("smoke")] == [ids[2] + 2, *reversed(ids)]
        assert [r.id for r in h.runs("smoke", complete=True)] == list(reversed(ids))
        runs, by_cell = h.trend("smoke", last=2)
        assert [r.id for r in runs] == ids[1:]
        assert [c.downtime_ms for c in by_cell["a"]] == [20.0, 30.0]
        runs, _ = h.trend("smoke", last=5, upto=ids[1])
        assert [r.id for r in runs] == ids[:2]


def test_the_same_run_id_recorded_twice_is_one_run(tmp_path):
    """pytest-xdist workers of one session share a run id: one run, all cells."""
    with History(tmp_path / "h.sqlite") as h:
        a = h.record(run_record(state(tmp_path, [cell("a")], uid="u1")))
        b = h.record(run_record(state(tmp_path, [cell("b"), cell("a", "failed")], uid="u1")))
        assert a == b
        assert {(c.cell_id, c.verdict) for c in h.cells([a])} == {("a", "failed"),
                                                                   ("b", "passed")}


def _writer(db: str, n: int, runs: int) -> None:
    tmp = Path(db).parent
    with History(db) as h:
        for i in range(runs):
            cells = [cell(f"w{n}-r{i}-c{j}") for j in range(50)]
            h.record(run_record(state(tmp, cells)))


def test_concurrent_writers_lose_no_rows(tmp_path):
    """Four processes each record 5 runs of 50 cells at the same time (as two
    runs at once, or pytest-xdist workers, do)."""
    db = str(tmp_path / "h.sqlite")
    History(db).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(db, n, 5)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM mh_runs").fetchone()[0] == 20
    assert con.execute("SELECT COUNT(*) FROM mh_cells").fetchone()[0] == 20 * 50
    assert con.execute("SELECT COUNT(DISTINCT run_id) FROM mh_cells").fetchone()[0] == 20


def test_a_corrupted_file_is_an_error_naming_it_and_left_as_it_is(tmp_path):
    db = tmp_path / "history.sqlite"
    garbage = b"this is not a database\n" * 500
    db.write_bytes(garbage)
    with pytest.raises(HistoryError) as exc:
        History(db)
    assert str(db) in str(exc.value) and "left as it is" in str(exc.value)
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.sqlite"]


def test_a_damaged_database_is_an_error_and_left_as_it_is(tmp_path):
    db = tmp_path / "history.sqlite"
    with History(db) as h:
        h.record(run_record(state(tmp_path, [cell(f"c{i}") for i in range(300)])))
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    data[4096:4096 * 4] = b"\xa5" * (4096 * 3)   # wreck the pages after the header page
    db.write_bytes(bytes(data))
    with pytest.raises(HistoryError) as exc:
        with History(db) as h:
            h.runs()
            h.cells([1])
    assert str(db) in str(exc.value)
    assert db.read_bytes() == bytes(data)


def test_a_newer_schema_is_an_error_and_left_as_it_is(tmp_path):
    db = tmp_path / "history.sqlite"
    History(db).close()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO mh_schema (version, applied_at) VALUES (?, 'later')",
                (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(HistoryError) as exc:
        History(db)
    assert str(db) in str(exc.value) and f"version {SCHEMA_VERSION + 1}" in str(exc.value)
    assert db.read_bytes() == before


def test_another_programs_database_is_refused(tmp_path):
    db = tmp_path / "other.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    with pytest.raises(HistoryError, match="not an mharness history database"):
        History(db)
    assert [r[0] for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]


def test_migrations_are_applied_in_order_and_once(tmp_path):
    """A database made by an older version gets the newer migrations only."""
    db = tmp_path / "h.sqlite"
    v1 = {1: ["CREATE TABLE mh_runs (id {serial}, uid TEXT UNIQUE)"]}
    History(db, migrations=v1).close()
    v2 = {**v1, 2: ["ALTER TABLE mh_runs ADD COLUMN note TEXT"],
          3: ["CREATE INDEX mh_runs_note ON mh_runs (note)"]}
    with History(db, migrations=v2) as h:
        assert h.schema_version == 3
    with History(db, migrations=v2) as h:   # nothing left to apply
        assert h.schema_version == 3
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT version FROM mh_schema ORDER BY version")] == [1, 2, 3]
    assert "note" in [r[1] for r in con.execute("PRAGMA table_info(mh_runs)")]


def test_readers_do_not_create_a_database(tmp_path):
    with pytest.raises(HistoryError, match="no history database"):
        History(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_default_location_follows_the_environment():
    assert default_location({}).endswith(".local/share/mharness/history.sqlite")
    assert default_location({"MHARNESS_HISTORY": "/x/h.sqlite"}) == "/x/h.sqlite"
    assert default_location({"MHARNESS_HISTORY": "off"}) is None
    assert default_location({"MHARNESS_HISTORY": "postgresql://u@h/db"}) == "postgresql://u@h/db"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="is a directory"):
        History(tmp_path)
