"""This machine as a :class:`~harness.hosts.base.Host`: what a local cell uses.

Processes start through :class:`harness.qemu.process.QemuProcess` (own
process group, parent-death signal, PID registry), so a local cell behaves
exactly as before hosts existed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from harness.hosts.base import HASH_CHUNK, ClockReading, HostError, RunResult
from harness.hosts.remote_scripts import CHUNK_HASHES
from harness.qemu.process import QemuProcess

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


def chunk_hashes_of(path: str | Path, chunk: int = HASH_CHUNK) -> list[str]:
    out = []
    with open(path, "rb") as f:
        while data := f.read(chunk):
            out.append(hashlib.sha256(data).hexdigest())
    return out


class LocalHost:
    """The harness's own machine."""

    def __init__(self, name: str = "local", root: Path | None = None) -> None:
        self.name = name
        self._root = root

    @property
    def is_local(self) -> bool:
        return True

    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            input: bytes | None = None) -> RunResult:
        try:
            p = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostError(self.name, f"{argv[0]}: {exc}") from exc
        return RunResult(tuple(argv), p.returncode, p.stdout, p.stderr)

    def start(self, argv: Sequence[str], stderr_path: Path, *,
              env: Mapping[str, str] | None = None, name: str = "qemu") -> QemuProcess:
        return QemuProcess(argv, stderr_path, env=env, name=name)

    def workdir(self, *parts: str) -> str:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="mharness-local-"))
        path = self._root.joinpath(*parts)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(path)

    def put_file(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def cached_copy(self, local: Path) -> str:
        return str(local)

    def read_file(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def chunk_hashes(self, path: str, chunk: int = HASH_CHUNK,
                     mask: tuple[int, int] | None = None) -> list[str]:
        if mask is None:
            return chunk_hashes_of(path, chunk)
        # The remote hosts' program, so a mask means the same on every host.
        out = self.run(["python3", "-c", CHUNK_HASHES, path, str(chunk), *map(str, mask)],
                       timeout=300).check(self.name).stdout
        return json.loads(out)

    def read_strided(self, path: str, offset: int, count: int, stride: int) -> bytes:
        with open(path, "rb") as f:
            out = bytearray(count)
            for i in range(count):
                f.seek(offset + i * stride)
                out[i:i + 1] = f.read(1) or b"\0"
        return bytes(out)

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def free_memory(self) -> int:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return 0

    def kvm_usable(self) -> str | None:
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
        except OSError as exc:
            return f"/dev/kvm: {exc.strerror}"
        return None

    def clock(self) -> ClockReading:
        return ClockReading(0.0, 0.0)  # the harness's own clock

    def close(self) -> None:
        pass
