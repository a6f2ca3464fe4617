"""The exclusion model: what the oracle forbids in one context, and how
``mharness list`` reports it.

For each context the oracle is asked about every setting alone and every pair
of settings (:func:`analyse`), and each answer is classified into an
:class:`Analysis`:

- a setting refused alone and by every partner is *unusable*, with the rule
  that refuses it (``dirty-limit`` under TCG) -- or, when the build does not
  have it at all (``compress`` on 10.0), with ``absent.capability``;
- a setting refused alone but accepted with a partner *requires* one of those
  partners (``zero-copy-send`` needs ``multifd``);
- two settings accepted apart but refused together *conflict* (``multifd`` +
  ``xbzrle`` on 8.1+): the pair is an error path the probe suite tests;
- a refused set of three or more (*nogood*) is learnt later by the generator
  from whole rows the oracle refuses.

The generator keeps rows out of these (:class:`Checker`), the measure counts
only tuples some row could hold (:func:`feasible`), and :func:`exclusions_of`
turns the same tables into the :class:`Exclusion` entries the user reads.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.matrix.covering.factors import (
    JUDGED_KINDS,
    Factor,
    Setting,
    SettingsModel,
    fmt_setting,
    judged,
    neutral,
)
from harness.matrix.covering.judge import Judge, Refusal

log = logging.getLogger(__name__)

#: Capabilities the cell flow cannot run meaningfully, and why.  A covering
#: strategy in matrix.yaml that names one gets it excluded with this reason
#: (``mharness list`` shows it); the generator itself takes any capability
#: (the scale benchmark uses them all).
FLOW_UNSUPPORTED_CAPS: dict[str, str] = {
    "background-snapshot": "a snapshot to a file, not a migration to a destination",
    "x-colo": "needs a COLO setup (primary and secondary with replication)",
    "rdma-pin-all": "needs the rdma transport",
    "release-ram": "discards source RAM as it is sent, which the exact RAM comparison reads",
    "x-ignore-shared": "skips shared RAM, and the harness backs guest RAM with a shared file",
}


@dataclass(frozen=True)
class Exclusion:
    """A value or combination no cell gets, and why.

    ``kind``: ``unsupported`` (the cell flow cannot run it), ``absent`` (the
    build does not have it), ``error-path`` (the oracle says QEMU refuses it:
    the probe suite tests that refusal), ``unusable`` (refused here whatever
    it is combined with, e.g. needs a host feature), ``unavailable`` (the
    build is missing and declares no version to ask the oracle about).
    """

    kind: str
    what: str
    context: str
    rule: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "context": self.context,
                "rule": self.rule, "reason": self.reason}

    def describe(self) -> str:
        rule = f" [{self.rule}]" if self.rule else ""
        ctx = f" ({self.context})" if self.context else ""
        return f"{self.kind}: {self.what}{ctx}: {self.reason}{rule}"


@dataclass
class Analysis:
    """The oracle's constraints for one context, over the active settings."""

    unusable: dict[Setting, Refusal] = field(default_factory=dict)
    requires: dict[Setting, tuple[Setting, ...]] = field(default_factory=dict)
    conflicts: dict[tuple[Setting, Setting], Refusal] = field(default_factory=dict)
    #: Minimal refused sets of three or more, learnt from whole rows.
    nogoods: dict[tuple[Setting, ...], Refusal] = field(default_factory=dict)
    #: Why each setting with requirements is refused on its own.
    alone: dict[Setting, Refusal] = field(default_factory=dict)
    oracle_calls: int = 0


# --- asking the oracle ----------------------------------------------------------------


