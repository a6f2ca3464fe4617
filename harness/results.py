"""What a cell produced: verdicts with their figures, ready for reports.

A check result always carries the figures it judged, so a reader of
results.json can see how close a pass was, not only that it passed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.progress import CellProgress


class Verdict(StrEnum):
    """A cell's verdict.  A ``StrEnum`` so results.json and comparisons with
    plain strings read the same as before."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    #: The harness could not run the cell (QEMU died, a watchdog, bad input).
    ERROR = "error"
    #: Failed in an earlier run and passed on rerun (``--rerun-failed``).
    FLAKY = "flaky"
    #: Failed only checks that a known issue of its build explains
    #: (``matrix.yaml`` ``known-issues:``, harness.known_issues): a defect of
    #: the build, shown as such, never as passed; exit 0 unless ``--strict``.
    KNOWN_FAILURE = "known-failure"


PASSED = Verdict.PASSED
FAILED = Verdict.FAILED
SKIPPED = Verdict.SKIPPED
ERROR = Verdict.ERROR
FLAKY = Verdict.FLAKY
KNOWN_FAILURE = Verdict.KNOWN_FAILURE


@dataclass
class CheckResult:
    """One check's verdict on the evidence of one cell."""

    name: str
    passed: bool
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    #: True when the cell declared this check a negative control.
    expected_to_fail: bool = False
    #: The id of the known issue that explains this check's failure, if any
    #: (set by harness.known_issues when the cell is judged).
    known_issue: str | None = None

    @property
    def as_expected(self) -> bool:
        return self.passed != self.expected_to_fail

    def why_wrong(self) -> str:
        """This check's part of the cell's reason, when it came out other than declared."""
        if self.expected_to_fail:
            return f"{self.name}: negative control passed ({self.summary})"
        return f"{self.name}: {self.summary}" + (
            f" [known issue {self.known_issue}]" if self.known_issue else "")


@dataclass
class CellResult:
    """The outcome of one cell, as written to results.json."""

    id: str
    verdict: str
    reason: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    builds: dict[str, Any] = field(default_factory=dict)
    logdir: str | None = None
    duration: float = 0.0
    #: Said beside the verdict without changing it ("known issue X did not
    #: reproduce: remove it?").
    notes: list[str] = field(default_factory=list)
    #: The known issues that matched the builds this cell ran on, each with
    #: ``reproduced`` (harness.known_issues).
    known_issues: list[dict[str, Any]] = field(default_factory=list)
    #: A ``repeat: N`` cell's runs: each run's verdict, reason, checks,
    #: figures and log folder (``cells/<id>/run-<i>/``).
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CellResult":
        checks = [CheckResult(**c) for c in data.get("checks", [])]
        return cls(**{**data, "checks": checks})

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)


def judge(checks: list[CheckResult]) -> tuple[str, str]:
    """Verdict and reason from the checks: every check must come out as declared.

    The one rule, with and without known issues: a check that a known issue
    explains is marked (``known_issue``, by harness.known_issues) and named so
    in the reason; when every wrong check is so marked the verdict is
    ``known-failure``.  A negative control that passed is never marked."""
    wrong = [c for c in checks if not c.as_expected]
    if not wrong:
        return PASSED, ""
    verdict = KNOWN_FAILURE if all(c.known_issue for c in wrong) else FAILED
    return verdict, "; ".join(c.why_wrong() for c in wrong)


@dataclass
class RunState:
    """The run as it goes: what is done, what runs now.  Plain data shared by
    the runner (which fills it) and the report writers (which read it)."""

    results_dir: Path
    total: int
    results: list[CellResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    #: How the run was asked for (tier, seed, shard, jobs, ...), for results.json.
    meta: dict[str, Any] = field(default_factory=dict)
    #: Ids of the cells running now, in the order they started (several with
    #: jobs > 1).
    running: list[str] = field(default_factory=list)
    #: What each running cell last reported (its phase, its migration's
    #: progress, when it started), by cell id: the live display
    #: (harness.progress).  Every running cell has one from its start.
    progress: dict[str, CellProgress] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out
