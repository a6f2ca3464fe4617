"""Private runtime folders for QEMU sockets, disks and guest RAM files.

They live on tmpfs (guest RAM files are as large as the guest), mode 0700,
named ``mharness-*``.  Each records the PID of the harness process that made
it; a harness killed with SIGKILL cannot remove its folder, so the next one
to start removes folders whose owner no longer runs.  Ownership is decided by
PID, never by name alone.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from harness.qemu.procfs import running

PREFIX = "mharness-"
OWNER_FILE = "owner.pid"
#: Folders without an owner file (older harness versions) count as stale after this.
UNOWNED_MAX_AGE = 3600.0


#: A folder to use instead of /dev/shm, e.g. a tmpfs mounted with huge=advise
#: so guest RAM files get transparent huge pages (harness.qemu.hugeram).
RUNTIME_DIR_ENV = "MHARNESS_RUNTIME_DIR"


def base_dir() -> Path | None:
    env = os.environ.get(RUNTIME_DIR_ENV)
    if env and Path(env).is_dir():
        return Path(env)
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else None


def runtime_base() -> Path:
    """The folder runtime folders are made in: ``base_dir()``, else the
    system's temporary folder (where ``tempfile.mkdtemp(dir=None)`` puts them)."""
    return base_dir() or Path(tempfile.gettempdir())


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove runtime folders left by harness processes that died; return them."""
    base = base or runtime_base()
    removed = []
    for d in base.glob(PREFIX + "*"):
        if not d.is_dir() or d.is_symlink():
            continue
        try:
            owner = int((d / OWNER_FILE).read_text())
            stale = not running(owner)
        except (OSError, ValueError):
            try:
                stale = time.time() - d.stat().st_mtime > UNOWNED_MAX_AGE
            except OSError:
                continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def runtime_dir() -> Path:
    """A new private (0700) folder on tmpfs when there is one, owned by this PID."""
    sweep_stale()
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base_dir()))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    return path
