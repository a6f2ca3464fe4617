"""Failure-path scenarios: what a user relies on when a migration goes wrong.

Each scenario runs against real QEMU with the dirtier guest, makes one thing go
wrong (a bad destination, a cancel in a given state, a killed destination, a
configuration the destination refuses, a QMP command QEMU must refuse, the
migration channel cut during postcopy by the harness's proxy) and asserts what
a user depends on afterwards:

* the migration ends in the right state with the right error (a message
  pattern per error, tolerant to wording drift between 7.2 and 10.0, with the
  QEMU function that raises it cited next to it: :mod:`.catalogue`);
* the source VM is ``running`` again and its guest keeps heartbeating;
* its RAM is intact: a second migration, to a fresh destination, completes
  and passes the exact RAM comparison and the guest invariant (or, where no
  migration is needed, the guest invariant holds on the stopped source).

Modules: :mod:`.catalogue` (expected errors), :mod:`.verdicts` (pure
judges), :mod:`.rig` (the two-QEMU rig), :mod:`.registry` (ids, descriptions,
where each applies, the entry point), and one module per theme:
:mod:`.destination`, :mod:`.cancel`, :mod:`.mismatch`, :mod:`.refusals`,
:mod:`.postcopy`.  Every migration is driven by
:mod:`harness.migration.driver`, as in the cell flow.

Use::

    from harness.scenarios import SCENARIOS, run_scenario
    SCENARIOS["cancel-in-active"].description      # one line
    SCENARIOS["cancel-in-active"].applies_to(build) # None, or why not (a skip)
    result = run_scenario("cancel-in-active", build, logdir)  # a CellResult
"""
from __future__ import annotations

from pathlib import Path

# Theme modules register their scenarios on import, in this order.
from harness.scenarios import destination, cancel, mismatch, refusals, postcopy  # noqa: F401
from harness.qemu.build import QemuBuild
from harness.results import CellResult
from harness.failpaths import SCENARIO_IDS
from harness.scenarios.registry import SCENARIOS, Scenario

if tuple(SCENARIOS) != SCENARIO_IDS:
    # The one check that the plain list the matrix validates tiers against
    # (without importing this package's QEMU code) is exactly the registry.
    raise ImportError(f"harness.failpaths.SCENARIO_IDS {list(SCENARIO_IDS)} differs from "
                      f"the registered scenarios {list(SCENARIOS)}: list every scenario "
                      "there, in registration order")

__all__ = ["SCENARIOS", "Scenario", "get", "run_scenario"]


def get(scenario_id: str) -> Scenario:
    """The scenario registered under ``scenario_id`` (KeyError names the known ids)."""
    try:
        return SCENARIOS[scenario_id]
    except KeyError:
        raise KeyError(f"unknown scenario '{scenario_id}' (known: "
                       f"{', '.join(SCENARIOS)})") from None


def run_scenario(scenario_id: str, build: QemuBuild, logdir: Path,
                 result_id: str | None = None) -> CellResult:
    """Synchronous facade for pytest and scripts."""
    return get(scenario_id).run(build, logdir, result_id)
