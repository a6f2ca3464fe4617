"""Where a QEMU runs: the interface every host (local or remote) offers.

The cell flow asks a :class:`Host` to run a command, start a long-lived
process tied to the harness's session, move files and read facts (free
memory, KVM, clock).  Commands are always argv lists: a remote host quotes
them with :func:`shlex.join` and nothing is ever built by pasting matrix values
into a shell string (tests/test_hosts.py proves a hostile value stays one
argument).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

from harness.errors import HarnessError

log = logging.getLogger(__name__)

#: Chunk of the exact RAM check across hosts: one sha256 per 2 MiB, so a
#: difference is located to 512 pages without shipping RAM over SSH.
HASH_CHUNK = 2 * 1024 * 1024


class HostError(HarnessError):
    """A host cannot be reached or refused what was asked.  ``str()`` names the host."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"host '{host}': {reason}")


class HostKeyError(HostError):
    """The host's SSH key is unknown or changed: refused (strict host keys)."""


@dataclass(frozen=True)
class RunResult:
    """What a finished command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    def check(self, host: str) -> "RunResult":
        if self.returncode != 0:
            tail = self.stderr.decode(errors="replace").strip()[-400:]
            raise HostError(host, f"{self.argv[0]} exited {self.returncode}: {tail}")
        return self


@dataclass(frozen=True)
class ClockReading:
    """One reading of a host's wall clock, bracketed by the local clock.

    ``offset`` is remote minus local (seconds) at the midpoint of the round
    trip; the true offset lies within ``offset +- uncertainty`` (half the
    round trip), since the remote read happened somewhere inside it.
    """

    offset: float
    uncertainty: float


@runtime_checkable
class HostProcess(Protocol):
    """A long-lived process on a host, ended with the harness's session.

    The same surface as :class:`harness.qemu.process.QemuProcess`, so a
    :class:`harness.qemu.machine.Machine` drives either.
    """

    pid: int
    name: str
    stderr_path: Path

    @property
    def running(self) -> bool: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float) -> int | None: ...
    def kill(self, grace: float = 0.0) -> int | None: ...
    def stderr_tail(self, lines: int = 20) -> str: ...
    def describe_exit(self) -> str: ...


class Host(Protocol):
    """A machine the harness can run QEMU on."""

    name: str

    @property
    def is_local(self) -> bool: ...

    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            input: bytes | None = None) -> RunResult: ...

    def start(self, argv: Sequence[str], stderr_path: Path, *,
              env: Mapping[str, str] | None = None, name: str = "qemu") -> HostProcess: ...

    def workdir(self, *parts: str) -> str:
        """A private (0700) directory on the host for this run's files."""
        ...

    def put_file(self, local: Path, remote: str) -> None: ...

    def cached_copy(self, local: Path) -> str:
        """``local`` on the host, copied once and cached by content hash."""
        ...

    def read_file(self, path: str) -> bytes: ...

    def read_range(self, path: str, offset: int, size: int) -> bytes: ...

    def chunk_hashes(self, path: str, chunk: int = HASH_CHUNK,
                     mask: tuple[int, int] | None = None) -> list[str]:
        """sha256 of each ``chunk`` of ``path``, computed on the host; ``mask``
        ``(start, end)``: the first byte of each page there hashed as zero
        (bytes a running guest legitimately rewrote)."""
        ...

    def read_strided(self, path: str, offset: int, count: int, stride: int) -> bytes:
        """``count`` bytes of ``path``, one every ``stride`` from ``offset``
        (the first byte of each page of a guest region), read on the host."""
        ...

    def remove_tree(self, path: str) -> None:
        """Remove a folder this run made on the host (cell leftovers)."""
        ...

    def free_memory(self) -> int: ...

    def kvm_usable(self) -> str | None:
        """None when /dev/kvm can be opened read-write, else why not."""
        ...

    def clock(self) -> ClockReading: ...

    def close(self) -> None: ...
