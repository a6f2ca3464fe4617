"""What ``mharness --version`` says: the package's version and the QEMU builds
the harness finds on this machine.

A bug report or a CI log needs both: the harness version alone does not say
which QEMU it ran against.  The builds are those the matrix in use names
(``./matrix.yaml``, else the packaged one), each asked for its version the same
way ``doctor`` does (:func:`harness.qemu.build.discover`).
"""
from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import harness
from harness.errors import HarnessError
from harness.matrix import load_matrix
from harness.qemu.build import discover

__all__ = ["DIST_NAME", "package_version", "version_report"]

log = logging.getLogger(__name__)

#: The distribution name on PyPI / in pyproject.toml.
DIST_NAME = "qemu-migration-harness"


def package_version() -> str:
    """The installed distribution's version; from a checkout that was never
    installed, ``harness.__version__`` (the same source pyproject.toml reads)."""
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return f"{harness.__version__} (not installed)"


def version_report(matrix: Path, packaged: bool) -> str:
    """The lines of ``mharness --version``."""
    where = "the packaged matrix" if packaged else str(matrix)
    lines = [f"mharness {package_version()} ({DIST_NAME}, {Path(harness.__file__).parent})"]
    try:
        specs = load_matrix(matrix).build_specs()
    except (HarnessError, OSError) as exc:
        lines.append(f"QEMU builds: cannot read {where}: {exc}")
        return "\n".join(lines)
    lines.append(f"QEMU builds named in {where}:")
    width = max((len(s.name) for s in specs), default=0)
    for spec in specs:
        name = f"{spec.name:<{width}}"
        try:
            build = discover(spec)
        except HarnessError as exc:
            lines.append(f"  {name}  unusable: {exc}")
            continue
        if build.missing:
            lines.append(f"  {name}  not found: {build.missing}")
        else:
            lines.append(f"  {name}  {build.version_text:<8}  {spec.binary}")
    return "\n".join(lines)