def analyse(judge: Judge, model: SettingsModel, factors: Sequence[Factor]) -> Analysis:
    """Classify every active setting and pair of settings with the oracle."""
    out = Analysis()
    calls = [0]

    def verdict(settings: Iterable[Setting]) -> Refusal | None:
        calls[0] += 1
        return judge.verdict(*model.split(settings))

    # A transport is always set (no neutral value); judging its values alone
    # and in pairs finds the capabilities a transport cannot carry.
    active = [(f.name, v) for f in factors if judged(f.kind)
              for v in f.values if v != neutral(f) or f.kind in JUDGED_KINDS]
    for s in active:
        refusal = verdict([s])
        if refusal is None:
            continue
        rescues = tuple(t for t in active if t[0] != s[0] and verdict([s, t]) is None)
        if rescues:
            out.requires[s] = rescues
            out.alone[s] = refusal
        else:
            out.unusable[s] = refusal
    usable = [s for s in active if s not in out.unusable]
    for i, s in enumerate(usable):
        for t in usable[i + 1:]:
            if s[0] == t[0]:
                continue
            refusal = _pair_refusal(s, t, out.requires, verdict)
            if refusal is None:
                continue
            # A transport pair that one more capability makes acceptable
            # (file: + multifd needs mapped-ram) is refused only without it.
            rescue = _single_rescue(s, t, usable, model, verdict) \
                if model.factors[s[0]].kind in JUDGED_KINDS \
                or model.factors[t[0]].kind in JUDGED_KINDS else None
            if rescue is not None:
                out.nogoods[(s, t, (rescue, False))] = refusal
            else:
                out.conflicts[(s, t)] = refusal
    _through_judged(out, usable, factors)
    out.oracle_calls = calls[0]
    log.debug("analysis of %d settings: %d unusable, %d with requirements, %d conflicting "
              "pairs, %d oracle calls", len(active), len(out.unusable), len(out.requires),
              len(out.conflicts), out.oracle_calls)
    return out


def _through_judged(out: Analysis, usable: Sequence[Setting], factors: Sequence[Factor]
                    ) -> None:
    """Pairs no value of a judged factor can carry (mapped-ram needs file:,
    cancel-retry a live transport: no transport takes both) become conflicts
    too, so the generator never chases a tuple no row can hold."""
    def clash(a: Setting, b: Setting) -> bool:
        return (a, b) in out.conflicts or (b, a) in out.conflicts

    for f in factors:
        if f.kind not in JUDGED_KINDS:
            continue
        values = [(f.name, v) for v in f.values if (f.name, v) not in out.unusable]
        for i, s in enumerate(usable):
            for t in usable[i + 1:]:
                if f.name in (s[0], t[0]) or s[0] == t[0] or clash(s, t):
                    continue
                if values and all(clash(s, v) or clash(t, v) for v in values):
                    out.conflicts[(s, t)] = Refusal(
                        f"via.{f.name}", f"no {f.name} takes both: " + "; ".join(
                            f"{v[1] or 'precopy'}: {fmt_setting(s if clash(s, v) else t)}"
                            for v in values))


def _single_rescue(s: Setting, t: Setting, usable: Sequence[Setting], model: SettingsModel,
                   verdict: Callable[[Iterable[Setting]], Refusal | None]) -> str | None:
    """The one capability whose being on makes the refused pair ``s`` + ``t``
    acceptable, or None (no rescue, or several: then the pair counts as refused)."""
    rescuers = {r[0] for r in usable
                if r[0] not in (s[0], t[0]) and model.factors[r[0]].kind == "capability"
                and r[1] is True and verdict([s, t, r]) is None}
    return next(iter(rescuers)) if len(rescuers) == 1 else None


def _pair_refusal(s: Setting, t: Setting, requires: Mapping[Setting, tuple[Setting, ...]],
                  verdict: Callable[[Iterable[Setting]], Refusal | None]) -> Refusal | None:
    """None when some way of satisfying both settings' requirements is accepted."""
    first: Refusal | None = None

    def options(x: Setting, other: Setting) -> list[Setting | None]:
        need = requires.get(x)
        if not need or other in need:
            return [None]
        return [r for r in need if r[0] not in (s[0], t[0])][:4] or [None]

    for a in options(s, t):
        for b in options(t, s):
            extra = [x for x in (a, b) if x is not None]
            if len({x[0] for x in extra}) < len(extra):
                continue
            refusal = verdict([s, t, *extra])
            if refusal is None:
                return None
            first = first or refusal
    return first


# --- using the answers --------------------------------------------------------------


