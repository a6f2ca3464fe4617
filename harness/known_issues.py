"""Known issues: a build's own defects, kept visible and never reported green.

A negative control (``expect-fail``) is a fault the harness injects on
purpose: the cell passes only when the checks catch it.  A *known issue* is
the opposite case: a defect of the build under test that the harness has no
part in (qemu-e2k's CPU has no VMState; this host's nested KVM loses pages
with the dirty ring).  Declaring it ``expect-fail`` would turn the defect
into "passed" and its fix into a failure.  So a cell judged against the
contract keeps expecting every check to pass, and ``matrix.yaml``'s
``known-issues:`` section says which checks a given build is known to fail.

Data flow is one way: the matrix attaches to each cell the declarations that
may apply to it (its id or target, the build names it is declared with:
:func:`applicable`); the cell runs; :func:`apply_known_issues` then judges the
cell's checks against those declarations whose *version* matches the builds
the cell really ran on (discovered at run time, in ``CellResult.builds``):

- only failing checks covered by a matching known issue -> ``known-failure``
  (the reason marks each with its issue);
- a matching known issue whose checks all passed -> ``passed`` with the note
  "known issue X did not reproduce: remove it?" (never a failure);
- any other failing check -> ``failed``, the reason listing every failing
  check and marking the known ones.

``repeat: N`` cells (:func:`combine_runs`): passed when every run passed;
``known-failure`` when every failing run failed only in known issues and any
issue that did not reproduce in every run is declared ``intermittent``;
``failed`` otherwise.  "k of N runs failed" is the reason either way.

The verdict is recomputed only when it came from the checks: a cell that
ended early (a QEMU died, a skip, a harness error) keeps its verdict.
"""
from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from harness.results import (ERROR, FAILED, PASSED, SKIPPED, CellResult, CheckResult, Verdict,
                             judge)

log = logging.getLogger(__name__)

#: A version clause: an optional comparison and a dotted version.
_CLAUSE_RE = re.compile(r"\s*(>=|<=|==|!=|>|<)?\s*(\d+(?:\.\d+){0,3})\s*\Z")


