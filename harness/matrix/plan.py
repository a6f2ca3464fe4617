"""A tier's final cells: included tiers, explicit cells, covering arrays, filter.

    planner = Planner(matrix, resolve=discover)     # harness.qemu.build.discover
    plan = planner.plan("nightly", seed=0)          # cells, coverage, exclusions
    cells = tier_cells(matrix, "smoke", resolve=discover)

A :class:`TierPlan` holds the cells, the coverage each covering array
achieved, and every value or combination that was excluded, with the reason
(the flow cannot run it, the build lacks it, or the rule oracle says QEMU
refuses it -- the error path).

Planning needs one fact from outside the file: the QEMU version of a build
that declares no ``version:`` (or of the ``--qemu`` binary), which only the
binary can tell.  The caller passes that knowledge in as ``resolve`` (a
:data:`Resolve`: ``BuildSpec`` -> its version, or why it is missing), so the
matrix package never reaches into QEMU discovery and a test can plan with a
stub.  ``resolve`` is only called for such builds, and only by a tier with a
covering array.

A covering strategy is split into *contexts* -- (source build, destination
build, accelerator) -- because that is what the oracle's verdicts depend on;
each context gets its own array over the strategy's factors, restricted to the
targets and builds of that context.  Coverage is then counted over the whole
strategy: a tuple is required when some context can hold it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.cell import BuildSpec, Cell
from harness.errors import MatrixError
from harness.known_issues import applicable
from harness.matrix.covering import (
    FLOW_UNSUPPORTED_CAPS,
    Context,
    ContextPart,
    Coverage,
    Exclusion,
    Factor,
    Judge,
    SettingsModel,
    coverage,
    exclusions_of,
    generate,
    merge_exclusions,
    version_of,
)
from harness.matrix.expand import build_for_arch, place_on_hosts, select, with_build
from harness.matrix.load import Matrix
from harness.matrix.schema import CoveringSpec
from harness.migration.dst_start import PAUSED as DST_PAUSED
from harness.migration.transports import FLOW_TRANSPORTS, TRANSPORT_SINCE

log = logging.getLogger(__name__)

#: A machine type with a version in its name resolves the same in every build.
VERSIONED_MACHINE_RE = re.compile(r"-\d+\.\d+$")


class ResolvedBuild(Protocol):
    """What planning needs to know about a build (``harness.qemu.build.QemuBuild``
    has it): its version, or why it cannot be had."""

    @property
    def version(self) -> tuple[int, ...]: ...

    @property
    def missing(self) -> str | None: ...


#: Gives the facts of a build: ``harness.qemu.build.discover`` in the harness.
Resolve = Callable[[BuildSpec], ResolvedBuild]


@dataclass
class CoveringReport:
    """What one covering strategy produced."""

    tier: str
    origin: str
    order: int
    seed: int
    cells: int
    coverage: Coverage
    seconds: float
    contexts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.origin} (tier {self.tier}): {self.coverage.describe()} tuples "
                f"in {self.cells} cells, seed {self.seed}, {self.seconds:.2f} s"
                + (f"; contexts: {'; '.join(self.contexts)}" if self.contexts else ""))

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "origin": self.origin, "order": self.order,
                "seed": self.seed, "cells": self.cells, "required": self.coverage.required,
                "covered": self.coverage.covered, "complete": self.coverage.complete,
                "missing": self.coverage.missing, "seconds": round(self.seconds, 3),
                "contexts": self.contexts}


@dataclass
class TierPlan:
    """A tier's cells, with the coverage of its covering arrays and the exclusions."""

    tier: str
    seed: int
    cells: list[Cell]
    coverings: list[CoveringReport] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    #: Cells the tier's ``filter`` (or an included tier's) removed.
    filtered_out: int = 0


