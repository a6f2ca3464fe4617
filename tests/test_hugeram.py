"""Huge-page RAM files: the mount and sysfs reading, and the backend's align=."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.qemu import cmdline, hugeram

MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
30 22 0:25 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1024k
31 22 0:26 / /run/mh\\040ram rw,relatime - tmpfs none rw,size=4194304k,huge=advise
32 30 0:27 / /dev/shm/big rw,relatime - tmpfs none rw,huge=within_size
33 22 0:28 / /tmp/never rw,relatime - tmpfs none rw,huge=never
"""


def sysfs(tmp_path: Path, shmem: str = "always within_size advise [never] deny force",
          pmd: str = "2097152") -> Path:
    d = tmp_path / "thp"
    d.mkdir()
    (d / "shmem_enabled").write_text(shmem + "\n")
    (d / "hpage_pmd_size").write_text(pmd + "\n")
    return d


def test_mount_of_takes_the_longest_mount_point_and_unescapes() -> None:
    assert hugeram.mount_of(Path("/dev/shm/x"), MOUNTINFO)[:2] == ("/dev/shm", "tmpfs")
    point, fstype, opts = hugeram.mount_of(Path("/dev/shm/big/mharness-1"), MOUNTINFO)
    assert (point, opts["huge"]) == ("/dev/shm/big", "within_size")
    assert hugeram.mount_of(Path("/run/mh ram/a"), MOUNTINFO)[0] == "/run/mh ram"
    assert hugeram.mount_of(Path("/dev/shmx"), MOUNTINFO)[0] == "/"


@pytest.mark.parametrize("where, shmem, expected", [
    ("/dev/shm/a", "never", None),             # plain /dev/shm: no huge= option
    ("/run/mh ram/a", "never", 2097152),       # huge=advise: QEMU's madvise is enough
    ("/dev/shm/big/a", "never", 2097152),      # huge=within_size
    ("/tmp/never/a", "never", None),
    ("/run/mh ram/a", "deny", None),           # deny overrides every mount
    ("/dev/shm/a", "force", 2097152),          # force: every tmpfs
    ("/srv/a", "force", None),                 # not a tmpfs
])
def test_huge_page_size(tmp_path: Path, where: str, shmem: str, expected: int | None) -> None:
    knob = " ".join(f"[{v}]" if v == shmem else v
                    for v in ("always", "within_size", "advise", "never", "deny", "force"))
    assert hugeram.huge_page_size(Path(where), mountinfo=MOUNTINFO,
                                  sysfs=sysfs(tmp_path, knob)) == expected


def test_no_thp_in_the_kernel_means_no_huge_pages(tmp_path: Path) -> None:
    assert hugeram.huge_page_size(Path("/run/mh ram/a"), mountinfo=MOUNTINFO,
                                  sysfs=tmp_path / "absent") is None


def test_backend_gets_align_only_where_huge_pages_are(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ram = tmp_path / "src.ram"
    monkeypatch.setattr(cmdline, "huge_page_size", lambda d: None)
    plain = cmdline.ram_backend(256 << 20, ram, True)
    assert plain == (f"memory-backend-file,id=ram0,size={256 << 20},mem-path={ram},"
                     "share=on,prealloc=on")
    monkeypatch.setattr(cmdline, "huge_page_size", lambda d: 2097152)
    assert cmdline.ram_backend(256 << 20, ram, False) == (
        plain.replace("prealloc=on", "prealloc=off") + ",align=2097152")
    # a remote host's folder (not here) is not looked at
    assert "align" not in cmdline.ram_backend(1 << 20, Path("/nonexistent/x/src.ram"), True)
