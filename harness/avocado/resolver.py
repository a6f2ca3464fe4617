"""Avocado resolver: a matrix file reference becomes one runnable per cell.

``avocado list matrix.yaml`` and ``avocado run matrix.yaml`` reach this
plugin (entry point group ``avocado.plugins.resolver``) with the reference
as typed.  The tier, seed and ``--qemu`` override come from Avocado's
configuration (``--mharness-tier`` etc., see :mod:`harness.avocado.options`),
so the same reference lists exactly what ``mharness list`` lists with the same
options.  A test-name filter follows Avocado's convention for files holding
several tests (``tests.py:Class.test_re``): ``matrix.yaml:REGEX`` keeps the
cells whose id the regular expression matches (``re.search``, as Avocado's
Python resolvers do).  With ``--mharness-cells-from-variants`` the file is
one test instead, which Avocado runs once per variant of its varianters, each
variant declaring a cell (harness.avocado.cells.cell_from_variant).

A YAML file that is not a harness matrix is ``NOTFOUND``, so other resolvers
may still take it; a matrix that fails to load or plan is ``CORRUPT`` with the
harness's own error (file, line, key), which Avocado prints.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any

import yaml
from avocado.core.extension_manager import PluginPriority
from avocado.core.plugin_interfaces import Resolver
from avocado.core.references import reference_split
from avocado.core.resolver import ReferenceResolution, ReferenceResolutionResult, check_file

from harness.avocado.cells import (DEFAULT_SEED, DEFAULT_TIER, MatrixRef, runnable_for,
                                   variants_runnable)
from harness.avocado.options import FROM_VARIANTS, QEMU, SEED, TIER
from harness.errors import HarnessError

log = logging.getLogger(__name__)

#: What a matrix file is called; other files are left to other resolvers.
SUFFIXES = (".yaml", ".yml")
#: Top-level keys every harness matrix has (harness/matrix/schema.py).
MATRIX_KEYS = ("version", "tiers")


class MatrixResolver(Resolver):
    """``matrix.yaml[:REGEX]`` -> a ``mharness-cell`` runnable per cell of the tier."""

    name = "mharness-matrix"
    description = "Cells of a qemu-migration-harness matrix (mharness), one test per cell id"
    # Before the last-resort resolvers (exec-test, tap) that take any file.
    priority = PluginPriority.HIGH

    def resolve(self, reference: str) -> ReferenceResolution:
        path, pattern = reference_split(reference)
        if not path.endswith(SUFFIXES):
            return ReferenceResolution(reference, ReferenceResolutionResult.NOTFOUND,
                                       info=f"{path}: not a .yaml/.yml file")
        found = check_file(path, reference, suffix=None, type_name="matrix file")
        if found is not True:
            return found
        if not _looks_like_matrix(path):
            return ReferenceResolution(reference, ReferenceResolutionResult.NOTFOUND,
                                       info=f"{path}: no 'version' and 'tiers' keys: not a matrix")
        ref = self._ref(path)
        if ref.from_variants:
            # One test; Avocado multiplies it by the variants, each a cell.
            try:
                ref.load()
            except HarnessError as exc:
                return ReferenceResolution(reference, ReferenceResolutionResult.CORRUPT, info=str(exc))
            return ReferenceResolution(reference, ReferenceResolutionResult.SUCCESS,
                                       [variants_runnable(ref)])
        try:
            cells = ref.plan().cells
            wanted = re.compile(pattern) if pattern is not None else None
        except (HarnessError, re.error) as exc:
            return ReferenceResolution(reference, ReferenceResolutionResult.CORRUPT, info=str(exc))
        if wanted is not None:
            cells = [c for c in cells if wanted.search(c.id)]
        if not cells:
            return ReferenceResolution(
                reference, ReferenceResolutionResult.NOTFOUND,
                info=f"no cell of tier '{ref.tier}' matches {pattern!r}" if pattern is not None
                else f"tier '{ref.tier}' has no cells")
        log.debug("%s: %d cells of tier %s (seed %d)", path, len(cells), ref.tier, ref.seed)
        return ReferenceResolution(reference, ReferenceResolutionResult.SUCCESS,
                                   [runnable_for(c, ref) for c in cells])

    def _ref(self, path: str) -> MatrixRef:
        config: dict[str, Any] = self.config or {}
        seed = config.get(SEED)
        return MatrixRef(matrix=os.path.abspath(path),
                         tier=config.get(TIER) or DEFAULT_TIER,
                         seed=DEFAULT_SEED if seed is None else int(seed),
                         qemu=config.get(QEMU) or None,
                         from_variants=bool(config.get(FROM_VARIANTS)))


def _looks_like_matrix(path: str) -> bool:
    """A cheap look before the real load: other YAML files (Avocado's own
    yaml_to_mux files, recipes) are not this resolver's business."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        # Broken YAML may still be meant as a matrix: the real load says why.
        return True
    return isinstance(data, dict) and all(k in data for k in MATRIX_KEYS)
