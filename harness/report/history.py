"""Run-over-run history: every run's cells, verdicts and headline figures in
one database, so a nightly's owner can see what broke since yesterday and
whether downtime creeps up.

SQLite by default (``~/.local/share/mharness/history.sqlite``; ``--history
PATH`` or ``MHARNESS_HISTORY`` elsewhere), the same schema on PostgreSQL when
given a ``postgresql://`` URL (a CI fleet's shared history).

Why it is built this way:

- One transaction per run (``record``): a reader never sees half a run, and
  two runs (or pytest-xdist workers sharing one run id) writing at the same
  time both land whole.  SQLite runs in WAL mode with a long busy timeout and
  takes its write lock up front (``BEGIN IMMEDIATE``), so concurrent writers
  queue instead of failing with "database is locked" half way through.
- The schema is versioned (``mh_schema``) and upgraded by numbered
  migrations, each in its own transaction.  A database whose version is newer
  than this code, one that is not a history database, or a file SQLite cannot
  read is an error naming the file; it is never recreated, truncated or
  "repaired": it may be the only record of months of nightlies.
- Tables are prefixed ``mh_`` so a shared PostgreSQL database can hold them
  beside other applications' tables.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness import __version__
from harness.errors import HarnessError
from harness.report.figures import key_figures
from harness.results import CellResult, RunState

log = logging.getLogger(__name__)

ENV = "MHARNESS_HISTORY"
DEFAULT_PATH = Path("~/.local/share/mharness/history.sqlite")
#: Values of MHARNESS_HISTORY that turn history off (as --no-history does).
OFF = ("off", "none", "no", "0")
#: Seconds a SQLite writer waits for another writer's transaction to end.
BUSY_TIMEOUT = 60.0


class HistoryError(HarnessError):
    """The history database cannot be used; the message names it."""


# --- schema -------------------------------------------------------------------------------

#: Numbered migrations: version N's statements turn a version N-1 database
#: into version N.  ``{serial}`` is the dialect's auto-numbered primary key.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE mh_runs (
            id {serial},
            uid TEXT NOT NULL UNIQUE,
            tier TEXT NOT NULL,
            entry TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            duration_s DOUBLE PRECISION,
            seed BIGINT,
            matrix TEXT,
            select_expr TEXT,
            shard TEXT,
            jobs INTEGER,
            harness_version TEXT,
            host_node TEXT,
            host_machine TEXT,
            host_kernel TEXT,
            host_cpus INTEGER,
            python TEXT,
            results_dir TEXT,
            interrupted INTEGER NOT NULL DEFAULT 0,
            builds TEXT
        )""",
        "CREATE INDEX mh_runs_tier ON mh_runs (tier, entry, id)",
        """CREATE TABLE mh_cells (
            run_id BIGINT NOT NULL REFERENCES mh_runs (id),
            cell_id TEXT NOT NULL,
            verdict TEXT NOT NULL,
            reason TEXT,
            duration_s DOUBLE PRECISION,
            downtime_ms DOUBLE PRECISION,
            total_time_ms DOUBLE PRECISION,
            setup_time_ms DOUBLE PRECISION,
            transferred_bytes BIGINT,
            guest_gap_ms DOUBLE PRECISION,
            downtime_limit_ms DOUBLE PRECISION,
            tolerance_ms DOUBLE PRECISION,
            src_build TEXT,
            dst_build TEXT,
            src_version TEXT,
            dst_version TEXT,
            checks TEXT,
            phases TEXT,
            PRIMARY KEY (run_id, cell_id)
        )""",
        "CREATE INDEX mh_cells_cell ON mh_cells (cell_id, run_id)",
    ],
}
SCHEMA_VERSION = max(MIGRATIONS)

_CELL_COLUMNS = ("run_id", "cell_id", "verdict", "reason", "duration_s", "downtime_ms",
                 "total_time_ms", "setup_time_ms", "transferred_bytes", "guest_gap_ms",
                 "downtime_limit_ms", "tolerance_ms", "src_build", "dst_build", "src_version",
                 "dst_version", "checks", "phases")
