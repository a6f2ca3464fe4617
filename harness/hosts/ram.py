"""Guest RAM compared across hosts without shipping it over SSH.

Each host hashes its RAM file per chunk (sha256 per 2 MiB,
:data:`harness.hosts.base.HASH_CHUNK`); only chunks whose hashes differ are
fetched, to count and locate the differing pages.  A mask leaves out the
first byte of each page of a region a running guest legitimately rewrote
(postcopy: those bytes are judged by the guest invariant), as the local
exact check's ``Explained`` does.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.hosts.base import HASH_CHUNK, Host
from harness.units import PAGE

log = logging.getLogger(__name__)


@dataclass
class ChunkDiff:
    """The exact RAM comparison of two hosts' RAM files."""

    size: int
    chunk: int
    chunks: int
    differing_chunks: list[int]
    differing_pages: int
    #: File offsets of the first differing pages (at most 8).
    first_offsets: list[int]
    seconds: float


def _masked(data: bytes, offset: int, mask: tuple[int, int] | None) -> bytes:
    if mask is None:
        return data
    start, end = mask
    out = bytearray(data)
    first = max(start, offset) - offset
    first += (start - (offset + first)) % PAGE
    for i in range(first, min(end - offset, len(out)), PAGE):
        out[i] = 0
    return bytes(out)


def compare_ram(src: Host, src_path: str, dst: Host, dst_path: str, size: int,
                chunk: int = HASH_CHUNK, mask: tuple[int, int] | None = None) -> ChunkDiff:
    """Hash both files on their hosts; fetch and compare only differing chunks."""
    t0 = time.monotonic()
    # Both hosts hash at once: each is a python3 started over SSH, whose
    # round trip costs as much as the hashing (benchmarks/remote_cell.py).
    with ThreadPoolExecutor(1) as pool:
        theirs = pool.submit(dst.chunk_hashes, dst_path, chunk, mask)
        a, b = src.chunk_hashes(src_path, chunk, mask), theirs.result()
    differing = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    differing += list(range(min(len(a), len(b)), max(len(a), len(b))))
    pages, first = 0, []
    for i in differing:
        off = i * chunk
        x = _masked(src.read_range(src_path, off, chunk), off, mask)
        y = _masked(dst.read_range(dst_path, off, chunk), off, mask)
        for p in range(0, max(len(x), len(y)), PAGE):
            if x[p:p + PAGE] != y[p:p + PAGE]:
                pages += 1
                if len(first) < 8:
                    first.append(off + p)
    if differing:
        log.warning("RAM differs in %d chunk(s) of %d, %d page(s)", len(differing), len(a), pages)
    return ChunkDiff(size, chunk, len(a), differing, pages, first, time.monotonic() - t0)
