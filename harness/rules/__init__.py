"""The rule oracle: what a QEMU build must accept or refuse, and why.

Public API::

    from harness.rules import expected, ProbeState, Side, Phase
    v = expected((10, 0), "migrate-set-capabilities",
                 {"capabilities": [{"capability": "switchover-ack", "state": True}]},
                 ProbeState())
    v.accept        # False
    v.rule_id       # "caps.switchover-ack.requires-return-path"
    v.matches(msg)  # does QEMU's error text name that rule?

``harness.rules.probes`` generates probes for a build and runs them over any
async QMP ``execute`` function, comparing QEMU's verdict with the oracle's.
"""
from __future__ import annotations

import functools

from harness.rules import caps as _caps
from harness.rules import params as _params
from harness.rules.model import (
    CAPS_COMMAND,
    PARAMS_COMMAND,
    BuildFacts,
    EnumSpec,
    HostFacts,
    Phase,
    ProbeState,
    Rule,
    RuleBook,
    Side,
    SourceRef,
    Verdict,
    Version,
    apply,
    expected,
)

__all__ = [
    "CAPS_COMMAND", "PARAMS_COMMAND", "BuildFacts", "HostFacts", "Phase", "ProbeState",
    "Rule", "RuleBook", "Side", "SourceRef", "Verdict", "Version", "apply", "default_book",
    "expected", "rules_for", "KNOWN_VERSIONS",
]

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
