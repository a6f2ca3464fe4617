"""Sizes: the units the harness counts in, and parsing of human sizes ("256M",
"10G") as used in matrix.yaml."""
from __future__ import annotations

#: The page size every RAM check, guest and stream decoder counts in (x86 and
#: e2k targets both use 4 KiB target pages for migration's dirty tracking).
PAGE = 4096
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """Return a byte count for an int or a string like ``256M``/``1G``/``4096``.

    Suffixes are binary (K = 1024), as QEMU's own ``-m`` option reads them.
    Raises ``ValueError`` with the offending text for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative size: {value}")
        return value
    text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
    num, suffix = text, ""
    if text and text[-1] in _SUFFIX:
        num, suffix = text[:-1], text[-1]
    try:
        number = float(num)
    except ValueError:
        raise ValueError(f"not a size: {value!r} (use e.g. 256M, 1G, 4096)") from None
    if number < 0:
        raise ValueError(f"negative size: {value!r}")
    return int(number * _SUFFIX[suffix])


def format_size(nbytes: int) -> str:
    """Short binary size for tables: 268435456 -> '256M'."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SUFFIX[suffix]
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)
