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

The rules state the contract; ``harness.rules.deviations`` lists the QEMU
versions known to break it (``deviations_for(build.version)``), and a probe
that reproduces one is judged a ``deviation``, not an agreement.
"""
from __future__ import annotations

from harness.rules.book import (
    KNOWN_VERSIONS,
    apply,
    default_book,
    deviant_book,
    deviations_for,
    expected,
    is_modelled,
    known_deviations,
    reference_version,
    rules_for,
)
from harness.rules.model import (
    CAPS_COMMAND,
    PARAMS_COMMAND,
    BuildFacts,
    Deviation,
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
    "expected", "rules_for", "KNOWN_VERSIONS", "Deviation", "deviant_book", "deviations_for",
    "is_modelled", "known_deviations", "reference_version",
]

