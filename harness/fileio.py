"""Writing files whole or not at all.

Readers of the harness's files (QEMU reading a guest image, a CI job reading
results.json while a run goes on, a second worker reading a cache entry) must
never see half a file: every such file is written to a temporary name in the
same folder and renamed over the target, which is atomic within one filesystem.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(dest: Path, data: bytes | bytearray | str, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``dest`` atomically (text is written as UTF-8).

    ``fsync`` also forces the bytes to disk before the rename, for caches that
    must survive a crash of the machine, not only of the process.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
