"""Exceptions the harness raises on purpose.

Each carries enough context to be printed to a user as-is: bad input names the
file, line and key; runtime errors name the QEMU build and what it refused.
"""
from __future__ import annotations


class HarnessError(Exception):
    """Base class: an error the harness reports without a traceback."""


class MatrixError(HarnessError):
    """The matrix file is malformed.  ``str()`` is "FILE:LINE: key 'K': reason"."""

    def __init__(self, reason: str, file: str = "", line: int = 0, key: str = "") -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.key = key
        where = f"{file}:{line}: " if file else ""
        what = f"key '{key}': " if key else ""
        super().__init__(f"{where}{what}{reason}")


class BuildError(HarnessError):
    """A QEMU build is missing, unusable, or lacks something a cell asks for."""

    def __init__(self, build: str, reason: str) -> None:
        self.build = build
        self.reason = reason
        super().__init__(f"QEMU build '{build}': {reason}")


class QemuError(HarnessError):
    """A QEMU process failed: it exited, aborted, or answered a command with an error."""
