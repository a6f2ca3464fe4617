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

from harness.rules.book import KNOWN_VERSIONS, apply, default_book, expected, rules_for
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
)

__all__ = [
    "CAPS_COMMAND", "PARAMS_COMMAND", "BuildFacts", "EnumSpec", "HostFacts", "Phase", "ProbeState",
    "Rule", "RuleBook", "Side", "SourceRef", "Verdict", "Version", "apply", "default_book",
    "expected", "rules_for", "KNOWN_VERSIONS",
]

