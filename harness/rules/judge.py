"""Judging what a QEMU build answered to one probe: contract, known deviation, or neither.

The oracle's rules state the contract; :mod:`harness.rules.deviations` lists
the versions known to break it.  For one probe the contract predicts an
answer and the state it leaves, and each known deviation of the build that
would answer differently predicts its own.  The observation is then:

* ``agree``: as the contract says (if a known deviation predicted otherwise,
  it did not reproduce: fixed in this build, which is good news);
* ``deviation``: as a known deviation says (a known defect, reported by id:
  never counted as agreement, never a failure of the run);
* ``unmodelled``: neither, on a build whose QEMU version has no rule model
  (it was probed against the nearest model's rules);
* ``disagree``: neither, on a modelled build: a new finding.

Kept apart from the runner so the classification is a pure function that the
unit tests can feed with recorded answers.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from harness.rules.model import (
    Deviation,
    ProbeState,
    RuleBook,
    Verdict,
    apply,
    expected,
)

log = logging.getLogger(__name__)


class ProbeVerdict(StrEnum):
    AGREE = "agree"
    DEVIATION = "deviation"
    UNMODELLED = "unmodelled"
    DISAGREE = "disagree"


# --------------------------------------------------------------------------
# States as the build reports them
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Capabilities and parameters as the build reports them (normalized)."""

    caps: dict[str, bool]
    params: dict[str, Any]

    def differs(self, other: Snapshot) -> list[str]:
        out = []
        for k in sorted(set(self.caps) | set(other.caps)):
            if self.caps.get(k) != other.caps.get(k):
                out.append(f"cap {k}: {self.caps.get(k)} -> {other.caps.get(k)}")
        for k in sorted(set(self.params) | set(other.params)):
            if self.params.get(k) != other.params.get(k):
                out.append(f"param {k}: {self.params.get(k)!r} -> {other.params.get(k)!r}")
        return out


def normalize_params(params: Mapping[str, Any]) -> dict[str, Any]:
    p = dict(params)
    # QEMU omits block-bitmap-mapping until it has been set; set to [] it
    # means the same thing.
    if p.get("block-bitmap-mapping") is None:
        p["block-bitmap-mapping"] = []
    return p


def predicted(state: ProbeState) -> Snapshot:
    return Snapshot({k: bool(v) for k, v in state.caps.items()}, normalize_params(state.params))


def same_as_predicted(after: Snapshot, pred: Snapshot) -> list[str]:
    """Differences on the keys the build reports (the prediction may know more)."""
    out = []
    for k, v in after.caps.items():
        if pred.caps.get(k, False) != v:
            out.append(f"cap {k}: predicted {pred.caps.get(k, False)}, read {v}")
    for k, v in after.params.items():
        if k in pred.params and pred.params[k] != v:
            out.append(f"param {k}: predicted {pred.params[k]!r}, read {v!r}")
    return out


# --------------------------------------------------------------------------
# Expectations and the judgement
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """What one rule book (the contract, or a deviation's) predicts for a probe."""

    verdict: Verdict
    after: Snapshot
    deviation: Deviation | None = None

    def verdict_matches(self, accept: bool, message: str | None) -> bool:
        return self.verdict.accept == accept and (
            accept or (message is not None and self.verdict.matches(message)))


def expectations(version: Sequence[int], command: str, args: Any, state: ProbeState,
                 book: RuleBook, deviations: Sequence[tuple[Deviation, RuleBook]] = ()
                 ) -> list[Expectation]:
    """The contract's expectation, then one per deviation that predicts otherwise.

    ``deviations`` pairs each known deviation of the build with its patched
    book (``deviation.patch(book)``, built once per run by the caller).
    """
    contract = Expectation(expected(version, command, args, state, book=book),
                           predicted(apply(version, command, args, state, book=book)))
    out = [contract]
    for dev, dbook in deviations:
        v = expected(version, command, args, state, book=dbook)
        after = predicted(apply(version, command, args, state, book=dbook))
        if (v.accept, v.rule_id, v.pattern) != (contract.verdict.accept, contract.verdict.rule_id,
                                                contract.verdict.pattern) \
                or after != contract.after:
            out.append(Expectation(v, after, dev))
    return out


@dataclass
class Judgement:
    verdict: ProbeVerdict
    #: QEMU's accept/refusal (and message) is the contract's.
    agree: bool
    #: After an acceptance: the state read equals the contract's prediction.
    applied: bool | None
    #: The known deviation the answer reproduced (verdict ``deviation``).
    deviation: str | None = None
    #: Known deviations that predicted another answer here and did not reproduce.
    not_reproduced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def judge(exps: Sequence[Expectation], accept: bool, message: str | None,
          after: Snapshot | None, unchanged: bool | None, *, modelled: bool = True) -> Judgement:
    """Classify one observed answer (see the module doc).

    ``after`` is the state read after an accepted command (None when it was
    not read); ``unchanged`` says whether a refused command left the state as
    it was (None when accepted).  A refusal that changed the state matches no
    expectation: no rule book predicts a partial apply.
    """
    contract, *alts = exps

    def applied_ok(e: Expectation) -> tuple[bool | None, list[str]]:
        if not accept or after is None:
            return None, []
        diffs = same_as_predicted(after, e.after)
        return not diffs, diffs

    def matches(e: Expectation) -> bool:
        ok, _ = applied_ok(e)
        return e.verdict_matches(accept, message) and unchanged is not False and ok is not False

    agree = contract.verdict_matches(accept, message)
    applied, diffs = applied_ok(contract)
    if matches(contract):
        gone = [e.deviation.id for e in alts if e.deviation is not None]
        notes = [f"known deviation {d} did not reproduce: fixed in this build" for d in gone]
        return Judgement(ProbeVerdict.AGREE, agree, applied, None, gone, notes)
    for e in alts:
        if e.deviation is not None and matches(e):
            log.debug("answer reproduces known deviation %s", e.deviation.id)
            return Judgement(ProbeVerdict.DEVIATION, agree, applied, e.deviation.id, [],
                             [f"known deviation {e.deviation.id} ({e.deviation.versions})"])
    verdict = ProbeVerdict.DISAGREE if modelled else ProbeVerdict.UNMODELLED
    notes = list(diffs)
    if not modelled:
        notes.append("unmodelled: this QEMU version has no rule model")
    return Judgement(verdict, agree, applied, None, [], notes)


def patched_books(book: RuleBook, deviations: Sequence[Deviation]
                  ) -> list[tuple[Deviation, RuleBook]]:
    """Each deviation with the rule book as a build that has it answers."""
    return [(d, d.patch(book)) for d in deviations]
