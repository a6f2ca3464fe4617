"""The test matrix: ``matrix.yaml`` (format v1) loaded with precise errors and
planned into ``Cell`` objects.

    matrix = load_matrix("matrix.yaml")       # MatrixError: "FILE:LINE: key 'K': why"
    matrix = override_build(matrix, "/path/to/qemu-system-x86_64")   # --qemu PATH
    cells = select(tier_cells(matrix, "smoke", resolve=discover), "tcg and not tcp")

    plan = plan_tier(matrix, "nightly", seed=0, resolve=discover)  # cells, coverage,
                                                                   # exclusions

``discover`` is ``harness.qemu.build.discover``: planning asks the caller, not
the binary, for the version of a build whose ``version:`` the file omits.

Modules: ``yamlpos`` (YAML with line numbers), ``schema`` (allowed keys and
types), ``load`` (file -> ``Matrix``, plain data), ``expand`` (explicit and
product cells, ids, ``-k``), ``covering`` (N-wise covering arrays constrained by
the rule oracle: judge, exclusions, generator, measure), ``plan`` (a tier's
final cells: includes, coverings, filter; coverage and exclusions).
"""
from __future__ import annotations

from harness.matrix.expand import (
    cell_id,
    select,
    unknown_capabilities,
    unknown_parameters,
)
from harness.matrix.load import Matrix, load_matrix, load_matrix_on, override_build
from harness.matrix.plan import (
    CoveringReport,
    Planner,
    Resolve,
    TierPlan,
    plan_tier,
    tier_cells,
)
from harness.matrix.schema import BYTE_PARAMETERS, CellDecl, CoveringSpec, Defaults, TierSpec

__all__ = [
    "BYTE_PARAMETERS",
    "CellDecl",
    "CoveringReport",
    "CoveringSpec",
    "Defaults",
    "Matrix",
    "Planner",
    "Resolve",
    "TierPlan",
    "TierSpec",
    "cell_id",
    "load_matrix",
    "load_matrix_on",
    "override_build",
    "plan_tier",
    "select",
    "tier_cells",
    "unknown_capabilities",
    "unknown_parameters",
]
