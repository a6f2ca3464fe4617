"""Whether guest RAM files can sit in transparent huge pages, and the backend
option that lets QEMU map them so.

Why: on the hosts this harness runs on (nested, paravirtualised KVM), most of a
small TCG cell's CPU is the kernel allocating, mapping and freeing the two RAM
files' 4 KiB pages (QEMU's prealloc, migration, the file's removal).  In 2 MiB
pages that work shrinks about 500-fold (benchmarks/README.md, "huge pages").

What it takes, all of which the harness checks rather than assumes:

- the RAM files' tmpfs allows huge pages: its ``huge=`` mount option is
  ``always``, ``within_size`` or ``advise`` (a plain ``/dev/shm`` has none,
  i.e. ``never``), and ``/sys/kernel/mm/transparent_hugepage/shmem_enabled``
  is not ``deny`` (``force`` allows them on any tmpfs).  That is a host
  set-up step (``scripts/setup.sh --huge-shm``); without it nothing changes.
- QEMU asks for them: ``ram_block_add`` madvises every RAM block
  ``QEMU_MADV_HUGEPAGE`` (softmmu/physmem.c in 7.2, system/physmem.c in 10.0),
  which is what ``huge=advise`` waits for.
- QEMU maps the file at a 2 MiB-aligned address, or the kernel can only map
  it with 4 KiB entries: ``file_ram_alloc`` aligns the mapping to
  ``MAX(block->page_size, mr->align)``, where ``page_size`` is
  ``qemu_fd_getpagesize`` (the fs block size on hugetlbfs only, else 4 KiB)
  and ``mr->align`` is memory-backend-file's ``align`` property (added in QEMU
  2.12, backends/hostmem-file.c).  So the backend gets ``align=<PMD size>``.
  (memory-backend-memfd has no ``align`` property, so a memfd's mapping stays
  4 KiB-aligned: that route does not get PMD mappings from QEMU.)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage")
#: tmpfs ``huge=`` values under which a madvised mapping gets huge pages.
HUGE_MOUNT_VALUES = ("always", "within_size", "advise")


def _selected(text: str) -> str:
    """The bracketed choice of a sysfs THP knob (``always [advise] never`` -> advise)."""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text.strip()


def pmd_size(sysfs: Path = THP_SYSFS) -> int | None:
    """The huge page size the kernel maps files with (2 MiB on x86-64); None
    without THP."""
    try:
        return int((sysfs / "hpage_pmd_size").read_text()) or None
    except (OSError, ValueError):
        return None


def shmem_enabled(sysfs: Path = THP_SYSFS) -> str | None:
    try:
        return _selected((sysfs / "shmem_enabled").read_text())
    except OSError:
        return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str, str, dict[str, str]] | None:
    """(mount point, fs type, super options) of the mount holding ``path``
    (the longest mount point above it; the last one mounted there wins)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[str, str, dict[str, str]] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
            point, fstype, superopts = _unescape(fields[4]), fields[sep + 1], fields[sep + 3]
        except (ValueError, IndexError):
            continue
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            opts = dict((o.split("=", 1) + [""])[:2] for o in superopts.split(","))
            best = (point, fstype, opts)
    return best


def huge_page_size(ram_dir: Path, *, mountinfo: str | None = None,
                   sysfs: Path = THP_SYSFS) -> int | None:
    """The huge page size RAM files made in ``ram_dir`` can be mapped with
    (pass it as the backend's ``align``), or None when they will get 4 KiB
    pages anyway (not a tmpfs, ``huge=never``, THP off or denied)."""
    size = pmd_size(sysfs)
    mount = mount_of(ram_dir, mountinfo)
    if size is None or mount is None or mount[1] != "tmpfs":
        return None
    knob = shmem_enabled(sysfs)
    if knob == "deny":
        return None
    if knob == "force" or mount[2].get("huge") in HUGE_MOUNT_VALUES:
        return size
    return None


def describe(ram_dir: Path) -> str:
    """One line for ``mharness doctor`` and the benchmarks: where RAM files go
    and whether they get huge pages."""
    mount = mount_of(ram_dir)
    if mount is None:
        return f"RAM files in {ram_dir}: mount not found"
    point, fstype, opts = mount
    size = huge_page_size(ram_dir)
    state = (f"transparent huge pages ({size // 1024} KiB; backend align={size})" if size else
             "4 KiB pages (for huge pages: a tmpfs with huge=advise, "
             "e.g. scripts/setup.sh --huge-shm)")
    return (f"RAM files in {ram_dir} ({fstype} at {point}, huge={opts.get('huge', 'never')}, "
            f"shmem_enabled={shmem_enabled()}): {state}")
