"""The QEMU builds a conformance test needs, found as the matrix names them.

The rule for every test that needs a build: the matrix's required build
(Debian's 7.2, ``required: true``) missing FAILS the test; an optional build
missing (the QEMU 10.0 prefix scripts/setup.sh unpacks, a porter's e2k)
skips it with the build's own reason.  Cells need nothing from here: the
harness itself errors a cell whose required build is missing
(harness.migration.flow.preflight).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.matrix import load_matrix
from harness.matrix.expand import build_for_arch
from harness.qemu.build import QemuBuild, discover

MATRIX = Path(__file__).resolve().parent.parent / "matrix.yaml"


def usable(build: QemuBuild) -> QemuBuild:
    """``build`` if it is there; else fail (a required build) or skip (an optional one)."""
    if build.missing:
        if build.spec.required:
            pytest.fail(f"required QEMU build '{build.name}' is missing: {build.missing}")
        pytest.skip(f"QEMU build '{build.name}' unavailable: {build.missing}")
    return build


def matrix_build(name: str, arch: str = "x86_64", matrix: Path = MATRIX) -> QemuBuild:
    """The build ``name`` of the project's matrix for ``arch``, discovered (see :func:`usable`)."""
    return usable(discover(build_for_arch(load_matrix(matrix).builds[name], arch)))


#: A porter's qemu-system-e2k (OpenE2K/qemu-e2k, e2k-softmmu), when one is configured.
E2K = os.environ.get("MHARNESS_E2K_QEMU")
needs_e2k = pytest.mark.skipif(
    not E2K or not os.access(E2K, os.X_OK),
    reason="no e2k build configured: set MHARNESS_E2K_QEMU to an executable "
           "qemu-system-e2k (OpenE2K/qemu-e2k, e2k-softmmu)")
