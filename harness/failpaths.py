"""Failure-path scenarios as the matrix sees them: their ids, the guest their
rig starts, and the cell that runs one.

The scenarios themselves (:mod:`harness.scenarios`) drive QEMU, and loading
or planning the matrix must not import QEMU code (a tier's versions come
through the planner's resolver; tests/test_covering.py holds it to that).
So what a tier needs to declare, validate, list and select scenario cells
lives here, as plain data.  :mod:`harness.scenarios` refuses to load unless
its registered scenarios are exactly :data:`SCENARIO_IDS`, in order: the list
cannot drift from the scenarios.

A scenario cell's id is ``failpath-<scenario>-<label>``, where the label
names the build as the pytest ids always have: ``qemu-<version>`` for a
build whose version the matrix declares (``system`` -> ``qemu-7.2``), else
the build's name.
"""
from __future__ import annotations

from harness.cell import BuildSpec, Cell, TargetSpec, WorkloadSpec
from harness.units import MiB

#: Every scenario, in the order the registry runs and lists them.  Stable:
#: result folders, history and test ids are built from them.
SCENARIO_IDS: tuple[str, ...] = (
    # destination.py
    "bad-destination-tcp-refused", "bad-destination-unix-missing", "destination-killed",
    # cancel.py
    "cancel-in-setup", "cancel-in-active", "cancel-in-pre-switchover",
    # mismatch.py
    "uuid-mismatch", "uuid-source-only", "uuid-destination-only", "ram-size-mismatch",
    "machine-type-mismatch",
    # refusals.py
    "refused-while-active", "postcopy-without-capability", "destination-refusals",
    "unknown-uri-scheme",
    # postcopy.py
    "postcopy-recover", "postcopy-break-unrecovered",
)

#: The guest every scenario migrates: small so a scenario takes about a second.
TARGET = TargetSpec(name="x86_64-q35-tcg-failpath", machine="q35", accel="tcg",
                    memory=128 * MiB,
                    workload=WorkloadSpec(region_base=2 * MiB, region_size=16 * MiB,
                                          warmup_passes=2))

#: A scenario's watchdog: each takes 1-5 s here; this only ends a hang.
SCENARIO_TIMEOUT = 90.0

#: What every scenario result id starts with.
PREFIX = "failpath-"


def result_id(scenario_id: str, label: str) -> str:
    """A scenario's result (and cell) id on the build labelled ``label``."""
    return f"{PREFIX}{scenario_id}-{label}"


def build_label(build: str, version: str | None) -> str:
    """How a build appears in a scenario cell's id: ``qemu-<version>`` when the
    matrix declares its version, else the build's own name."""
    return f"qemu-{version}" if version else build


def scenario_cell(scenario_id: str, build: BuildSpec, label: str, *, tier: str = "",
                  origin: str = "") -> Cell:
    """The cell that runs ``scenario_id`` with ``build`` on both sides.

    The target is the rig's own small guest (what the scenario really starts);
    no transport, capabilities or parameters: each scenario picks its own URIs
    and settings (so a test looking for "a unix cell" never picks one), and
    one that needs what the build lacks is skipped with the reason when it
    runs (``Scenario.applies_to``), never refused up front.
    """
    if scenario_id not in SCENARIO_IDS:
        raise KeyError(f"unknown scenario '{scenario_id}' (known: {', '.join(SCENARIO_IDS)})")
    return Cell(id=result_id(scenario_id, label), target=TARGET, src_build=build,
                dst_build=build, transport="", timeout=SCENARIO_TIMEOUT, tier=tier,
                origin=origin, scenario=scenario_id)


__all__ = ["PREFIX", "SCENARIO_IDS", "SCENARIO_TIMEOUT", "TARGET", "build_label",
           "result_id", "scenario_cell"]