class Planner:
    """Plans the tiers of one matrix, each (tier, seed) once.

    Included tiers are planned through the same planner, so a tier included
    by several others (nightly in release) costs its covering arrays once.
    """

    def __init__(self, matrix: Matrix, *, resolve: Resolve) -> None:
        self.matrix = matrix
        self.resolve = resolve
        self._plans: dict[tuple[str, int], TierPlan] = {}

    def plan(self, tier: str, seed: int = 0) -> "TierPlan":
        """The cells of ``tier`` with the coverage achieved and what was
        excluded, and why (``mharness list``)."""
        if tier not in self.matrix.expanded:
            raise MatrixError(f"unknown tier '{tier}' in {self.matrix.path} "
                              f"(defined: {', '.join(self.matrix.tiers)})")
        key = (tier, seed)
        if key not in self._plans:
            self._plans[key] = self._plan(tier, seed)
        return self._plans[key]

    def cells(self, tier: str, seed: int = 0) -> list[Cell]:
        """The cells of ``tier``: included tiers' first, then its explicit and
        product cells in file order, then its covering arrays' (``seed``
        salts those), all passed through the tier's ``filter``."""
        return list(self.plan(tier, seed).cells)

    def _plan(self, tier: str, seed: int) -> "TierPlan":
        matrix = self.matrix
        spec = matrix.tiers[tier]
        cells: dict[str, Cell] = {}
        reports: list[CoveringReport] = []
        exclusions: list[Exclusion] = []
        filtered = 0

        def add(cell: Cell) -> None:
            key = cell.id.lower()
            if key in cells and cells[key].fingerprint() != cell.fingerprint():
                raise MatrixError(f"cell id '{cell.id}' names different cells "
                                  f"({cells[key].origin} and {cell.origin})", matrix.path,
                                  spec.line, f"tiers.{tier}")
            cells.setdefault(key, cell)

        for inc in spec.include:
            sub = self.plan(inc, seed)
            for cell in sub.cells:
                add(cell)
            reports += sub.coverings
            exclusions += [x for x in sub.exclusions if x not in exclusions]
            filtered += sub.filtered_out
        own = [c for c in matrix.expanded[tier] if c.tier == tier]
        if matrix.build_override is not None:
            own = with_build(own, matrix.build_override)
        for cell in own:
            add(cell)
        for cov in spec.coverings:
            made, report, excluded = expand_covering(matrix, tier, cov, seed, self.resolve)
            for cell in made:
                add(cell)
            reports.append(report)
            exclusions += [x for x in excluded if x not in exclusions]
        result = list(cells.values())
        exclusions = merge_exclusions(exclusions)
        if spec.filter:
            kept = select(result, spec.filter)
            filtered += len(result) - len(kept)
            result = kept
        log.debug("tier %s (seed %d): %d cells, %d covering arrays, %d exclusions, "
                  "%d filtered out", tier, seed, len(result), len(reports), len(exclusions),
                  filtered)
        return TierPlan(tier, seed, result, reports, exclusions, filtered)


def plan_tier(matrix: Matrix, tier: str, seed: int = 0, *, resolve: Resolve) -> "TierPlan":
    """``tier``'s plan (see :class:`Planner`; plan several tiers of one matrix
    with one planner to compute shared tiers once)."""
    return Planner(matrix, resolve=resolve).plan(tier, seed)


def tier_cells(matrix: Matrix, tier: str, seed: int = 0, *, resolve: Resolve) -> list[Cell]:
    """``tier``'s cells (see :meth:`Planner.cells`)."""
    return Planner(matrix, resolve=resolve).cells(tier, seed)


# --- one covering strategy ---------------------------------------------------------


