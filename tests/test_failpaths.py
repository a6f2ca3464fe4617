"""Unit tests of harness.scenarios.failpaths' verdicts and error patterns (no QEMU)."""
from __future__ import annotations

import pytest

from harness.scenarios.failpaths import ERRORS, SCENARIOS, Expect, judge_error, judge_running, judge_state

#: Texts QEMU 7.2.22 (Debian) and 10.0.2 (bookworm-backports) gave here.
OBSERVED = {
    "tcp-refused": ["Failed to connect to '127.0.0.1:43249': Connection refused"],
    "unix-missing": ["Failed to connect to '/dev/shm/mharness-x/no-such.sock': "
                     "No such file or directory"],
    "uuid-mismatch": ["qemu-system-x86_64: UUID received is 6f1a3c52-7d0e-4b8a-9c11-2e5f4a6b7c8d"
                      " and local is 0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"],
    "uuid-unset-warning": ["qemu-system-x86_64: warning: UUID is received "
                           "6f1a3c52-7d0e-4b8a-9c11-2e5f4a6b7c8d, but local uuid isn't set"],
    "ram-size": ["qemu-system-x86_64: Size mismatch: ram0: 0x8000000 != 0x10000000: "
                 "Invalid argument"],
    "machine-type": ["qemu-system-x86_64: Machine type received is 'pc-q35-7.2' and local is "
                     "'pc-i440fx-7.2'",
                     "qemu-system-x86_64: Machine type received is 'pc-q35-10.0' and local is "
                     "'pc-i440fx-10.0'"],
    "caps-while-active": ["There's a migration process in progress"],
    "migrate-while-active": ["There's a migration process in progress"],
    "migrate-from-inmigrate": ["Guest is waiting for an incoming migration"],
    "migrate-from-postmigrate": ["Can't migrate the vm that was paused due to previous "
                                 "migration"],
    "postcopy-disabled": ["Enable postcopy with migrate_set_capability before the start of "
                          "migration"],
    "incoming-twice": ["The incoming migration has already been started"],
    "migrate-bad-scheme": ["Parameter 'uri' expects a valid migration protocol",   # 7.2
                           "unknown migration protocol: bogus:1234"],              # 10.0
    "incoming-bad-scheme": ["unknown migration protocol: bogus:1234"],
}
#: Errors that share a text on purpose (the same QEMU message, other commands).
SAME_TEXT = [{"caps-while-active", "migrate-while-active"},
             {"migrate-bad-scheme", "incoming-bad-scheme"}]


def test_every_error_has_observed_texts() -> None:
    assert set(OBSERVED) == set(ERRORS)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_pattern_matches_observed_and_cites_source(name: str) -> None:
    expect = ERRORS[name]
    assert "/" in expect.source or ".c" in expect.source
    for text in OBSERVED[name]:
        assert expect.matches(text), (name, text)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_pattern_rejects_other_errors(name: str) -> None:
    """A pattern that matched any error would pass on the wrong failure."""
    expect = ERRORS[name]
    for other, texts in OBSERVED.items():
        if other == name or {name, other} in SAME_TEXT:
            continue
        for text in texts:
            assert not expect.matches(text), (name, other, text)


def test_judge_error() -> None:
    e = Expect("GenericError", r"in progress", "x.c f")
    assert judge_error("n", e, "GenericError", "There's a migration process in progress").passed
    assert not judge_error("n", e, None, None).passed
    assert not judge_error("n", e, "CommandNotFound", "in progress").passed
    assert not judge_error("n", e, "GenericError", "something else").passed
    # No class expected (an error-desc or a stderr line): any class is fine.
    assert judge_error("n", Expect(None, r"refused", "y.c"), None, "Connection refused").passed


def test_judge_state() -> None:
    assert judge_state("s", "failed", "failed", ["setup", "failed"]).passed
    bad = judge_state("s", "completed", "failed", ["setup", "active", "completed"])
    assert not bad.passed and "completed" in bad.summary
    assert not judge_state("s", None, "cancelled", []).passed


def test_judge_running() -> None:
    assert judge_running("running", 10, 13, 2, 0.1).passed
    stopped = judge_running("paused", 10, 10, 2, 0.0)
    assert not stopped.passed and "paused" in stopped.summary
    assert not judge_running("postmigrate", 10, 20, 2, 0.1).passed
    stalled = judge_running("running", 10, 11, 2, 10.0)
    assert not stalled.passed and "stalled" in stalled.summary


def test_scenarios_have_docstrings() -> None:
    for name, fn in SCENARIOS.items():
        assert fn.__doc__ and fn.__doc__.strip(), name