def parse_version(text: str) -> tuple[int, ...]:
    """``"6.0.91"`` -> ``(6, 0, 91)``; ValueError for anything else."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in parts)


def _padded(v: tuple[int, ...], n: int = 4) -> tuple[int, ...]:
    return v + (0,) * (n - len(v))


@dataclass(frozen=True)
class VersionSpec:
    """Which QEMU versions a known issue applies to.

    Comma-separated clauses that must all hold: ``>=7.2``, ``<9.0``, ``!=8.2.1``,
    or a bare version, which matches that version and every version under it
    (``6.0`` matches 6.0.91; ``7.2.22`` matches only 7.2.22).  Versions compare
    numerically, missing parts being 0.  Empty: every version.
    """

    text: str = ""
    clauses: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "VersionSpec":
        clauses = []
        for part in text.split(","):
            m = _CLAUSE_RE.match(part)
            if not m:
                raise ValueError(f"bad version clause {part.strip()!r} in {text!r}: expected "
                                 f"e.g. \"6.0\", \">=7.2\" or \">=7.2, <9.0\"")
            clauses.append((m.group(1) or "", parse_version(m.group(2))))
        return cls(text=text.strip(), clauses=tuple(clauses))

    def matches(self, version: tuple[int, ...]) -> bool:
        for op, want in self.clauses:
            have, bound = _padded(version), _padded(want)
            ok = {"": version[:len(want)] == want, "==": have == bound, "!=": have != bound,
                  ">=": have >= bound, "<=": have <= bound, ">": have > bound,
                  "<": have < bound}[op]
            if not ok:
                return False
        return True


@dataclass(frozen=True)
class KnownIssue:
    """One ``known-issues:`` entry of the matrix (plain data, hashable)."""

    id: str
    #: One line for summaries: "e2k: CPU state not migrated".
    title: str
    #: The checks this issue makes fail.
    checks: tuple[str, ...]
    #: Why, since when, and where in QEMU (file, function) when known.
    reference: str
    #: Cell ids or globs (``fnmatch``), and target names or globs; empty: any.
    cells: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    #: A matrix build name (either side of the cell, as declared), or None.
    build: str | None = None
    #: QEMU versions of either side's build, as discovered when the cell ran.
    versions: VersionSpec = field(default_factory=VersionSpec)
    #: Fails in some runs only (a race): not reproducing in a run is expected.
    intermittent: bool = False
    #: Where it is declared, "matrix.yaml:42".
    origin: str = ""

    def covers_cell(self, cell_id: str, target: str, builds: Iterable[str]) -> bool:
        """Whether the declaration names this cell (matrix time: no versions yet)."""
        if self.cells and not any(fnmatch.fnmatchcase(cell_id, p) for p in self.cells):
            return False
        if self.targets and not any(fnmatch.fnmatchcase(target, p) for p in self.targets):
            return False
        return self.build is None or self.build in set(builds)

    def matches_builds(self, builds: dict[str, Any]) -> bool:
        """Whether the source or destination build the cell ran on has an
        affected version (``CellResult.builds``: discovered versions)."""
        if not self.versions.clauses:
            return True
        for side in ("source", "destination"):
            text = (builds.get(side) or {}).get("version")
            try:
                if text and self.versions.matches(parse_version(str(text))):
                    return True
            except ValueError:
                continue
        return False

    def brief(self) -> dict[str, Any]:
        """What results.json records about it."""
        return {"id": self.id, "title": self.title, "checks": list(self.checks),
                "intermittent": self.intermittent, "reference": self.reference,
                "versions": self.versions.text or None, "build": self.build,
                "origin": self.origin}


def applicable(issues: Sequence[KnownIssue], cell_id: str, target: str,
               builds: Iterable[str]) -> tuple[KnownIssue, ...]:
    """The declarations a cell carries (matrix time)."""
    names = tuple(builds)
    return tuple(ki for ki in issues if ki.covers_cell(cell_id, target, names))


# --- judging one run -----------------------------------------------------------------------


def _failing(checks: Sequence[CheckResult]) -> list[CheckResult]:
    return [c for c in checks if not c.as_expected]


def _from_checks(result: CellResult) -> bool:
    """The verdict is the checks' own (not an early end, a skip, an error)."""
    return (result.verdict in (PASSED, FAILED) and bool(result.checks)
            and judge(result.checks) == (result.verdict, result.reason))


def apply_known_issues(result: CellResult, issues: Sequence[KnownIssue]) -> CellResult:
    """Judge ``result`` again with the known issues that match the builds it
    ran on.  Marks covered checks (``CheckResult.known_issue``), records the
    matching issues (``CellResult.known_issues``, each with ``reproduced``)
    and adds a note for each issue that did not reproduce."""
    matching = [ki for ki in issues if ki.matches_builds(result.builds)]
    if not matching or not _from_checks(result):
        return result
    failing = _failing(result.checks)
    used: dict[str, KnownIssue] = {}
    for check in failing:
        if check.passed:   # a negative control that passed: no known issue explains it
            continue
        ki = next((k for k in matching if check.name in k.checks), None)
        if ki is not None:
            check.known_issue = ki.id
            used[ki.id] = ki
    result.known_issues = [{**ki.brief(), "reproduced": ki.id in used} for ki in matching]
    for ki in matching:
        if ki.id not in used:
            result.notes.append(did_not_reproduce(ki))
    if not failing:
        return result
    result.verdict, result.reason = judge(result.checks)
    log.info("cell %s judged with known issues %s: %s", result.id,
             ", ".join(ki.id for ki in matching), result.verdict)
    return result


def did_not_reproduce(ki: KnownIssue, runs: int = 1) -> str:
    if ki.intermittent:
        return (f"intermittent known issue {ki.id} did not reproduce"
                + (f" in {runs} runs" if runs > 1 else " in this run"))
    return f"known issue {ki.id} did not reproduce: remove it?"


# --- repeated runs -------------------------------------------------------------------------


