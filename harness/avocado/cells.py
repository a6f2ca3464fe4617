"""The contract between the resolver and the runner: a cell as an Avocado runnable.

Avocado resolves test references in the job process and runs each runnable in
a separate task process (``avocado-runner-mharness-cell task-run ...``), which
gets nothing but the runnable's kind, uri, tags and keyword arguments on its
command line.  So a runnable carries *where its cell comes from* -- the
matrix file, tier, seed and ``--qemu`` override, a :class:`MatrixRef` -- and
its cell id as the uri, and the task process plans that tier again with the
very functions ``mharness list``/``mharness run`` use
(``harness.matrix.plan_tier``) and takes the cell with that id.  Why not
serialise the ``Cell`` instead: planning is the one place that knows how a
matrix becomes cells; a second decoder of cells would be a second copy of
that knowledge, and the same matrix, tier and seed give the same cells with
the same ids on every machine anyway (that is what makes ``--shard`` and
``--rerun-failed`` work).

The uri being the cell id makes Avocado's test name the cell id: ``avocado
list`` prints the ids ``mharness list`` prints, results.json and xunit name
the tests by them, and the test's results folder is ``<n>-<cell id>``.

With ``--mharness-cells-from-variants`` a matrix file is instead one runnable
that Avocado multiplies by its variants (CIT, yaml_to_mux, ``-p``): each
variant's parameters declare a cell with the matrix's names, and the matrix's
own expansion (``harness.matrix.expand.make_cell``) makes it
(:func:`cell_from_variant`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from avocado.core.nrunner.runnable import Runnable

from harness.cell import Cell
from harness.errors import HarnessError
from harness.matrix import CellDecl, Matrix, TierPlan, load_matrix_on, override_build, plan_tier
from harness.matrix.expand import make_cell
from harness.migration.modes import PRECOPY, mode_needs, mode_problem
from harness.qemu.build import discover

log = logging.getLogger(__name__)

#: The runnable kind: it names the runner (``avocado-runner-mharness-cell``,
#: entry point ``avocado.plugins.runnable.runner``) and shows in ``avocado list``.
KIND = "mharness-cell"

#: ``mharness list``/``mharness run`` defaults, so ``avocado list matrix.yaml``
#: lists what ``mharness list`` lists.
DEFAULT_TIER = "smoke"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class MatrixRef:
    """A tier of a matrix file, planned the way ``mharness run`` plans it.

    ``matrix`` is an absolute path: the task process may run in another
    directory than the job that resolved the reference."""

    matrix: str
    tier: str = DEFAULT_TIER
    seed: int = DEFAULT_SEED
    #: ``--qemu PATH``: this binary for both sides of every cell (ids unchanged).
    qemu: str | None = None
    #: The cells are not the tier's but Avocado's variants (:func:`cell_from_variant`).
    from_variants: bool = False

    def load(self) -> Matrix:
        """The matrix (with ``--qemu``); HarnessError on bad input, with the
        file, line and key of the problem."""
        return load_matrix_on(self.matrix, self.qemu, "--mharness-qemu")

    def plan(self) -> TierPlan:
        """The tier's plan (cells, coverage, exclusions)."""
        return plan_tier(self.load(), self.tier, self.seed, resolve=discover)

    def to_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"matrix": self.matrix, "tier": self.tier, "seed": self.seed}
        if self.qemu:
            kwargs["qemu"] = self.qemu
        if self.from_variants:
            kwargs["from_variants"] = True
        return kwargs

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "MatrixRef":
        try:
            return cls(matrix=str(kwargs["matrix"]), tier=str(kwargs.get("tier") or DEFAULT_TIER),
                       seed=int(kwargs.get("seed") or DEFAULT_SEED), qemu=kwargs.get("qemu") or None,
                       from_variants=bool(kwargs.get("from_variants")))
        except (KeyError, TypeError, ValueError) as exc:
            raise HarnessError(f"not a {KIND} runnable: keyword arguments {kwargs!r} ({exc})") from None


def tags_of(cell: Cell) -> dict[str, set[str] | None]:
    """Avocado tags for ``--filter-by-tags``: ``arch:x86_64``, ``accel:tcg``,
    ``transport:unix``, ``target:NAME``, ``build:NAME`` (either side),
    ``src-build:``/``dst-build:``, ``machine:``, ``mode:``, ``dst-start:``, ``cap:NAME`` (each
    enabled capability), ``tier:``, ``kind:`` (``migration`` or ``scenario``),
    ``scenario:``, ``fault:``; flat ``mharness``, and ``negative-control`` for
    cells with ``expect-fail``.

    Key:value tags, as Avocado's own tests write them (``:avocado:
    tags=arch:x86_64``), so ``-t accel:tcg,transport:unix`` and
    ``-t accel:-kvm`` work the way Avocado users expect.  A dimension a cell
    does not have (a failure-path scenario has no transport) is left out."""
    values: dict[str, set[str]] = {
        "kind": {cell.kind},
        "arch": {cell.target.arch},
        "accel": {cell.target.accel},
        "transport": {cell.transport},
        "target": {cell.target.name},
        "machine": {cell.target.machine},
        "build": {cell.src_build.name, cell.dst_build.name},
        "src-build": {cell.src_build.name},
        "dst-build": {cell.dst_build.name},
        "mode": {cell.mode or PRECOPY} if not cell.scenario else set(),
        "dst-start": {cell.dst_start} if not cell.scenario else set(),
        "cap": {name for name, on in cell.capabilities if on},
        "tier": {cell.tier},
        "scenario": {cell.scenario},
        "fault": {cell.fault},
    }
    tags: dict[str, set[str] | None] = {"mharness": None}
    tags.update({key: {v for v in vals if v} for key, vals in values.items()
                 if any(vals)})
    if cell.expect_fail:
        tags["negative-control"] = None
    return tags


