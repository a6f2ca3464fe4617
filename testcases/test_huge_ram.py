"""Guest RAM files in transparent huge pages, against real QEMU (7.2 and 10.0).

The harness adds ``align=`` to the RAM backend when the runtime folder is a
tmpfs that allows huge pages (harness.qemu.cmdline.ram_backend,
harness.qemu.hugeram), claiming that QEMU's own madvise(MADV_HUGEPAGE) then
gets 2 MiB mappings.  This proves the claim on each build by reading the
mapping's PMD-mapped size in /proc/PID/smaps.  On a host without such a tmpfs
(``scripts/setup.sh --huge-shm`` sets one up; CI does) the test is a skip
that says so: the RAM files then get 4 KiB pages and the option is left out.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.qemu.cmdline import ram_backend
from harness.qemu.hugeram import describe, huge_page_size
from harness.run.rundir import runtime_base, runtime_dir
from harness.waiting import poll_until_sync
from qemu_builds import matrix_build

MiB = 1024 * 1024
SIZE = 256 * MiB


def _mapping(pid: int, path: Path) -> dict[str, int]:
    """The smaps fields (kB) of ``pid``'s mapping of ``path``; {} if none yet."""
    fields: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:     # a mapping's header line
            inside = line.endswith(" " + str(path))
            continue
        if inside and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
            fields[head[0][:-1]] = fields.get(head[0][:-1], 0) + int(head[1])
    return fields


@pytest.mark.parametrize("build_name", ["system", "debian-10.0"])
def test_ram_file_on_a_huge_tmpfs_is_mapped_with_huge_pages(build_name: str) -> None:
    base = runtime_base()
    page = huge_page_size(base)
    if page is None:
        pytest.skip(describe(base))
    build = matrix_build(build_name)
    work = runtime_dir()
    ram = work / "guest.ram"
    backend = ram_backend(SIZE, ram, prealloc=True)
    assert f",align={page}" in backend
    proc = subprocess.Popen(
        [build.spec.binary, "-nodefaults", "-no-user-config", "-display", "none",
         "-machine", "pc,memory-backend=ram0", "-accel", "tcg", "-m", str(SIZE // MiB) + "M",
         "-object", backend, "-S"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # prealloc touches every page before QEMU's main loop starts.
        got = poll_until_sync(lambda: _mapping(proc.pid, ram),
                              lambda m: proc.poll() is not None or m.get("Rss", 0) * 1024 >= SIZE,
                              timeout=60, interval=0.1, what=f"{build_name}: RAM file populated")
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        pmd = max(got.get("ShmemPmdMapped", 0), got.get("FilePmdMapped", 0)) * 1024
        # All of it in 2 MiB entries, give or take the odd page the kernel
        # could not find a huge page for: at least nine tenths.
        assert pmd >= SIZE * 9 // 10, f"{build_name}: only {pmd // MiB} MiB PMD-mapped: {got}"
    finally:
        proc.kill()        # the PID this test started
        proc.communicate()
        shutil.rmtree(work, ignore_errors=True)
