"""The Linux agent's record formats, as the host reads them.

Everything the agent writes is made of 64-bit little-endian words and checked
with the same hash (images/linux/agent/util.c): ``mix64`` is splitmix64's
finaliser and ``checksum64(words, salt)`` folds the words through it.  The
host recomputes checksums for whole arrays of records at once
(:func:`checksum_rows`, numpy, one step per word across all records), so
checking 8 MiB of disk or 32 MiB of agent memory takes a fraction of a second.

Layouts (word: content):

- memory record (memory.c), 64 bytes: 0: ``MHRC`` magic | index << 32,
  1: generation, 2-6: ``mix64(boot ^ index << 20 ^ gen << 44 ^ k)``,
  7: checksum (salt: the boot id);
- disk block (disk.c), 4096 bytes: 0: ``MHDK`` | block << 32, 1: write
  number, 2: boot id, 3-510: ``mix64(seq * 0x100000001b3 + k)``, 511:
  checksum (salt ``DISK_SALT``);
- network record (net.c), 64 bytes: 0: ``MHNT`` | boot_lo << 32, 1: sequence,
  2: guest monotonic ns, 3-6: ``mix64(w0 ^ seq << 3 ^ k)``, 7: checksum
  (salt ``NET_SALT``).
"""
from __future__ import annotations

import struct

import numpy as np

__all__ = ["M64", "mix64", "checksum64", "checksum_rows", "mix_rows", "MEM_MAGIC", "DISK_MAGIC",
           "NET_MAGIC", "DISK_SALT", "NET_SALT", "mem_record", "disk_block", "net_record"]

M64 = (1 << 64) - 1
MEM_MAGIC = 0x4D485243          # "MHRC"
DISK_MAGIC = 0x4D48444B         # "MHDK"
NET_MAGIC = 0x4D484E54          # "MHNT"
DISK_SALT = 0x6D686469736B3031
NET_SALT = 0x6D686E6574303031

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def checksum64(words: list[int] | tuple[int, ...], salt: int) -> int:
    h = mix64((salt ^ len(words)) & M64)
    for w in words:
        h = mix64(h ^ w)
    return h


def mix_rows(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _C0
        x = (x ^ (x >> _S30)) * _C1
        x = (x ^ (x >> _S27)) * _C2
    return x ^ (x >> _S31)


def checksum_rows(rows: np.ndarray, salt: int | np.ndarray) -> np.ndarray:
    """``checksum64`` of every row of a 2-D uint64 array (all its columns);
    ``salt`` one value or one per row."""
    n = rows.shape[1]
    h = mix_rows(np.asarray(salt, dtype=np.uint64) ^ np.uint64(n))
    h = np.broadcast_to(h, (rows.shape[0],)).copy()
    for k in range(n):
        h = mix_rows(h ^ rows[:, k])
    return h


def mem_record(boot: int, index: int, gen: int) -> bytes:
    """One memory record as memory.c's make() writes it."""
    words = [MEM_MAGIC | index << 32, gen] + [
        mix64((boot ^ (index << 20) ^ (gen << 44) ^ k) & M64) for k in range(5)]
    words.append(checksum64(words, boot))
    return struct.pack("<8Q", *words)


def disk_block(seq: int, nblocks: int, boot: int = 0) -> bytes:
    """One disk block as disk.c's make_block() writes it."""
    words = [DISK_MAGIC | (seq % nblocks) << 32, seq, boot] + [
        mix64((seq * 0x100000001B3 + k) & M64) for k in range(3, 511)]
    words.append(checksum64(words, DISK_SALT))
    return struct.pack("<512Q", *words)


def net_record(boot_lo: int, seq: int, mono_ns: int = 0) -> bytes:
    """One network record as net.c's make() writes it."""
    w0 = NET_MAGIC | (boot_lo & 0xFFFFFFFF) << 32
    words = [w0, seq, mono_ns] + [mix64(w0 ^ (seq << 3 & M64) ^ k) for k in range(3, 7)]
    words.append(checksum64(words, NET_SALT))
    return struct.pack("<8Q", *words)
