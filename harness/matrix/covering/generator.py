"""N-wise covering arrays in one context, never holding a row the oracle refuses.

``covertable`` builds the array (its greedy criterion for small models, a
first-fit criterion for large ones) with the constraint checks answered from
the oracle's :class:`~.exclusions.Analysis` (``covertable_adapter``).  Every
generated row is then judged by the oracle again as a whole; a row it refuses
(a rule involving three settings, which pair analysis cannot see) is shrunk to
a minimal refused set, which becomes one more constraint, and the array is
regenerated.  So no cell the oracle refuses is ever produced.

Everything is deterministic: the same factors, versions and seed give the same
rows in the same order on every machine (covertable with a hash sorter salted
by the seed; no ``PYTHONHASHSEED``-dependent iteration anywhere).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from covertable import criteria

from harness.matrix.covering.covertable_adapter import CheckedController, FirstFit, SaltedSorter
from harness.matrix.covering.exclusions import Analysis, Checker, analyse
from harness.matrix.covering.factors import Factor, Setting, SettingsModel, judged, neutral
from harness.matrix.covering.judge import Judge, Refusal

log = logging.getLogger(__name__)

#: Above this many required tuples covertable's greedy criterion is too slow
#: (it rescans every uncovered tuple for every value it places); the first-fit
#: criterion is used instead (a few more rows, much faster).
GREEDY_MAX_TUPLES = 2000
#: Rounds of "judge every row, learn the refused sets, regenerate".
MAX_REPAIR_ROUNDS = 4


@dataclass
class Generated:
    """One context's array: its rows, the constraints it honoured, and how it went."""

    rows: list[dict[str, Any]]
    analysis: Analysis
    seconds: float
    criterion: str
    repair_rounds: int


def generate(factors: Sequence[Factor], order: int, judge: Judge, model: SettingsModel,
             seed: int = 0) -> Generated:
    """A covering array of ``order`` over ``factors`` in one context.

    ``factors`` must already have their context values restricted to this
    context (and unsupported values removed).  Returns rows as ``{factor:
    value}`` for every factor, each accepted by the oracle.
    """
    t0 = time.perf_counter()
    analysis = analyse(judge, model, factors)
    rounds = 0
    while True:
        domains = {f.name: [v for v in f.values if (f.name, v) not in analysis.unusable]
                   for f in factors}
        fixed = {n: vs[0] for n, vs in domains.items() if len(vs) == 1}
        free = {n: vs for n, vs in domains.items() if len(vs) > 1}
        if any(not vs for vs in domains.values()):
            empty = [n for n, vs in domains.items() if not vs]
            raise ValueError(f"no usable value left for {', '.join(empty)}")
        strength = min(order, len(free))
        crit_name = "greedy"
        if not free:
            rows = [dict(fixed)]
        else:
            estimate = _tuple_estimate(list(free.values()), strength)
            crit: Any = criteria.greedy
            if estimate > GREEDY_MAX_TUPLES:
                crit, crit_name = FirstFit, "first-fit"
            checker = Checker(analysis, fixed)
            ctrl = CheckedController(free, checker, strength=max(strength, 1),
                                     sorter=SaltedSorter, criterion=crit, salt=str(seed))
            rows = [{**fixed, **row} for row in ctrl.make()]
        bad = []
        for row in rows:
            settings = [(n, row[n]) for n in model.factors if n in row
                        and judged(model.factors[n].kind)]
            refusal = judge.verdict(*model.split(settings))
            if refusal is not None:
                bad.append((settings, refusal))
        if not bad:
            seconds = time.perf_counter() - t0
            log.debug("%d-way array: %d rows in %.2f s (%s, %d repair rounds)", order,
                      len(rows), seconds, crit_name, rounds)
            return Generated(rows, analysis, seconds, crit_name, rounds)
        rounds += 1
        if rounds > MAX_REPAIR_ROUNDS:
            raise RuntimeError(f"the oracle still refuses {len(bad)} generated rows after "
                               f"{MAX_REPAIR_ROUNDS} rounds, e.g. {bad[0]}")
        log.debug("repair round %d: the oracle refuses %d rows, e.g. [%s] %s", rounds,
                  len(bad), bad[0][1].rule, bad[0][1].reason)
        for settings, refusal in bad:
            group = _shrink(settings, refusal, judge, model, factors)
            analysis.nogoods[tuple(group)] = refusal


def _shrink(settings: list[Setting], refusal: Refusal, judge: Judge, model: SettingsModel,
            factors: Sequence[Factor]) -> list[Setting]:
    """A minimal subset of the row's non-neutral settings still refused by the same rule."""
    kinds = {f.name: f for f in factors}
    group = [s for s in settings if s[1] != neutral(kinds[s[0]])]
    i = 0
    while i < len(group):
        trial = group[:i] + group[i + 1:]
        again = judge.verdict(*model.split(trial))
        if again is not None and again.rule == refusal.rule:
            group = trial
        else:
            i += 1
    return group


def _tuple_estimate(domains: list[list[Any]], t: int) -> int:
    sizes = [len(d) for d in domains]
    if t <= 0 or t > len(sizes):
        return 0
    # Sum over factor combinations of the product of their sizes (elementary
    # symmetric polynomial), computed incrementally.
    e = [1] + [0] * t
    for s in sizes:
        for k in range(t, 0, -1):
            e[k] += e[k - 1] * s
    return e[t]


__all__ = ["GREEDY_MAX_TUPLES", "MAX_REPAIR_ROUNDS", "Generated", "generate"]
