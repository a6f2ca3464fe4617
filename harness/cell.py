"""Plain data that flows from the matrix to the runner.

Everything here is a frozen dataclass so that a cell is hashable, printable and
identical on every machine that expands the same matrix: the id and the seed of a
cell are derived from its contents, never from the order it was generated in.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.hosts.inventory import HostSpec
from harness.known_issues import KnownIssue
from harness.migration.dst_start import PAUSED as DST_PAUSED
from harness.units import MiB  # noqa: F401  (re-exported: callers import it from here)


@dataclass(frozen=True)
class BuildSpec:
    """A QEMU build as the matrix declares it: a binary plus what it needs to run.

    A build is more than a path: QEMU unpacked into a private prefix needs its own
    firmware directories (``-L``) and sometimes a library path, and a porter's build
    may need extra arguments.  Discovery (``harness.qemu.build``) turns this into a
    ``QemuBuild`` with version, machines and migration capabilities.
    """

    name: str
    binary: str
    data_dirs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    extra_args: tuple[str, ...] = ()
    #: A required build missing from the machine is an error, not a skip.
    required: bool = False


@dataclass(frozen=True)
class WorkloadSpec:
    """What runs inside the guest.

    ``dirtier`` is the bare-metal boot block from ``images/``: it increments the
    first byte of every 4 KiB page in ``[region_base, region_base + region_size)``
    forever and writes one heartbeat byte to COM1 per pass.
    """

    kind: str = "dirtier"
    region_base: int = 2 * MiB
    region_size: int = 100 * MiB
    #: Passes the source guest must have completed before migration starts.
    warmup_passes: int = 3
    #: Settings of one kind only, as sorted (key, value) pairs (``linux``:
    #: harness.guest.linux_options).
    options: tuple[tuple[str, Any], ...] = ()


#: Firmware a target may name (``firmware:`` in matrix.yaml); the first is the default.
FIRMWARES = ("seabios", "qboot")
DEFAULT_FIRMWARE = FIRMWARES[0]


@dataclass(frozen=True)
class TargetSpec:
    """The machine being migrated: architecture, machine type, accelerator, size."""

    name: str
    arch: str = "x86_64"
    machine: str = "q35"
    accel: str = "tcg"
    memory: int = 256 * MiB
    cpu: str | None = None
    smp: int = 1
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    #: ``-accel NAME,KEY=VALUE,...`` properties, e.g. KVM's ``dirty-ring-size``
    #: (which the ``dirty-limit`` capability needs).
    accel_options: tuple[tuple[str, str], ...] = ()
    #: What starts the guest (x86): ``seabios``, QEMU's default BIOS, which
    #: boots the dirtier's disk after a full POST; or ``qboot`` (``-bios
    #: qboot.rom``, shipped with QEMU), which skips the POST and starts the
    #: dirtier's PVH build given as ``-kernel`` (harness.guest.dirtier).
    firmware: str = DEFAULT_FIRMWARE


@dataclass(frozen=True)
class Cell:
    """One migration to run and judge.

    ``capabilities`` and ``parameters`` are applied to both sides (QEMU requires
    most capabilities to match); they are sorted tuples so equal cells compare
    equal.  ``expect_fail`` names checks that this cell exists to make fail (a
    negative control): the cell passes only when exactly those checks fail.
    """

    id: str
    target: TargetSpec
    src_build: BuildSpec
    dst_build: BuildSpec
    transport: str = "unix"
    capabilities: tuple[tuple[str, bool], ...] = ()
    parameters: tuple[tuple[str, Any], ...] = ()
    timeout: float = 60.0
    downtime_tolerance_ms: float = 250.0
    expect_fail: tuple[str, ...] = ()
    #: How many times the runner runs the cell (``repeat: N``): an intermittent
    #: defect is counted ("k of N runs failed"), not sampled once.
    repeat: int = 1
    #: The ``known-issues:`` declarations that name this cell; which of them
    #: apply is decided on the builds' versions when the cell has run
    #: (harness.known_issues).
    known_issues: tuple[KnownIssue, ...] = ()
    tier: str = ""
    #: Where the cell was declared, "matrix.yaml:42", for error messages.
    origin: str = ""
    #: How the harness migrates ("" = precopy; see harness.migration.modes).
    mode: str = ""
    #: A fault the harness injects so the cell is a negative control ("" = none).
    fault: str = ""
    #: A failure-path scenario (``harness.scenarios``) this cell runs instead of
    #: the migration flow ("" = a migration cell).  Its target is the scenario
    #: rig's guest and its builds the build it runs on (both sides).
    scenario: str = ""
    #: How the destination QEMU starts: ``paused`` (``-S``, the harness sends
    #: ``cont``) or ``autostart`` (QEMU runs the guest itself after
    #: switchover); see harness.migration.dst_start.
    dst_start: str = DST_PAUSED
    #: Where the source and the destination QEMU run (None: this machine):
    #: inventory entries (``src-host``/``dst-host``, ``mharness run --hosts``).
    src_host: HostSpec | None = None
    dst_host: HostSpec | None = None

    @property
    def placed(self) -> bool:
        """Either side runs on another host than this machine."""
        return any(h is not None and not h.is_local for h in (self.src_host, self.dst_host))

    @property
    def kind(self) -> str:
        """``migration`` (the cell flow) or ``scenario`` (a failure path)."""
        return "scenario" if self.scenario else "migration"

    @property
    def seed(self) -> int:
        """A stable per-cell seed derived from the cell's id and inputs."""
        digest = hashlib.sha256(self.fingerprint().encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def fingerprint(self) -> str:
        """Canonical JSON of the cell's inputs (without tier/origin)."""
        data = asdict(self)
        data.pop("tier", None)
        data.pop("origin", None)
        # How often it runs and what is known about its builds do not change
        # the migration: not part of the seed.
        data.pop("repeat", None)
        data.pop("known_issues", None)
        # Builds by name: their paths hold home directories, which differ
        # between machines while the cell is the same.
        data["src_build"] = self.src_build.name
        data["dst_build"] = self.dst_build.name
        # Fields added later are left out while unset, so existing cells keep
        # their seeds.
        if not self.target.accel_options:
            data["target"].pop("accel_options")
        if not self.target.workload.options:
            data["target"]["workload"].pop("options")
        if self.target.firmware == DEFAULT_FIRMWARE:
            data["target"].pop("firmware")
        for key in ("mode", "fault", "scenario"):
            if not data[key]:
                data.pop(key)
        if self.dst_start == DST_PAUSED:
            data.pop("dst_start")
        # Hosts by name (addresses and keys are the lab's, not the cell's);
        # a local cell has none, so its seed is as before hosts existed.
        for key in ("src_host", "dst_host"):
            spec = getattr(self, key)
            if spec is None:
                data.pop(key)
            else:
                data[key] = spec.name
        return json.dumps(data, sort_keys=True, default=str)

    def inputs(self) -> dict[str, Any]:
        """The cell's inputs as JSON-friendly data for results.json."""
        if self.scenario:
            return self._scenario_inputs()
        hosts = ({"src_host": self.src_host.name if self.src_host else "local",
                  "dst_host": self.dst_host.name if self.dst_host else "local"}
                 if self.placed else {})
        return {
            **hosts,
            "kind": self.kind,
            "target": asdict(self.target),
            "src_build": self.src_build.name,
            "dst_build": self.dst_build.name,
            "transport": self.transport,
            "capabilities": dict(self.capabilities),
            "parameters": dict(self.parameters),
            "timeout": self.timeout,
            "downtime_tolerance_ms": self.downtime_tolerance_ms,
            "expect_fail": list(self.expect_fail),
            "repeat": self.repeat,
            "known_issues": [ki.id for ki in self.known_issues],
            "mode": self.mode or "precopy",
            "fault": self.fault or None,
            "dst_start": self.dst_start,
            "tier": self.tier,
            "origin": self.origin,
            "seed": self.seed,
        }

    def _scenario_inputs(self) -> dict[str, Any]:
        """A scenario cell's inputs: what it runs and where; the scenario sets
        its own capabilities, parameters and transports."""
        return {
            "kind": self.kind,
            "scenario": self.scenario,
            "target": asdict(self.target),
            "src_build": self.src_build.name,
            "dst_build": self.dst_build.name,
            "timeout": self.timeout,
            "known_issues": [ki.id for ki in self.known_issues],
            "tier": self.tier,
            "origin": self.origin,
            "seed": self.seed,
        }
