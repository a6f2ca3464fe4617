"""The scenarios' verdicts: pure functions of what was seen, so unit tests can
show each one can fail (tests/test_failpaths.py, testcases/test_failure_paths.py)."""
from __future__ import annotations

from harness.results import CheckResult
from harness.scenarios.catalogue import Expect


def judge_error(name: str, expect: Expect, error_class: str | None,
                text: str | None) -> CheckResult:
    """Did QEMU give the expected error?  ``text`` None means no error at all."""
    figures = {"error_class": error_class, "text": text, "expected_class": expect.error_class,
               "expected_pattern": expect.pattern, "qemu_source": expect.source}
    if text is None:
        return CheckResult(name, False, "no error reported; expected one matching "
                           f"/{expect.pattern}/ ({expect.source})", figures)
    if expect.error_class is not None and error_class != expect.error_class:
        return CheckResult(name, False, f"error class {error_class}, expected "
                           f"{expect.error_class}: {text}", figures)
    if not expect.matches(text):
        return CheckResult(name, False, f"error '{text}' does not match /{expect.pattern}/ "
                           f"({expect.source})", figures)
    return CheckResult(name, True, f"{error_class or 'error'}: {text}", figures)


def judge_state(name: str, got: str | None, want: str, states: list[str]) -> CheckResult:
    """The migration ended in ``want`` (``got`` None: it did not end in time)."""
    figures = {"status": got, "expected": want, "states": states}
    if got != want:
        return CheckResult(name, False, f"migration ended '{got}', expected '{want}' "
                           f"(states {states})", figures)
    return CheckResult(name, True, f"migration {want} (states {' -> '.join(states)})", figures)


def judge_running(status: str, beats_before: int, beats_after: int, needed: int,
                  waited: float) -> CheckResult:
    """The source must be ``running`` and its guest must keep heartbeating."""
    figures = {"status": status, "heartbeats_before": beats_before,
               "heartbeats_after": beats_after, "needed": needed, "waited_s": round(waited, 3)}
    if status != "running":
        return CheckResult("source-running", False, f"source is '{status}', not running",
                           figures)
    if beats_after - beats_before < needed:
        return CheckResult("source-running", False,
                           f"source guest stalled: {beats_after - beats_before} heartbeats in "
                           f"{waited:.1f} s (needed {needed})", figures)
    return CheckResult("source-running", True, f"running, {beats_after - beats_before} new "
                       "heartbeats", figures)


def judge_sequence(name: str, states: list[str], want: list[str]) -> CheckResult:
    """``want`` must appear in ``states`` in that order (others may come between)."""
    it = iter(states)
    missing = [w for w in want if w not in it]
    figures = {"states": states, "expected_in_order": want}
    if missing:
        return CheckResult(name, False, f"states {' -> '.join(states) or '(none)'} lack "
                           f"{missing[0]} in the order {' -> '.join(want)}", figures)
    return CheckResult(name, True, " -> ".join(states), figures)
