"""The harness's console log handler (harness.logs)."""
from __future__ import annotations


def test_console_logging_follows_the_current_stderr_and_does_not_pile_up(monkeypatch) -> None:
    """The CLI run in-process twice (as tests do under pytest's capture): one
    handler, writing to whatever stderr is now, never to a closed stream."""
    import io
    import logging as _logging

    from harness import logs

    logger = _logging.getLogger("harness")
    before, propagate = list(logger.handlers), logger.propagate
    try:
        first = io.StringIO()
        monkeypatch.setattr("sys.stderr", first)
        logs.console_logging()
        logs.console_logging()
        assert sum(isinstance(h, logs._Stderr) for h in logger.handlers) == 1
        first.close()
        second = io.StringIO()
        monkeypatch.setattr("sys.stderr", second)
        _logging.getLogger("harness.checks.downtime").warning("figure %s", "implausible")
        assert "figure implausible" in second.getvalue()
    finally:
        for h in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(h)
        logger.propagate = propagate
