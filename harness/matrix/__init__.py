"""The test matrix: ``matrix.yaml`` (format v1) loaded with precise errors and
expanded into ``Cell`` objects.

    matrix = load_matrix("matrix.yaml")       # MatrixError: "FILE:LINE: key 'K': why"
    cells = select(matrix.cells("smoke"), "tcg and not tcp")
    cells = override_build(cells, "/path/to/qemu-system-x86_64")   # --qemu PATH

    plan = matrix.plan("nightly", seed=0)    # cells, coverage, exclusions

Modules: ``yamlpos`` (YAML with line numbers), ``schema`` (allowed keys and
types), ``load`` (file -> ``Matrix``), ``expand`` (tiers -> cells, ids, ``-k``),
``covering`` (N-wise covering arrays constrained by the rule oracle), ``plan``
(a tier's final cells: includes, coverings, filter; coverage and exclusions).
"""
from __future__ import annotations

from harness.matrix.expand import (
    cell_id,
    select,
    unknown_capabilities,
    unknown_parameters,
)
from harness.matrix.load import Matrix, load_matrix, override_build
from harness.matrix.plan import CoveringReport, TierPlan
from harness.matrix.schema import BYTE_PARAMETERS, CellDecl, CoveringSpec, Defaults, TierSpec

__all__ = [
    "BYTE_PARAMETERS",
    "CellDecl",
    "CoveringReport",
    "CoveringSpec",
    "Defaults",
    "Matrix",
    "TierPlan",
    "TierSpec",
    "cell_id",
    "load_matrix",
    "override_build",
    "select",
    "unknown_capabilities",
    "unknown_parameters",
]