def expand_covering(matrix: Matrix, tier: str, cov: CoveringSpec, seed: int, resolve: Resolve
                    ) -> tuple[list[Cell], CoveringReport, list[Exclusion]]:
    """One covering strategy of ``tier``: its cells, its coverage report and
    what it excluded."""
    t0 = time.perf_counter()
    origin = f"{matrix.path}:{cov.line}"
    exclusions: list[Exclusion] = []
    transports = [t for t in cov.transports if t in FLOW_TRANSPORTS]
    for t in cov.transports:
        if t not in FLOW_TRANSPORTS:
            exclusions.append(Exclusion("unsupported", f"transport {t}", "", None,
                                        "the cell flow does not implement this transport yet "
                                        f"(it runs {', '.join(FLOW_TRANSPORTS)})"))
    caps = []
    for cap in cov.capabilities:
        if cap in FLOW_UNSUPPORTED_CAPS:
            exclusions.append(Exclusion("unsupported", f"{cap}=on", "", None,
                                        FLOW_UNSUPPORTED_CAPS[cap]))
        else:
            caps.append(cap)
    paramsets = {name: dict(matrix.paramsets[name]) for name in cov.paramsets}
    capsets = {name: dict(matrix.capsets[name]) for name in cov.capsets}
    for name, members in capsets.items():
        for cap in members:
            if cap in FLOW_UNSUPPORTED_CAPS:
                raise MatrixError(f"capset '{name}' sets {cap}: {FLOW_UNSUPPORTED_CAPS[cap]}",
                                  matrix.path, cov.line, f"{cov.where}.capset")

    # Groups: (src build, dst build, accel) -> targets.
    groups: dict[tuple[str, str, str], list[str]] = {}
    for target in cov.targets:
        tspec = matrix.targets[target]
        for src, dst in cov.builds:
            src = src or matrix.target_builds[target]
            dst = dst or matrix.target_builds[target]
            if src != dst and not VERSIONED_MACHINE_RE.search(tspec.machine):
                exclusions.append(Exclusion(
                    "unsupported", f"target {target} with {src} -> {dst}", "", None,
                    f"machine '{tspec.machine}' is an alias that each build resolves to its "
                    "own version: across builds name a versioned machine type "
                    "(e.g. pc-q35-7.2)"))
                continue
            groups.setdefault((src, dst, tspec.accel), []).append(target)

    factor_names = ["target", "transport", "src-build", "dst-build"]
    all_factors: dict[str, Factor] = {
        "target": Factor("target", "target", tuple(cov.targets)),
        "transport": Factor("transport", "transport", tuple(transports)),
        "src-build": Factor("src-build", "src-build",
                            tuple(dict.fromkeys(g[0] for g in groups))),
        "dst-build": Factor("dst-build", "dst-build",
                            tuple(dict.fromkeys(g[1] for g in groups))),
    }
    setting_factors = []
    if cov.capsets:
        setting_factors.append(Factor("capset", "capset", tuple(cov.capsets)))
    setting_factors += [Factor(c, "capability", (False, True)) for c in caps]
    setting_factors += [Factor(p, "parameter", vals) for p, vals in cov.parameters]
    if cov.paramsets:
        setting_factors.append(Factor("paramset", "paramset", tuple(cov.paramsets)))
    if cov.modes:
        # "" is precopy (harness.migration.modes); the oracle's judge knows what each
        # mode needs (postcopy-after-N: postcopy-ram; cancel-retry: a live peer).
        setting_factors.append(Factor("mode", "mode", tuple(cov.modes)))
    if cov.dst_starts:
        # How the destination starts (harness.migration.dst_start): the
        # command line, not what QEMU is told over QMP, so the oracle is not
        # asked about it.
        setting_factors.append(Factor("dst-start", "dst-start", tuple(cov.dst_starts)))
    for f in setting_factors:
        all_factors[f.name] = f
        factor_names.append(f.name)

    base_caps = {k: v for k, v in matrix.defaults.capabilities if v}
    base_params = dict(matrix.defaults.parameters)
    rows: list[dict[str, Any]] = []
    parts: list[ContextPart] = []
    contexts: list[str] = []
    if not transports:
        raise MatrixError("no transport left that the cell flow supports "
                          f"({', '.join(FLOW_TRANSPORTS)})", matrix.path, cov.line,
                          f"{cov.where}.transport")
    for (src, dst, accel), targets in groups.items():
        versions = []
        problem = None
        for name in (src, dst):
            version, problem = _version(matrix, name, matrix.targets[targets[0]].arch,
                                        resolve)
            if problem:
                break
            versions.append(version)
        ctx_text = f"{src}->{dst}" if src != dst else src
        if problem:
            exclusions.append(Exclusion("unavailable", f"targets {', '.join(targets)} on "
                                        f"{ctx_text}", "", None, problem))
            continue
        ctx = Context(versions[0], versions[1], accel)
        label = f"{ctx_text}, {ctx.describe()}"
        usable = []
        for t in transports:
            since = TRANSPORT_SINCE.get(t)
            if since and min(versions) < since:
                exclusions.append(Exclusion(
                    "absent", f"transport {t}", label, None,
                    f"QEMU {min(versions)[0]}.{min(versions)[1]} has no {t}: migration "
                    f"(added in {since[0]}.{since[1]})"))
            else:
                usable.append(t)
        if not usable:
            continue
        contexts.append(label)
        factors = [
            Factor("target", "target", tuple(targets)),
            Factor("transport", "transport", tuple(usable)),
            Factor("src-build", "src-build", (src,)),
            Factor("dst-build", "dst-build", (dst,)),
            *setting_factors,
        ]
        model = SettingsModel(factors, paramsets, base_caps=base_caps, base_params=base_params,
                              capsets=capsets,
                              transport_params=dict(matrix.defaults.transport_parameters))
        try:
            gen = generate(factors, cov.order, _judge(ctx), model, seed)
        except ValueError as exc:
            raise MatrixError(f"covering array impossible in context {label}: {exc}",
                              matrix.path, cov.line, cov.where) from None
        rows += gen.rows
        parts.append(ContextPart(ctx, factors, gen.analysis))
        exclusions += exclusions_of(gen.analysis, label)
    cov_report = coverage(rows, [all_factors[n] for n in factor_names], parts, cov.order)
    cells = [_cell(matrix, tier, cov, row, caps, origin) for row in rows]
    report = CoveringReport(tier, origin, cov.order, seed, len(cells), cov_report,
                            time.perf_counter() - t0, contexts)
    log.debug("covering %s: %s", origin, report.describe())
    return cells, report, exclusions


