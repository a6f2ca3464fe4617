"""The harness's own log: module loggers whose records carry the cell id and
land in that cell's log folder.

Every module logs through ``logging.getLogger(__name__)``.  While a cell runs
(:func:`cell_logging`), a context variable holds its id: asyncio tasks and
``asyncio.to_thread`` inherit it, so records from the QMP driver, the checks
and the launcher are all stamped with the cell they belong to, even with
several cells in one process (pytest) or several workers writing at once.
The cell's records go to ``<cell log folder>/harness.log`` next to QEMU's
stderr, serial and QMP transcript, so a failed cell's folder tells the whole
story.
"""
from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The id of the cell being run in this context ("" outside any cell).
current_cell: contextvars.ContextVar[str] = contextvars.ContextVar("mharness_cell", default="")

#: (cell id, log file) pairs being written in this context: see cell_logging.
_writing: contextvars.ContextVar[frozenset[tuple[str, str]]] = contextvars.ContextVar(
    "mharness_cell_logs", default=frozenset())

#: File name of the harness's own log in a cell's log folder.
CELL_LOG = "harness.log"

_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(cell)s %(name)s: %(message)s"
_DATEFMT = "%H:%M:%S"


class _CellStamp(logging.Filter):
    """Adds ``record.cell`` (the running cell's id, or ``-``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "cell"):
            record.cell = current_cell.get() or "-"
        return True


class _OnlyCell(_CellStamp):
    """Admits only the records of one cell (several cells may share a process)."""

    def __init__(self, cell_id: str) -> None:
        super().__init__()
        self.cell_id = cell_id

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        return record.cell == self.cell_id


def _package_logger() -> logging.Logger:
    logger = logging.getLogger("harness")
    if logger.level == logging.NOTSET:
        # Debug records are cheap to drop and invaluable in a failed cell's
        # folder; what reaches the console is decided by its own handler.
        logger.setLevel(logging.DEBUG)
    return logger


@contextmanager
def cell_logging(cell_id: str, logdir: Path) -> Iterator[Path]:
    """Stamp records with ``cell_id`` and write them to ``logdir/harness.log``
    while the block runs; yields that path.

    Re-entrant: inside a block already writing this cell's records to the
    same file (a pytest fixture around a test that runs the cell through
    ``harness.run.cellrun``), records go to that file once, not twice.  A
    nested block with another folder (a repeated cell's ``run-<i>/``) adds its
    own file, as it should."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / CELL_LOG
    key = (cell_id, str(path.resolve()))
    if key in _writing.get():
        yield path
        return
    writing = _writing.set(_writing.get() | {key})
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_OnlyCell(cell_id))
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    logger = _package_logger()
    token = current_cell.set(cell_id)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        current_cell.reset(token)
        _writing.reset(writing)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was
    when the handler was made: a CLI run in-process under pytest's capture
    would otherwise leave a handler on a stream pytest has since closed
    ("ValueError: I/O operation on closed file" at every later warning)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def console_logging(level: int = logging.WARNING) -> None:
    """Send the harness's records at ``level`` and above to stderr, with the
    cell id (the CLI calls this on each run; ``-v`` lowers the level).  A
    second call replaces the first one's handler rather than adding one."""
    logger = _package_logger()
    for old in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(old)
    handler = _Stderr()
    handler.setLevel(level)
    handler.addFilter(_CellStamp())
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    logger.addHandler(handler)
    logger.propagate = False
