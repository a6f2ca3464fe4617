"""The history schema on a real PostgreSQL server, started here from Debian's
``postgresql`` package in a temporary folder (initdb + pg_ctl; as the
``postgres`` user when run as root, since initdb refuses root).  Skipped, with
the reason, when no server can be started."""
from __future__ import annotations

import glob
import multiprocessing
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.report.history import SCHEMA_VERSION, History, HistoryError, run_record
from harness.results import RunState

from test_report_history import cell, state

psycopg = pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) not installed")


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not found (Debian package 'postgresql')")
    folder = Path(tempfile.mkdtemp(prefix="mh-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120)

    out = run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    if out.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {out.stderr.strip()[-300:]}")
    out = run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
              "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
              "start")
    if out.returncode != 0:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {out.stderr.strip()[-200:]} {log[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg(pg_url):
    """A fresh database on the server for each test."""
    name = f"t{os.getpid()}_{_free_port()}"
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_same_schema_and_figures_on_postgresql(pg, tmp_path):
    with History(pg) as h:
        assert h.schema_version == SCHEMA_VERSION
        run_id = h.record(run_record(state(tmp_path, [cell("a"), cell("b", "failed")])))
        row = h.run(run_id)
        assert row is not None and row.counts == {"passed": 1, "failed": 1}
        cells = {c.cell_id: c for c in h.cells([run_id])}
        assert cells["a"].downtime_ms == 40.0 and cells["a"].transferred_bytes == 100 << 20
        again = h.record(run_record(state(tmp_path, [cell("c")], uid=row.uid)))
        assert again == run_id and len(h.cells([run_id])) == 3
        runs, by_cell = h.trend("smoke")
        assert [r.id for r in runs] == [run_id] and set(by_cell) == {"a", "b", "c"}


def _writer(url: str, n: int) -> None:
    with History(url) as h:
        for i in range(4):
            h.record(run_record(RunState(results_dir=Path("/tmp"), total=30, meta={"tier": "t"},
                                         results=[cell(f"w{n}-{i}-{j}") for j in range(30)])))


def test_concurrent_writers_on_postgresql(pg):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(pg, n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with psycopg.connect(pg) as con:
        assert con.execute("SELECT COUNT(*) FROM mh_runs").fetchone()[0] == 12
        assert con.execute("SELECT COUNT(*) FROM mh_cells").fetchone()[0] == 12 * 30
        assert con.execute("SELECT COUNT(*) FROM mh_schema").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_on_postgresql_is_refused(pg):
    History(pg).close()
    with psycopg.connect(pg, autocommit=True) as con:
        con.execute("INSERT INTO mh_schema (version, applied_at) VALUES (%s, 'later')",
                    (SCHEMA_VERSION + 1,))
    with pytest.raises(HistoryError, match=f"schema version {SCHEMA_VERSION + 1}"):
        History(pg)


def test_an_unreachable_server_is_an_error_without_the_password(pg_url):
    port = _free_port()
    with pytest.raises(HistoryError) as exc:
        History(f"postgresql://postgres:secret@127.0.0.1:{port}/postgres?connect_timeout=3")
    assert "secret" not in str(exc.value) and "***" in str(exc.value)