_JUDGES: dict[Context, Judge] = {}


def _judge(ctx: Context) -> Judge:
    if ctx not in _JUDGES:
        _JUDGES[ctx] = Judge(ctx)
    return _JUDGES[ctx]


def _version(matrix: Matrix, build: str, arch: str, resolve: Resolve
             ) -> tuple[Any, str | None]:
    """The version the oracle assumes for a build: declared, or asked of the binary."""
    if matrix.build_override is None and build in matrix.build_versions:
        return version_of(matrix.build_versions[build]), None
    spec: BuildSpec = matrix.build_override or build_for_arch(matrix.builds[build], arch)
    found = resolve(spec)
    if found.missing:
        return None, (f"build '{build}' unavailable ({found.missing}) and the matrix "
                      "declares no 'version:' for it, so the rule oracle cannot be asked")
    log.debug("build %s (%s): version %s from the binary", build, spec.binary, found.version)
    return found.version[:2], None


def _cell(matrix: Matrix, tier: str, cov: CoveringSpec, row: Mapping[str, Any],
          caps: Sequence[str], origin: str) -> Cell:
    target_name = row["target"]
    target = matrix.targets[target_name]
    src, dst = row["src-build"], row["dst-build"]
    on = [c for c in caps if row.get(c)]
    capabilities = dict(matrix.defaults.capabilities)
    capset = row.get("capset")
    if capset:
        capabilities.update(dict(matrix.capsets[capset]))
        on = [c for c, v in matrix.capsets[capset] if v] + on
    capabilities.update({c: True for c in on})
    parameters = matrix.defaults.for_transport(row["transport"])
    paramset = row.get("paramset")
    if paramset:
        parameters.update(dict(matrix.paramsets[paramset]))
    factor_params = {p: row[p] for p, _ in cov.parameters if row.get(p) is not None}
    parameters.update(factor_params)
    parts = [target_name, row["transport"], "cov", "+".join(on) or "precopy"]
    if paramset:
        parts.append(paramset)
    mode = row.get("mode") or ""
    if mode:
        parts.append(mode)
    dst_start = row.get("dst-start") or DST_PAUSED
    if dst_start != DST_PAUSED:
        parts.append(dst_start)
    if factor_params:
        parts.append("p" + settings_digest(factor_params))
    default_build = matrix.target_builds[target_name]
    if src != dst:
        parts.append(f"{src}-to-{dst}")
    elif src != default_build:
        parts.append(src)
    cell_id = "-".join(parts)
    return place_on_hosts(Cell(
        id=cell_id,
        target=target,
        src_build=build_for_arch(matrix.build_override or matrix.builds[src], target.arch),
        dst_build=build_for_arch(matrix.build_override or matrix.builds[dst], target.arch),
        transport=row["transport"],
        capabilities=tuple(sorted(capabilities.items())),
        parameters=tuple(sorted(parameters.items())),
        timeout=cov.timeout if cov.timeout is not None else matrix.defaults.timeout,
        downtime_tolerance_ms=(cov.downtime_tolerance_ms if cov.downtime_tolerance_ms
                               is not None else matrix.defaults.downtime_tolerance_ms),
        expect_fail=cov.expect_fail,
        repeat=cov.repeat,
        known_issues=applicable(matrix.known_issues, cell_id, target_name, (src, dst)),
        tier=tier,
        origin=origin,
        mode=mode,
        dst_start=dst_start,
    ), matrix)


def settings_digest(params: Mapping[str, Any]) -> str:
    """Six hex digits naming a parameter assignment in a cell id (stable
    across machines and Python hash seeds)."""
    text = json.dumps(dict(sorted(params.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def dimensions(cell: Cell) -> dict[str, Any]:
    """A cell's dimension values, for ``mharness list --json``."""
    if cell.scenario:
        # A failure path: what runs, and on which build; the scenario sets
        # its own transports and capabilities.
        return {"kind": cell.kind, "scenario": cell.scenario, "target": cell.target.name,
                "src_build": cell.src_build.name, "dst_build": cell.dst_build.name}
    return {
        "target": cell.target.name,
        "transport": cell.transport,
        "src_build": cell.src_build.name,
        "dst_build": cell.dst_build.name,
        "capabilities": sorted(k for k, v in cell.capabilities if v),
        "parameters": dict(cell.parameters),
        "mode": cell.mode or "precopy",
        "fault": cell.fault or None,
        "dst_start": cell.dst_start,
    }


__all__ = ["CoveringReport", "Planner", "Resolve", "ResolvedBuild", "TierPlan",
           "dimensions", "expand_covering", "plan_tier", "settings_digest",
           "tier_cells"]
