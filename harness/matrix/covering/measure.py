"""How complete a covering strategy's cells are: required t-tuples against the
tuples the rows hold.

Counted independently of covertable's own bookkeeping, over the whole
strategy: a tuple is *required* when some context could hold it in a row the
oracle accepts (:func:`~.exclusions.feasible`), so a tuple the oracle refuses
everywhere is not a gap, and a tuple one context could have held but no row
holds is.  The figure ``mharness list`` prints is this one.
"""
from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.matrix.covering.exclusions import Analysis, feasible
from harness.matrix.covering.factors import JUDGED_KINDS, Factor, Setting, fmt_setting, judged
from harness.matrix.covering.judge import Context

log = logging.getLogger(__name__)


@dataclass
class Coverage:
    """How many required t-tuples the rows contain."""

    order: int
    required: int
    covered: int
    #: Up to 20 required tuples no row contains (empty when complete).
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.covered == self.required

    def describe(self) -> str:
        return f"{self.order}-way: {self.covered}/{self.required}"


@dataclass
class ContextPart:
    """One context's slice of a covering strategy: its factors and its analysis."""

    context: Context
    factors: list[Factor]
    analysis: Analysis


def coverage(rows: Sequence[Mapping[str, Any]], factors: Sequence[Factor],
             parts: Sequence[ContextPart], order: int) -> Coverage:
    """Required tuples (feasible in some context) against the tuples the rows hold.

    Factors with one value are left out (every row has them).  Rows are coded
    as value indices so the covered side is counted with numpy, one factor
    combination at a time.
    """
    multi = [f for f in factors if len(f.values) > 1]
    t = min(order, len(multi))
    if t == 0:
        return Coverage(order, 0, 0)
    index = [{_key(v): i for i, v in enumerate(f.values)} for f in multi]
    coded = np.array([[index[j].get(_key(r.get(f.name)), -1) for j, f in enumerate(multi)]
                      for r in rows], dtype=np.int64).reshape(len(rows), len(multi))
    part_domains = [{f.name: f.values for f in p.factors} for p in parts]
    required = covered = 0
    missing: list[str] = []
    for combo in itertools.combinations(range(len(multi)), t):
        fs = [multi[j] for j in combo]
        sizes = [len(f.values) for f in fs]
        if len(rows):
            code = np.zeros(len(rows), dtype=np.int64)
            valid = np.ones(len(rows), dtype=bool)
            for j, size in zip(combo, sizes):
                code = code * size + coded[:, j]
                valid &= coded[:, j] >= 0
            have = set(np.unique(code[valid]).tolist())
        else:
            have = set()
        for values in itertools.product(*(range(s) for s in sizes)):
            tup = [(f.name, f.values[v]) for f, v in zip(fs, values)]
            if not any(_feasible_in(tup, p, d) for p, d in zip(parts, part_domains)):
                continue
            required += 1
            code_v = 0
            for v, size in zip(values, sizes):
                code_v = code_v * size + v
            if code_v in have:
                covered += 1
            elif len(missing) < 20:
                missing.append(" + ".join(fmt_setting(s) for s in tup))
    if covered < required:
        log.info("%d-way coverage incomplete: %d/%d, e.g. %s", order, covered, required,
                    missing[0] if missing else "?")
    return Coverage(order, required, covered, missing)


def _feasible_in(tup: Sequence[Setting], part: ContextPart,
                 domains: Mapping[str, Sequence[Any]]) -> bool:
    for name, value in tup:
        if name not in domains or value not in domains[name]:
            return False
    settings = [s for s in tup if s[0] not in _context_names(part)]
    # A judged factor (the transport) is in every row: the tuple is only
    # possible with some value of it (mapped-ram + return-path is not: one
    # needs file:, the other a live peer).
    names = {s[0] for s in settings}
    for f in part.factors:
        if f.kind in JUDGED_KINDS and f.name not in names:
            options = [v for v in domains.get(f.name, f.values)
                       if feasible(settings + [(f.name, v)], part.analysis, domains)]
            if not options:
                return False
    return feasible(settings, part.analysis, domains)


def _context_names(part: ContextPart) -> set[str]:
    return {f.name for f in part.factors if not judged(f.kind)}


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


__all__ = ["ContextPart", "Coverage", "coverage"]