_RUN_COLUMNS = ("uid", "tier", "entry", "started_at", "finished_at", "duration_s", "seed",
                "matrix", "select_expr", "shard", "jobs", "harness_version", "host_node",
                "host_machine", "host_kernel", "host_cpus", "python", "results_dir",
                "interrupted", "builds")


# --- what is stored -----------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run as it goes into the history."""

    uid: str
    tier: str
    #: How the run was started: ``run`` (mharness run) or ``pytest``.
    entry: str
    started_at: str
    finished_at: str
    duration_s: float
    meta: dict[str, Any]
    host: dict[str, Any]
    results_dir: str
    interrupted: bool
    cells: list[CellResult]


@dataclass
class RunRow:
    """A run read back from the history (counts come from its cells)."""

    id: int
    uid: str
    tier: str
    entry: str
    started_at: str
    finished_at: str | None
    duration_s: float | None
    seed: int | None
    results_dir: str | None
    interrupted: bool
    harness_version: str | None
    host_node: str | None
    builds: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def cells(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        return (f"#{self.id} {self.started_at} tier {self.tier} ({self.entry}) "
                f"{self.cells} cells: {counts or 'none'}"
                + (" [interrupted]" if self.interrupted else ""))


@dataclass
class CellRow:
    """One cell of one run, read back from the history."""

    run_id: int
    cell_id: str
    verdict: str
    reason: str
    duration_s: float | None
    downtime_ms: float | None
    total_time_ms: float | None
    transferred_bytes: int | None
    guest_gap_ms: float | None
    downtime_limit_ms: float | None


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_facts() -> dict[str, Any]:
    return {"node": platform.node(), "machine": platform.machine(),
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def run_record(state: RunState, entry: str = "run") -> RunRecord:
    """The history record of a finished (or interrupted) run."""
    now = time.time()
    elapsed = max(0.0, time.monotonic() - state.started)
    meta = dict(state.meta)
    return RunRecord(
        uid=str(meta.get("run_id") or uuid.uuid4()),
        tier=str(meta.get("tier") or "smoke"), entry=str(meta.get("entry") or entry),
        started_at=_utc(now - elapsed), finished_at=_utc(now), duration_s=round(elapsed, 3),
        meta=meta, host=host_facts(), results_dir=str(state.results_dir),
        interrupted=bool(state.interrupted), cells=list(state.results))


def _scalars(figures: dict[str, Any]) -> dict[str, Any]:
    """The numbers and short strings of a check's figures (lists and nested
    data stay in results.json)."""
    out: dict[str, Any] = {}
    for k, v in figures.items():
        if isinstance(v, (bool, int, float)) or v is None:
            out[k] = v
        elif isinstance(v, str) and len(v) <= 80:
            out[k] = v
    return out


def _build_version(r: CellResult, side: str) -> tuple[str | None, str | None]:
    b = r.builds.get(side) if isinstance(r.builds, dict) else None
    if not isinstance(b, dict):
        return None, None
    return b.get("name"), b.get("version")


def _cell_values(run_id: int, r: CellResult) -> tuple[Any, ...]:
    k = key_figures(r)
    src_name, src_version = _build_version(r, "source")
    dst_name, dst_version = _build_version(r, "destination")
    checks = [{"name": c.name, "passed": c.passed, "xfail": c.expected_to_fail,
               "summary": c.summary[:200], "figures": _scalars(c.figures)} for c in r.checks]
    return (run_id, r.id, str(r.verdict), r.reason, r.duration, k.downtime_ms, k.total_time_ms,
            k.setup_time_ms, k.transferred_bytes, k.guest_gap_ms, k.downtime_limit_ms,
            k.tolerance_ms, src_name or r.inputs.get("src_build"),
            dst_name or r.inputs.get("dst_build"), src_version, dst_version,
            json.dumps(checks, separators=(",", ":"), default=str),
            json.dumps(r.phases, separators=(",", ":"), default=str))


def _builds(cells: Iterable[CellResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in cells:
        for side in ("source", "destination"):
            b = r.builds.get(side) if isinstance(r.builds, dict) else None
            if isinstance(b, dict) and b.get("name") and b["name"] not in out:
                out[b["name"]] = {k: b.get(k) for k in ("version", "package", "binary")}
    return out


# --- dialects -----------------------------------------------------------------------------


class _Dialect:
    """What differs between SQLite and PostgreSQL: connecting, placeholders,
    the auto-numbered key, taking the write lock, reading the table list."""

    name = ""
    serial = ""
    placeholder = "?"

    def __init__(self, location: str) -> None:
        self.location = location

    def connect(self) -> Any:
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        raise NotImplementedError

    def tables(self, conn: Any) -> set[str]:
        raise NotImplementedError

    def errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def shown(self) -> str:
        return self.location


class _SQLite(_Dialect):
    name = "sqlite"
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def connect(self) -> sqlite3.Connection:
        path = Path(self.location)
        if path.is_dir():
            raise HistoryError(f"history database {path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun and ended here,
        # explicitly (BEGIN IMMEDIATE), not by the sqlite3 module's guesses.
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode and str(mode[0]).lower() != "wal":
            log.warning("history %s: journal mode %s (WAL not available here)", path, mode[0])
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def tables(self, conn: Any) -> set[str]:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}

    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)


class _Postgres(_Dialect):
    name = "postgresql"
    serial = "BIGSERIAL PRIMARY KEY"
    placeholder = "%s"
    #: pg_advisory_xact_lock key: serialises migrations between writers.
    LOCK = 0x6D686973

    def connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise HistoryError(f"history {self.shown()}: PostgreSQL needs the psycopg package "
                               "(pip install 'psycopg[binary]')") from None
        return psycopg.connect(self.location, autocommit=True, connect_timeout=15)

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")
        conn.execute(f"SELECT pg_advisory_xact_lock({self.LOCK})")

    def tables(self, conn: Any) -> set[str]:
        return {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema()")}

    def errors(self) -> tuple[type[BaseException], ...]:
        import psycopg
        return (psycopg.Error,)

    def shown(self) -> str:
        # Never print a password.
        return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", self.location)


def is_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def default_location(env: dict[str, str] | None = None) -> str | None:
    """Where history goes without ``--history``: MHARNESS_HISTORY, else the
    per-user default; None when MHARNESS_HISTORY turns it off."""
    env = os.environ if env is None else env
    value = env.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return value
    return str(DEFAULT_PATH.expanduser())


# --- the database ----------------------------------------------------------------------------


class History:
    """A history database (SQLite file or PostgreSQL URL), schema up to date."""

    def __init__(self, location: str | Path,
                 migrations: dict[int, list[str]] | None = None, create: bool = True) -> None:
        """``create=False`` (readers: compare, history): a missing SQLite file
        is an error rather than a new empty database."""
        location = str(location)
        if not is_url(location):
            location = str(Path(location).expanduser())
            if not create and not Path(location).exists():
                raise HistoryError(f"no history database at {location} (mharness run records "
                                   "every run there unless --no-history; --history PATH or "
                                   f"{ENV} names another)")
        self.dialect: _Dialect = _Postgres(location) if is_url(location) else _SQLite(location)
        self.migrations = MIGRATIONS if migrations is None else migrations
        self.version = max(self.migrations)
        self._conn: Any = None
        self._guard(self._open)

    @property
    def where(self) -> str:
        return self.dialect.shown()

    # Every database error becomes a HistoryError that names the database and
    # says that nothing was changed by this program.
    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except HistoryError:
            raise
        except OSError as exc:
            raise HistoryError(f"history database {self.where}: {exc}") from None
        except self.dialect.errors() as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if any(s in text for s in ("not a database", "malformed", "encrypted")):
                raise HistoryError(
                    f"history database {self.where} is not readable ({text}); it was left "
                    "as it is: move it away, or give another --history PATH, or --no-history"
                ) from None
            raise HistoryError(f"history database {self.where}: {text}") from None

    def _open(self) -> None:
        self._conn = self.dialect.connect()
        self._migrate()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self.dialect.sql(sql), tuple(params))

    def _transaction(self, body: Callable[[], Any]) -> Any:
        self.dialect.begin(self._conn)
        try:
            out = body()
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 -- the first error is the one to report
                pass
            raise
        self._conn.execute("COMMIT")
        return out

    def _current_version(self) -> int:
        tables = self.dialect.tables(self._conn)
        if "mh_schema" not in tables:
            ours = {t for t in tables if t.startswith("mh_")}
            if ours or (self.dialect.name == "sqlite" and tables):
                raise HistoryError(
                    f"history database {self.where} is not an mharness history database "
                    f"(it has tables {', '.join(sorted(tables))} but no mh_schema); it was "
                    "left as it is: give another --history PATH, or --no-history")
            return 0
        row = self._execute("SELECT MAX(version) FROM mh_schema").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        def body() -> None:
            current = self._current_version()
            if current > self.version:
                raise HistoryError(
                    f"history database {self.where} has schema version {current}, newer than "
                    f"this mharness understands ({self.version}); it was left as it is: "
                    "upgrade mharness, or give another --history PATH, or --no-history")
            if current == 0:
                self._execute("CREATE TABLE mh_schema (version INTEGER NOT NULL, "
                              "applied_at TEXT NOT NULL)")
            for version in range(current + 1, self.version + 1):
                for statement in self.migrations.get(version, []):
                    self._conn.execute(statement.replace("{serial}", self.dialect.serial))
                self._execute("INSERT INTO mh_schema (version, applied_at) VALUES (?, ?)",
                              (version, _utc(time.time())))
                log.info("history %s: schema migrated to version %d", self.where, version)
        self._transaction(body)

    @property
    def schema_version(self) -> int:
        return int(self._guard(lambda: self._execute(
            "SELECT MAX(version) FROM mh_schema").fetchone()[0]))

    # --- writing --------------------------------------------------------------------------

    def record(self, run: RunRecord) -> int:
        """Store ``run`` and its cells in one transaction; returns its id.

        Recording the same run id again (pytest-xdist workers of one session,
        or a run recorded twice) adds or replaces cells of that run.
        """
        meta = run.meta
        values = (run.uid, run.tier, run.entry, run.started_at, run.finished_at, run.duration_s,
                  meta.get("seed"), meta.get("matrix"), meta.get("select"), meta.get("shard"),
                  meta.get("jobs"), __version__, run.host.get("node"), run.host.get("machine"),
                  run.host.get("kernel"), run.host.get("cpus"), run.host.get("python"),
                  run.results_dir, int(run.interrupted),
                  json.dumps(_builds(run.cells), separators=(",", ":"), default=str))

        def body() -> int:
            cols = ", ".join(_RUN_COLUMNS)
            marks = ", ".join("?" * len(_RUN_COLUMNS))
            self._execute(f"INSERT INTO mh_runs ({cols}) VALUES ({marks}) "
                          "ON CONFLICT (uid) DO NOTHING", values)
            run_id = int(self._execute("SELECT id FROM mh_runs WHERE uid = ?",
                                       (run.uid,)).fetchone()[0])
            ccols = ", ".join(_CELL_COLUMNS)
            cmarks = ", ".join("?" * len(_CELL_COLUMNS))
            update = ", ".join(f"{c} = excluded.{c}" for c in _CELL_COLUMNS[2:])
            rows = [_cell_values(run_id, r) for r in run.cells]
            sql = self.dialect.sql(f"INSERT INTO mh_cells ({ccols}) VALUES ({cmarks}) "
                                   f"ON CONFLICT (run_id, cell_id) DO UPDATE SET {update}")
            cur = self._conn.cursor()
            cur.executemany(sql, rows)
            return run_id
        return int(self._guard(lambda: self._transaction(body)))

    # --- reading --------------------------------------------------------------------------

    def _run_rows(self, where: str, params: Sequence[Any], limit: int | None) -> list[RunRow]:
        sql = ("SELECT id, uid, tier, entry, started_at, finished_at, duration_s, seed, "
               "results_dir, interrupted, harness_version, host_node, builds FROM mh_runs"
               + (f" WHERE {where}" if where else "") + " ORDER BY id DESC"
               + (f" LIMIT {int(limit)}" if limit else ""))

        def body() -> list[RunRow]:
            runs = [RunRow(id=int(r[0]), uid=r[1], tier=r[2], entry=r[3], started_at=r[4],
                           finished_at=r[5], duration_s=r[6], seed=r[7], results_dir=r[8],
                           interrupted=bool(r[9]), harness_version=r[10], host_node=r[11],
                           builds=json.loads(r[12] or "{}"))
                    for r in self._execute(sql, params).fetchall()]
            if runs:
                ids = [r.id for r in runs]
                marks = ", ".join("?" * len(ids))
                by_id = {r.id: r for r in runs}
                for run_id, verdict, n in self._execute(
                        f"SELECT run_id, verdict, COUNT(*) FROM mh_cells WHERE run_id IN ({marks}) "
                        "GROUP BY run_id, verdict", ids).fetchall():
                    by_id[int(run_id)].counts[verdict] = int(n)
            return runs
        return list(self._guard(body))

    def runs(self, tier: str | None = None, entry: str | None = None, limit: int | None = 20,
             complete: bool = False, before: int | None = None) -> list[RunRow]:
        """Runs, newest first; ``complete`` leaves out interrupted runs,
        ``before`` only runs older than that id."""
        where, params = [], []
        if tier is not None:
            where.append("tier = ?")
            params.append(tier)
        if entry is not None:
            where.append("entry = ?")
            params.append(entry)
        if complete:
            where.append("interrupted = 0")
        if before is not None:
            where.append("id < ?")
            params.append(before)
        return self._run_rows(" AND ".join(where), params, limit)

    def run(self, run_id: int) -> RunRow | None:
        rows = self._run_rows("id = ?", (run_id,), 1)
        return rows[0] if rows else None

    def run_by_uid(self, uid: str) -> RunRow | None:
        rows = self._run_rows("uid = ?", (uid,), 1)
        return rows[0] if rows else None

    def cells(self, run_ids: Sequence[int]) -> list[CellRow]:
        """The cells of these runs (in run order, then cell order)."""
        if not run_ids:
            return []
        marks = ", ".join("?" * len(run_ids))
        sql = ("SELECT run_id, cell_id, verdict, reason, duration_s, downtime_ms, total_time_ms, "
               "transferred_bytes, guest_gap_ms, downtime_limit_ms FROM mh_cells "
               f"WHERE run_id IN ({marks}) ORDER BY run_id, cell_id")
        return list(self._guard(lambda: [
            CellRow(int(r[0]), r[1], r[2], r[3] or "", r[4], r[5], r[6],
                    int(r[7]) if r[7] is not None else None, r[8], r[9])
            for r in self._execute(sql, list(run_ids)).fetchall()]))

    def checks(self, run_id: int, cell_id: str) -> list[dict[str, Any]]:
        row = self._guard(lambda: self._execute(
            "SELECT checks FROM mh_cells WHERE run_id = ? AND cell_id = ?",
            (run_id, cell_id)).fetchone())
        return json.loads(row[0]) if row and row[0] else []

    def trend(self, tier: str, entry: str | None = None, last: int = 10,
              upto: int | None = None, complete: bool = True,
              ) -> tuple[list[RunRow], dict[str, list[CellRow]]]:
        """The last ``last`` runs of ``tier`` (up to run ``upto``; ``complete``:
        interrupted runs left out), oldest first, and each cell's rows in those
        runs (the report's trend plots, ``mharness history``)."""
        runs = self.runs(tier, entry, limit=last, complete=complete,
                         before=None if upto is None else upto + 1)
        runs.reverse()
        by_cell: dict[str, list[CellRow]] = {}
        for row in self.cells([r.id for r in runs]):
            by_cell.setdefault(row.cell_id, []).append(row)
        return runs, by_cell
