"""The rule book: the oracle's data (:mod:`caps`, :mod:`params`) assembled
into one :class:`~harness.rules.model.RuleBook`, the known deviations from it
(:mod:`deviations`), and the oracle's entry points that default to them.

``model`` holds the machinery and knows no data; this module joins the two, so
the import order is one-way: model <- caps/params <- deviations <- book <- the
package.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from harness.rules import caps as _caps
from harness.rules import deviations as _deviations
from harness.rules import params as _params
from harness.rules.model import (
    Deviation,
    EnumSpec,
    ParamSpec,
    ProbeState,
    Rule,
    RuleBook,
    Verdict,
    Version,
    normalize_version,
)
from harness.rules.model import apply as _apply
from harness.rules.model import expected as _expected

#: Versions whose rules were read from QEMU's source (others are interpolated
#: between them; outside them there is no rule model).
KNOWN_VERSIONS: tuple[Version, ...] = ((6, 0), (7, 2), (8, 2), (9, 0), (10, 0))


def _annotated_params() -> tuple[ParamSpec, ...]:
    """PARAMS with ``ignored_until`` set where a known deviation drops a member.

    Only planners read it (a build that drops a value cannot be configured
    with it); the contract evaluation does not.
    """
    until: dict[str, Version] = {}
    for d in _deviations.DEVIATIONS:
        if d.build_match is None and d.until is not None:
            for name in d.drops_params:
                until[name] = max(until.get(name, (0, 0)), (d.until[0], d.until[1]))
    return tuple(dataclasses.replace(p, ignored_until=until[p.name]) if p.name in until else p
                 for p in _params.PARAMS)


@functools.lru_cache(maxsize=1)
def default_book() -> RuleBook:
    """The contract: the rule book built from :mod:`caps` and :mod:`params`."""
    enums = dict(_params.ENUMS)
    enums["MigrationCapability"] = EnumSpec(
        "MigrationCapability",
        tuple((c.name, c.since, c.until) for c in _caps.CAPS),
    )
    return RuleBook(
        caps=_caps.CAPS,
        params=_annotated_params(),
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


# -- deviations and the model's reach --------------------------------------------


def known_deviations() -> tuple[Deviation, ...]:
    """Every known deviation (:mod:`harness.rules.deviations`)."""
    return _deviations.DEVIATIONS


def deviations_for(version: Sequence[int], build: str = "", package: str = "") -> list[Deviation]:
    """The known deviations builds of ``version`` (full version) are expected to show."""
    return [d for d in _deviations.DEVIATIONS if d.affects(version, build, package)]


@functools.lru_cache(maxsize=None)
def deviant_book(deviation_id: str) -> RuleBook:
    """The contract patched with one deviation: how a build that has it answers."""
    for d in _deviations.DEVIATIONS:
        if d.id == deviation_id:
            return d.patch(default_book())
    raise KeyError(deviation_id)


def is_modelled(version: Sequence[int]) -> bool:
    """Whether the rules reach ``version`` (between the first and last known version)."""
    v = normalize_version(version)
    return KNOWN_VERSIONS[0] <= v <= KNOWN_VERSIONS[-1]


def reference_version(version: Sequence[int]) -> Version:
    """The version whose rules a build of ``version`` is judged by: its own when
    modelled, else the nearest known version."""
    v = normalize_version(version)
    if is_modelled(v):
        return v
    return KNOWN_VERSIONS[0] if v < KNOWN_VERSIONS[0] else KNOWN_VERSIONS[-1]
