"""The one module that knows covertable's internals.

covertable builds the array: it chooses the tuples, completes rows and keeps
the bookkeeping.  Its generic constraint evaluator is far too slow for the
oracle's constraints (covertable 3.2 re-evaluates every declarative
constraint for every candidate value of every factor: 9 ms a call on the 10.0
model, minutes for one order-3 array), so :class:`CheckedController`
overrides the two private hooks that evaluator sits behind and answers them
with a :class:`SerialChecker` over the :class:`~.exclusions.Checker`'s
tables (about a second for the same array).

Private hooks can change in any covertable release.  What this module relies
on is spelled out in :data:`HOOKS` and :data:`CONTROLLER_ATTRIBUTES`, and
``tests/test_covertable_contract.py`` checks it against the installed
covertable (names, signatures, and the behaviour on a tiny model), so an
upgrade that changes it fails there, loudly, instead of producing arrays that
quietly break a constraint.  The version range is pinned in pyproject.toml.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from covertable import Controller

from harness.matrix.covering.exclusions import Checker
from harness.matrix.covering.factors import Setting

log = logging.getLogger(__name__)

#: The private ``Controller`` hooks overridden here, with the parameters
#: covertable calls them with.  ``_storable_check(candidate, row=None)``:
#: may the ``(factor, serial)`` pairs of ``candidate`` join ``row`` (default:
#: the row being built)?  covertable asks it while choosing tuples and while
#: completing a row.  ``_forward_check(snapshot)``: can the ``{factor:
#: serial}`` partial row still be completed?  covertable asks it before it
#: commits a tuple to the row.
HOOKS: dict[str, tuple[str, ...]] = {
    "_storable_check": ("self", "candidate", "row"),
    "_forward_check": ("self", "snapshot"),
}
#: ``Controller`` attributes read here: ``serials`` (factor -> its values'
#: integer serials), ``factors`` (factor -> values, as given), ``parents``
#: (serial -> factor), ``incomplete`` (uncovered tuples of serials, in the
#: sorter's order), ``row`` (the row being built: factor -> serial, with
#: ``invalid_pairs``), ``factor_length`` (number of factors).
CONTROLLER_ATTRIBUTES = ("serials", "factors", "parents", "incomplete", "row",
                         "factor_length")


def _hashable(v: Any) -> Any:
    return v if not isinstance(v, (list, dict)) else json.dumps(v, sort_keys=True)


class CheckedController(Controller):
    """covertable's Controller with the constraint checks delegated to a
    :class:`SerialChecker`.  Construction, the choice of tuples, row
    completion and bookkeeping stay covertable's.
    """

    def __init__(self, factors: Mapping[str, list[Any]], checker: Checker, **kw: Any) -> None:
        super().__init__(factors, **kw)
        self._sc = SerialChecker(checker, self.serials, self.factors)
        # covertable prunes infeasible tuples only when given declarative
        # constraints; do it with the checker.
        before = len(self.incomplete)
        ok, touched = self._sc.ok, self._sc.touched
        for key in list(self.incomplete):
            if not touched.isdisjoint(key) and not ok(key, set(key)):
                del self.incomplete[key]
        self._pruned_pairs = before - len(self.incomplete)
        log.debug("%d tuples to cover, %d pruned as infeasible", len(self.incomplete),
                  self._pruned_pairs)

    _sc: "SerialChecker | None" = None

    def _storable_check(self, candidate: Any, row: Any = None) -> bool:
        if self._sc is None:  # during covertable's own construction
            return True
        base = self.row if row is None else row
        on = set(base.values())
        new = [s for _, s in candidate]
        on.update(new)
        return self._sc.ok(new, on)

    def _forward_check(self, snapshot: Any) -> bool:
        if self._sc is None:
            return True
        on = set(snapshot.values())
        return self._sc.ok(on, on)


class SerialChecker:
    """:class:`~.exclusions.Checker` over covertable's integer value serials.

    ``ok(new, on)``: may the serials ``on`` (a row, already consistent except
    for ``new``) stand together?  Only ``new`` is checked against the rest,
    plus every requirement in the row (adding ``new`` may close its last way).
    """

    def __init__(self, checker: Checker, serials: Mapping[str, list[int]],
                 factors: Mapping[str, list[Any]]) -> None:
        code: dict[Setting, int] = {}
        self.factor_of: dict[int, str] = {}
        for name, ss in serials.items():
            for serial, value in zip(ss, factors[name]):
                code[(name, _hashable(value))] = serial
                self.factor_of[serial] = name
        # Fixed (single-valued) factors are not covertable's: settle them now.
        fixed = {(n, _hashable(v)) for n, v in checker.fixed.items()}
        self.bad: set[int] = {code[s] for s in checker.unusable if s in code}
        for s in fixed:
            for other in checker.conflicts.get(s, ()):
                if other in code:
                    self.bad.add(code[other])
        self.conflicts: dict[int, frozenset[int]] = {}
        for s, others in checker.conflicts.items():
            if s in code:
                self.conflicts[code[s]] = frozenset(code[o] for o in others if o in code)
        self.nogoods: dict[int, list[frozenset[int]]] = {}
        for s, groups in checker.nogoods.items():
            if s not in code:
                continue
            for g in groups:
                rest = [x for x in g if x not in fixed]
                if all(x in code for x in rest):
                    self.nogoods.setdefault(code[s], []).append(frozenset(code[x] for x in rest))
        #: serial -> (rescue serials present in covertable, satisfied by a fixed factor)
        self.requires: dict[int, tuple[tuple[int, ...], bool]] = {}
        for s, need in checker.requires.items():
            if s in code:
                met = any(r in fixed for r in need)
                self.requires[code[s]] = (tuple(code[r] for r in need if r in code
                                                and r not in checker.unusable), met)

        #: Every serial some constraint mentions (tuples without one are free).
        self.touched: frozenset[int] = frozenset(
            self.bad | set(self.conflicts) | set(self.nogoods) | set(self.requires)
            | {r for need, _ in self.requires.values() for r in need})

    def ok(self, new: Iterable[int], on: set[int]) -> bool:
        for s in new:
            if s in self.bad:
                return False
            c = self.conflicts.get(s)
            if c is not None and not c.isdisjoint(on):
                return False
            for g in self.nogoods.get(s, ()):
                if g <= on:
                    return False
        if self.requires:
            names = None
            for s, (need, met) in self.requires.items():
                if met or s not in on:
                    continue
                if any(r in on for r in need):
                    continue
                if names is None:
                    names = {self.factor_of[x] for x in on}
                if not any(self.factor_of[r] not in names and
                           self.conflicts.get(r, frozenset()).isdisjoint(on) for r in need):
                    return False
        return True


class FirstFit:
    """covertable criterion: the uncovered tuples in covertable's (seeded)
    order, each one that fits the row being built -- covertable's ``simple``
    criterion without its per-tuple list copies and candidate objects, which
    dominate at order 3 (``simple`` and this give the same rows)."""

    @staticmethod
    def extract(ctrl: Controller) -> Iterator[tuple[int, ...]]:
        row = ctrl.row
        parents = ctrl.parents
        width = ctrl.factor_length
        invalid = row.invalid_pairs
        storable = ctrl._storable_check
        for key in ctrl.incomplete:
            if len(row) == width:
                return
            new = 0
            for serial in key:
                have = row.get(parents[serial])
                if have is None:
                    new += 1
                elif have != serial:
                    break
            else:
                if new and key not in invalid and \
                        storable([(parents[x], x) for x in key]):
                    yield key


class SaltedSorter:
    """covertable sorter: a deterministic integer hash of each tuple's value
    serials mixed with the seed (covertable's own FNV-over-strings sorter costs
    about a second per 170k tuples at order 3)."""

    @staticmethod
    def sort(pairs: list[tuple[int, ...]], salt: str = "", indices: Any = None,
             **_: Any) -> list[tuple[int, ...]]:
        mix = int.from_bytes(hashlib.sha256(str(salt).encode()).digest()[:8], "little")
        mask = (1 << 64) - 1

        def key(pair: tuple[int, ...]) -> int:
            h = mix
            for n in pair:
                h = ((h ^ (n + 0x9E3779B97F4A7C15)) * 0xBF58476D1CE4E5B9) & mask
                h ^= h >> 31
            return h

        return sorted(pairs, key=key)


__all__ = ["CONTROLLER_ATTRIBUTES", "HOOKS", "CheckedController", "FirstFit",
           "SaltedSorter", "SerialChecker"]
