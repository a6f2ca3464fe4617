"""Files the harness reads at run time, found as package data.

The guest image recipes (``images/``) and the default ``matrix.yaml`` live once
in the repository, at its top level.  ``harness/data/`` holds symlinks to them:
setuptools follows those when it builds the sdist and the wheel, so an
installed harness carries real copies, and a checkout (editable install or
``python3 -m harness``) reads the originals through the links.  Either way the
harness finds them the same way, through :mod:`importlib.resources`, never
through a path relative to the checkout: the one lookup that works wherever the
package is.  pyproject.toml says why symlinks rather than another mapping.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["data", "recipes", "default_matrix", "on_disk", "find_matrix"]

log = logging.getLogger(__name__)

#: Name of the matrix file looked for in the current directory.
MATRIX_NAME = "matrix.yaml"

# Package data that is not a plain file (a zip import) is extracted once and
# kept until the process exits: callers get a Path they may hand to tools.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def data(*parts: str) -> Traversable:
    """A file or folder under the package's ``data/`` folder."""
    return resources.files("harness").joinpath("data", *parts)


def recipes() -> Traversable:
    """The packaged guest image recipes (the repository's ``images/``)."""
    return data("images")


def default_matrix() -> Traversable:
    """The packaged default matrix (the repository's ``matrix.yaml``)."""
    return data(MATRIX_NAME)


def on_disk(item: Traversable) -> Path:
    """``item`` as a file path that external tools can open.

    An installed package is a folder, so this is ``item`` itself; only a
    zip-imported one needs a temporary copy.
    """
    if isinstance(item, Path):
        return item
    return _extracted.enter_context(resources.as_file(item))


def find_matrix(given: str | None) -> tuple[Path, bool]:
    """The matrix to use and whether it is the packaged default.

    ``--matrix FILE`` wins, then ``./matrix.yaml``, then the matrix shipped with
    the package, so an installed harness runs from any directory.
    """
    if given:
        return Path(given), False
    local = Path(MATRIX_NAME)
    if local.is_file():
        return local, False
    path = on_disk(default_matrix())
    log.debug("no ./%s: using the packaged matrix %s", MATRIX_NAME, path)
    return path, True
