"""What a cell's result becomes in Avocado: a test status, a reason, output
and a whiteboard.

The verdict itself is the harness's (``CellResult.verdict``, judged by
``harness.results.judge`` inside the flow, negative controls included): this
module only translates it, so a cell passes under Avocado exactly when it
passes under ``mharness run``.

- status: ``passed`` -> PASS, ``failed`` -> FAIL (a check came out other than
  declared: a failing check, or a negative control whose check passed),
  ``skipped`` -> SKIP (the host or build cannot run the cell), ``error`` ->
  ERROR (the harness could not run it), ``flaky`` -> WARN, ``known-failure``
  (only checks a declared known issue of the build covers failed) -> WARN: Avocado
  shows it apart from PASS and does not fail the job, as ``mharness run`` exits 0
  for it unless ``--strict``;
- the fail reason is the harness's reason, word for word;
- the test's output (its ``stdout`` file and ``debug.log``) gets one line per
  check with its summary, then the cell's scalar figures and phases: what a
  reader of an Avocado job wants before opening the logs;
- the whiteboard (``whiteboard`` in the test folder and in Avocado's
  results.json) is JSON: verdict, reason, every check with its figures, the
  scalar figures, phases and the budget share, for tools that read Avocado
  results.  The complete result, with the samples and device lists, is the
  cell's results.json fragment beside it (:data:`FRAGMENT`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harness.fileio import write_atomic
from harness.results import CellResult, CheckResult, Verdict

log = logging.getLogger(__name__)

#: The cell's entry of ``mharness run``'s results.json, in the test's folder.
FRAGMENT = "cell-result.json"

#: Harness verdict -> Avocado test status (avocado.core.teststatus.STATUSES).
STATUS: dict[str, str] = {
    Verdict.PASSED: "pass",
    Verdict.FAILED: "fail",
    Verdict.SKIPPED: "skip",
    Verdict.ERROR: "error",
    Verdict.FLAKY: "warn",
    Verdict.KNOWN_FAILURE: "warn",
}


def status_of(result: CellResult) -> str:
    return STATUS.get(result.verdict, "error")


def fail_class(result: CellResult) -> str | None:
    """What xunit shows as the failure's type: the checks that came out
    other than declared, or the verdict when no check is to blame."""
    if result.verdict in (Verdict.PASSED, Verdict.SKIPPED):
        return None
    wrong = [c.name for c in result.checks if not c.as_expected]
    return ",".join(wrong) if wrong else f"mharness.{result.verdict}"


def _mark(check: CheckResult) -> str:
    if check.expected_to_fail:
        return "FAIL (expected)" if not check.passed else "PASS (expected to fail)"
    return "PASS" if check.passed else "FAIL"


def _scalars(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures worth a glance: numbers, strings, booleans (no sample series)."""
    return {k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool)) or v is None}


def summary_text(result: CellResult, logdir: Path | None = None) -> str:
    """The human-readable account of the cell, for the test's output."""
    lines = [f"cell {result.id}: {result.verdict} in {result.duration:.2f} s"
             + (f": {result.reason}" if result.reason else "")]
    width = max((len(c.name) for c in result.checks), default=0)
    for c in result.checks:
        lines.append(f"  {c.name:<{width}}  {_mark(c):<24} {c.summary}")
    scalars = _scalars(result.figures)
    if scalars:
        lines.append("figures: " + ", ".join(f"{k}={v}" for k, v in scalars.items()))
    if result.phases:
        lines.append("phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.phases.items()))
    if logdir is not None:
        lines.append(f"logs: {logdir} (QEMU stderr, serial, QMP transcript, harness.log, "
                     f"{FRAGMENT})")
    return "\n".join(lines) + "\n"


def whiteboard(result: CellResult, budget: dict[str, Any] | None = None) -> str:
    """The whiteboard: the cell's verdict, checks and figures as JSON."""
    return json.dumps({
        "cell": result.id,
        "verdict": str(result.verdict),
        "reason": result.reason,
        "checks": [{"name": c.name, "passed": c.passed, "expected_to_fail": c.expected_to_fail,
                    "summary": c.summary, "figures": c.figures} for c in result.checks],
        "figures": _scalars(result.figures),
        "phases": result.phases,
        "duration": result.duration,
        "budget": budget,
    }, default=str)


def write_fragment(result: CellResult, logdir: Path) -> Path:
    """``cell-result.json``: the cell exactly as ``mharness run`` records it."""
    path = logdir / FRAGMENT
    write_atomic(path, json.dumps(result.to_json(), indent=1, default=str).encode())
    return path