def runnable_for(cell: Cell, ref: MatrixRef) -> Runnable:
    """The runnable that runs ``cell`` of ``ref``: uri = the cell id."""
    return Runnable(KIND, cell.id, tags=tags_of(cell), **ref.to_kwargs())


def variants_runnable(ref: MatrixRef) -> Runnable:
    """One runnable for a whole matrix file, whose cells are Avocado's
    variants: Avocado runs it once per variant (test ``<file>;<variant>``)."""
    return Runnable(KIND, os.path.basename(ref.matrix), tags={"mharness": None, "variant": None},
                    **ref.to_kwargs())


def cell_of(runnable: Runnable) -> tuple[Cell, MatrixRef]:
    """The cell a runnable names, planned again from its matrix (see the
    module docstring), or made from its variant; HarnessError when the matrix
    no longer has it, or the variant declares no valid cell."""
    ref = MatrixRef.from_kwargs(dict(runnable.kwargs))
    if not os.path.isfile(ref.matrix):
        raise HarnessError(f"matrix file {ref.matrix} is gone")
    params = variant_params(runnable)
    if ref.from_variants:
        if not params:
            raise HarnessError("--mharness-cells-from-variants: this test has no variant "
                               "(give a varianter, e.g. --cit-parameter-file FILE)")
        cell = cell_from_variant(ref.load(), params)
        if ref.qemu:
            (cell,) = override_build([cell], ref.qemu)
        return cell, ref
    if params:
        # Otherwise Avocado would run the same cell once per variant.
        raise HarnessError(f"cell {runnable.uri} takes no Avocado parameters (got "
                           f"{', '.join(sorted(params))}): a cell is wholly defined by its matrix; "
                           "to make cells from variants, use --mharness-cells-from-variants")
    for cell in ref.plan().cells:
        if cell.id == runnable.uri:
            return cell, ref
    raise HarnessError(f"cell {runnable.uri} is not in tier '{ref.tier}' (seed {ref.seed}) of "
                       f"{ref.matrix} any more: the matrix changed since the job resolved it")


# --- cells from Avocado variants (CIT, yaml_to_mux, -p) ---------------------------------

#: The variant parameters a cell is made of: the keys of a matrix ``cells:``
#: entry that name the matrix's own definitions (README "The matrix").
VARIANT_KEYS = ("target", "transport", "capset", "paramset", "mode", "build", "src-build",
                "dst-build", "timeout", "downtime-tolerance-ms")
#: The tier name variant cells carry (results, tags).
VARIANT_TIER = "avocado-variants"


def variant_params(runnable: Runnable) -> dict[str, Any]:
    """The parameters of the runnable's variant (every node's, later nodes
    winning, as Avocado's parameter lookup does for distinct keys)."""
    variant = runnable.variant or {}
    params: dict[str, Any] = {}
    for _path, pairs in variant.get("variant") or ():
        for _node, key, value in pairs:
            params[str(key)] = value
    return params


def cell_from_variant(matrix: Matrix, params: dict[str, Any]) -> Cell:
    """A variant's parameters as a matrix ``cells:`` entry, made into a cell
    by the matrix's own expansion (``harness.matrix.expand.make_cell``): the
    same capability and parameter overlay, the same id scheme.

    ``target`` and ``transport`` are required; ``capset``/``paramset`` default
    to ``default`` (only the matrix defaults), builds to the target's.  What
    the loader would refuse in a file is refused here, naming what the matrix
    defines.  Not consulted: the rule oracle -- a combination QEMU refuses
    ends as the cell's ERROR with QEMU's message, where the harness's own
    covering arrays would have excluded it with the rule id."""
    unknown = sorted(set(params) - set(VARIANT_KEYS))
    if unknown:
        raise HarnessError(f"variant parameters {', '.join(unknown)} do not declare a cell "
                           f"(cell keys: {', '.join(VARIANT_KEYS)})")

    def named(key: str, defined: Any, default: str | None = None) -> str:
        value = params.get(key, default)
        if value is None:
            raise HarnessError(f"the variant names no {key} (the matrix defines: "
                               f"{', '.join(defined)})")
        if str(value) not in defined:
            raise HarnessError(f"the variant's {key} '{value}' is not in {matrix.path} "
                               f"(defined: {', '.join(defined)})")
        return str(value)

    target = named("target", matrix.targets)
    build = named("build", matrix.builds, matrix.target_builds[target])
    decl = CellDecl(
        target=target, transport=named("transport", matrix.transports),
        capset=named("capset", matrix.capsets, "default"),
        paramset=named("paramset", matrix.paramsets, "default"),
        src_build=named("src-build", matrix.builds, build),
        dst_build=named("dst-build", matrix.builds, build),
        where="avocado variant", line=0,
        timeout=_number(params, "timeout"),
        downtime_tolerance_ms=_number(params, "downtime-tolerance-ms"),
        mode="" if str(params.get("mode") or PRECOPY) == PRECOPY else str(params["mode"]))
    problem = mode_problem(decl.mode or PRECOPY) or mode_needs(
        decl.mode, dict(matrix.capsets[decl.capset]))
    if problem:
        raise HarnessError(f"the variant's mode: {problem}")
    return make_cell(decl, VARIANT_TIER, matrix)


def _number(params: dict[str, Any], key: str) -> float | None:
    if params.get(key) in (None, ""):
        return None
    try:
        return float(params[key])
    except (TypeError, ValueError):
        raise HarnessError(f"the variant's {key} {params[key]!r} is not a number") from None
