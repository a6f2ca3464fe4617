"""The rule book: the oracle's data (:mod:`caps`, :mod:`params`) assembled
into one :class:`~harness.rules.model.RuleBook`, and the oracle's entry points
that default to it.

``model`` holds the machinery and knows no data; this module joins the two, so
the import order is one-way: model <- caps/params <- book <- the package.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from harness.rules import caps as _caps
from harness.rules import params as _params
from harness.rules.model import EnumSpec, ProbeState, Rule, RuleBook, Verdict, Version
from harness.rules.model import apply as _apply
from harness.rules.model import expected as _expected

#: Versions whose rules were read from QEMU's source (others are interpolated).
KNOWN_VERSIONS: tuple[Version, ...] = ((7, 2), (8, 2), (9, 0), (10, 0))


@functools.lru_cache(maxsize=1)
def default_book() -> RuleBook:
    """The rule book built from :mod:`caps` and :mod:`params`."""
    enums = dict(_params.ENUMS)
    enums["MigrationCapability"] = EnumSpec(
        "MigrationCapability",
        tuple((c.name, c.since, c.until) for c in _caps.CAPS),
    )
    return RuleBook(
        caps=_caps.CAPS,
        params=_params.PARAMS,
        enums=enums,
        state_rules=_caps.STATE_RULES,
        cap_rules=_caps.CAP_RULES,
        param_rules=_params.PARAM_RULES,
    )


def rules_for(version: Version, command: str | None = None) -> list[Rule]:
    """The rules that apply to ``version``, in QEMU's check order."""
    return default_book().rules(tuple(version[:2]), command)  # type: ignore[arg-type]


def expected(version: Sequence[int], command: str, args: Mapping[str, Any], state: ProbeState,
             *, book: RuleBook | None = None) -> Verdict:
    """:func:`harness.rules.model.expected` with the default rule book."""
    return _expected(version, command, args, state, book=book or default_book())


def apply(version: Sequence[int], command: str, args: Mapping[str, Any], state: ProbeState,
          *, book: RuleBook | None = None) -> ProbeState:
    """:func:`harness.rules.model.apply` with the default rule book."""
    return _apply(version, command, args, state, book=book or default_book())