def feasible(tup: Sequence[Setting], analysis: Analysis, domains: Mapping[str, Sequence[Any]]
             ) -> bool:
    """Whether a tuple of settings can appear in a row the oracle accepts.

    Each setting usable and in its factor's domain, no conflicting pair or
    learnt refused set inside, and each requirement met inside the tuple or by
    a usable partner outside it that conflicts with none of the tuple.
    """
    names = {s[0] for s in tup}
    for s in tup:
        if s in analysis.unusable or s[1] not in domains.get(s[0], (s[1],)):
            return False
    for a, b in itertools.combinations(tup, 2):
        if (a, b) in analysis.conflicts or (b, a) in analysis.conflicts:
            return False
    on = set(tup)
    for g in analysis.nogoods:
        if all(x in on for x in g):
            return False
    for s in tup:
        need = analysis.requires.get(s)
        if not need or any(r in on for r in need):
            continue
        if not any(r[0] not in names and r not in analysis.unusable and
                   not any((r, x) in analysis.conflicts or (x, r) in analysis.conflicts
                           for x in tup) for r in need):
            return False
    return True


class Checker:
    """The analysis's constraints, indexed by setting, for the generator.

    A partial row can still become a row the oracle accepts when it holds no
    unusable setting, no conflicting pair and no learnt refused set, and each
    requirement is met inside the row or still possible through a factor not
    yet set, to a partner that conflicts with nothing in the row.  Pair
    analysis lists implied conflicts too (``zero-copy-send`` + ``xbzrle`` both
    directly and through ``multifd``), so this check is as strong as
    covertable's generic forward checking for these constraints, at a
    fraction of its cost.  ``fixed``: the factors with a single value, which
    every row has (covertable never sees them).
    """

    def __init__(self, analysis: Analysis, fixed: Mapping[str, Any] | None = None) -> None:
        self.unusable = set(analysis.unusable)
        self.conflicts: dict[Setting, set[Setting]] = {}
        for a, b in analysis.conflicts:
            self.conflicts.setdefault(a, set()).add(b)
            self.conflicts.setdefault(b, set()).add(a)
        self.requires = dict(analysis.requires)
        self.nogoods: dict[Setting, list[frozenset[Setting]]] = {}
        for group in analysis.nogoods:
            g = frozenset(group)
            for x in g:
                self.nogoods.setdefault(x, []).append(g)
        self.fixed = dict(fixed or {})


# --- what the user reads ------------------------------------------------------------


def exclusions_of(analysis: Analysis, context: str) -> list[Exclusion]:
    """The analysis of one context as exclusion entries, labelled with it."""
    out = []
    for s, refusal in analysis.unusable.items():
        out.append(Exclusion(exclusion_kind(refusal.rule), fmt_setting(s), context,
                             refusal.rule, refusal.reason))
    for s, need in analysis.requires.items():
        alone = analysis.alone.get(s)
        rule = alone.rule if alone else None
        out.append(Exclusion(exclusion_kind(rule or ""), f"{fmt_setting(s)} without "
                             f"{' or '.join(fmt_setting(r) for r in need)}", context, rule,
                             "refused alone; every cell with it has one of those"))
    for (a, b), refusal in analysis.conflicts.items():
        out.append(Exclusion(exclusion_kind(refusal.rule), f"{fmt_setting(a)} + "
                             f"{fmt_setting(b)}", context, refusal.rule, refusal.reason))
    for group, refusal in analysis.nogoods.items():
        out.append(Exclusion("error-path", " + ".join(fmt_setting(x) for x in group), context,
                             refusal.rule, refusal.reason))
    return out


def exclusion_kind(rule: str) -> str:
    """Exclusion kind of a refusal: the build lacks it, the cell flow cannot run
    it, or QEMU refuses it (then the probe suite tests the refusal)."""
    if rule.startswith(("absent.", "ignored.")):
        return "absent"
    if rule.startswith(("unsupported.", "via.")):
        return "unsupported"
    return "error-path"


def merge_exclusions(items: Sequence[Exclusion]) -> list[Exclusion]:
    """One entry per exclusion, naming every context it holds in."""
    merged: dict[tuple[str, str, str | None, str], list[str]] = {}
    for x in items:
        contexts = merged.setdefault((x.kind, x.what, x.rule, x.reason), [])
        for c in x.context.split("; "):
            if c and c not in contexts:
                contexts.append(c)
    return [Exclusion(kind, what, "; ".join(ctx), rule, reason)
            for (kind, what, rule, reason), ctx in merged.items()]


__all__ = ["FLOW_UNSUPPORTED_CAPS", "Analysis", "Checker", "Exclusion", "analyse",
           "exclusion_kind", "exclusions_of", "feasible", "merge_exclusions"]