def combine_runs(runs: Sequence[CellResult], logdir: str | None,
                 issues: Sequence[KnownIssue] = ()) -> CellResult:
    """One cell result from the N runs of a ``repeat: N`` cell.

    Each run's verdict, reason, checks, figures and log folder are kept in
    ``runs``; the cell's own checks and figures are those of its first
    failing run (the evidence a reader opens first), else of its last run.
    """
    first = runs[0]
    n = len(runs)
    if first.verdict == SKIPPED:
        first.logdir = logdir
        return first
    failing = [(i, r) for i, r in enumerate(runs, 1) if r.verdict != PASSED]
    shown = failing[0][1] if failing else runs[-1]
    out = CellResult(id=first.id, verdict=PASSED, inputs=first.inputs,
                     checks=shown.checks, figures=shown.figures, phases=shown.phases,
                     builds=first.builds, logdir=logdir,
                     duration=round(sum(r.duration for r in runs), 3))
    out.runs = [_run_record(i, r) for i, r in enumerate(runs, 1)]
    out.figures = {**shown.figures, "repeat": {
        "runs": n, "failed": len(failing), "failed_runs": [i for i, _ in failing],
        "verdicts": [str(r.verdict) for r in runs]}}
    by_id = {ki.id: ki for ki in issues}
    reproduced: dict[str, list[int]] = {}
    for i, r in enumerate(runs, 1):
        for ki in r.known_issues:
            if ki.get("reproduced"):
                reproduced.setdefault(ki["id"], []).append(i)
    seen = {ki["id"]: ki for r in runs for ki in r.known_issues}
    #: Runs whose checks were judged against the issue (not errored or skipped ones).
    judged = {kid: sum(any(k["id"] == kid for k in r.known_issues) for r in runs)
              for kid in seen}
    out.known_issues = [{**ki, "reproduced": ki["id"] in reproduced,
                         "reproduced_in_runs": reproduced.get(ki["id"], [])}
                        for ki in seen.values()]
    for kid in seen:
        if kid not in reproduced and kid in by_id:
            out.notes.append(did_not_reproduce(by_id[kid], judged[kid]))
    if not failing:
        return out
    verdicts = {r.verdict for _, r in failing}
    head = f"{len(failing)} of {n} runs failed"
    detail = "; ".join(f"run {i}: {r.verdict}: {r.reason}" for i, r in failing)
    if FAILED in verdicts:
        out.verdict = FAILED
    elif ERROR in verdicts or verdicts - {Verdict.KNOWN_FAILURE}:
        out.verdict = ERROR
    else:
        steady = [kid for kid in reproduced
                  if not seen[kid].get("intermittent") and len(reproduced[kid]) < n]
        if steady:
            out.verdict = FAILED
            head += (f" (known issue {', '.join(steady)} is not declared intermittent but "
                     f"reproduced in {', '.join(str(len(reproduced[k])) for k in steady)} of "
                     f"{n} runs)")
        else:
            out.verdict = Verdict.KNOWN_FAILURE
            head += f", each in known issues ({', '.join(_issue_words(seen, reproduced))})"
    out.reason = f"{head}: {detail}"
    return out


def _issue_words(seen: dict[str, dict[str, Any]], reproduced: dict[str, list[int]]) -> list[str]:
    return [f"{kid}, intermittent" if seen[kid].get("intermittent") else kid
            for kid in reproduced]


def _run_record(i: int, r: CellResult) -> dict[str, Any]:
    """One run of a repeated cell as results.json keeps it."""
    data = r.to_json()
    for key in ("id", "inputs", "builds", "runs"):
        data.pop(key, None)
    return {"run": i, **data}


# --- summaries -----------------------------------------------------------------------------


def known_failure_summary(results: Iterable[CellResult]) -> str:
    """``"1 known failure (e2k: CPU state not migrated, known-issue e2k-cpu-vmstate)"``
    for the run's summary line; "" when no cell is a known failure."""
    cells = [r for r in results if r.verdict == Verdict.KNOWN_FAILURE]
    if not cells:
        return ""
    issues: dict[str, str] = {}
    for r in cells:
        for ki in r.known_issues:
            if ki.get("reproduced"):
                issues.setdefault(ki["id"], ki.get("title") or ki["id"])
    word = "known failure" if len(cells) == 1 else "known failures"
    inner = "; ".join(f"{title}, known-issue {kid}" for kid, title in issues.items())
    return f"{len(cells)} {word}" + (f" ({inner})" if inner else "")


__all__ = ["KnownIssue", "VersionSpec", "applicable", "apply_known_issues", "combine_runs",
           "did_not_reproduce", "known_failure_summary", "parse_version"]
