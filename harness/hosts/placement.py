"""A QEMU command line made for this machine, moved to another host.

The cell flow builds every command line with paths in its private runtime
folder here (harness.migration.launch).  For a QEMU on a remote host each such
path is rewritten to the same name in a per-cell folder on that host:

- a file that exists here (the guest disk, a PVH kernel) is copied there
  through the host's content-hash cache (``Host.cached_copy``: copied once per
  content, then ``cp`` into the cell's folder so each QEMU has its own, as
  locally);
- a folder that exists here (TLS credentials) is copied file by file;
- a path that does not exist yet (the RAM file QEMU creates) is only renamed.

The QMP and serial sockets are left alone: the Machine forwards them over
SSH (harness.hosts.qemu_args).
"""
from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Iterable

from harness.hosts.base import Host

log = logging.getLogger(__name__)


def place_argv(host: Host, argv: list[str], local_dir: Path, remote_dir: str,
               keep: Iterable[Path] = ()) -> list[str]:
    """``argv`` with every path under ``local_dir`` (but ``keep``) moved to
    ``remote_dir`` on ``host``, copying what exists here."""
    kept = {str(p) for p in keep}
    pattern = re.compile(re.escape(str(local_dir)) + r"/([^,=:]+)")
    moved: dict[str, str] = {}

    def move(match: re.Match[str]) -> str:
        local = match.group(0)
        if local in kept:
            return local
        if local not in moved:
            moved[local] = _copy(host, Path(local), posixpath.join(remote_dir, match.group(1)))
        return moved[local]

    out = [pattern.sub(move, arg) for arg in argv]
    log.debug("%s: placed %d path(s) in %s", host.name, len(moved), remote_dir)
    return out


def _copy(host: Host, local: Path, remote: str) -> str:
    if local.is_dir():
        host.run(["mkdir", "-p", "-m", "700", remote]).check(host.name)
        for f in sorted(local.iterdir()):
            if f.is_file():
                host.put_file(f, posixpath.join(remote, f.name))
    elif local.is_file():
        cached = host.cached_copy(local)
        host.run(["cp", "--", cached, remote]).check(host.name)
    return remote
