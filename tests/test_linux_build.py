"""The Linux guest's build pieces that need no download: the initramfs writer,
module ordering, packages.txt, the recipe's key, the bzImage unpacker."""
from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.guest import images, linux_build
from harness.guest.linux_build import LinuxBuildError, NewcArchive, module_order
from harness.guest.linux_image import vmlinux_from_bzimage

REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"


def _read_newc(data: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """(name, mode, data, rdevmajor, rdevminor) of each entry, as the kernel
    reads them (init/initramfs.c)."""
    out = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = (fields[1], fields[6], fields[9], fields[10],
                                                fields[11])
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        assert data[pos + namesize - 1] == 0
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, body, rmaj, rmin))


def test_newc_archive_round_trips() -> None:
    a = NewcArchive()
    a.add_dir("dev")
    a.add_chardev("dev/console", 5, 1)
    a.add_file("init", b"#!/bin/sh\n", 0o755)
    a.add_symlink("bin/sh", "busybox")
    a.add_file("odd", b"x" * 5)
    entries = _read_newc(a.finish())
    assert [e[0] for e in entries] == ["dev", "dev/console", "init", "bin/sh", "odd"]
    by_name = {e[0]: e for e in entries}
    assert by_name["dev"][1] == 0o040755
    assert by_name["dev/console"][1:] == (0o020600, b"", 5, 1)
    assert by_name["init"][1:3] == (0o100755, b"#!/bin/sh\n")
    assert by_name["bin/sh"][1:3] == (0o120777, b"busybox")
    assert by_name["odd"][2] == b"xxxxx"


def test_newc_refuses_duplicates() -> None:
    a = NewcArchive()
    a.add_file("x", b"")
    with pytest.raises(LinuxBuildError, match="added twice"):
        a.add_file("x", b"")


def test_initramfs_layout(tmp_path: Path) -> None:
    ko = tmp_path / "virtio.ko"
    ko.write_bytes(b"\x7fELF...")
    data = linux_build._initramfs(b"BB", b"#!/bin/sh\n", b"AGENT", [("virtio", ko)])
    entries = {e[0]: e for e in _read_newc(gzip.decompress(data))}
    assert entries["init"][2] == b"#!/bin/sh\n" and entries["init"][1] & 0o111
    assert entries["sbin/mhagent"][2] == b"AGENT"
    assert entries["etc/modules"][2] == b"virtio\n"
    assert entries["lib/modules/virtio.ko"][2] == b"\x7fELF..."
    assert entries["dev/console"][3:] == (5, 1)
    assert all(entries[f"bin/{a}"][2] == b"busybox" for a in linux_build.APPLETS)
    # The same inputs give the same bytes (mtime 0 everywhere).
    assert data == linux_build._initramfs(b"BB", b"#!/bin/sh\n", b"AGENT", [("virtio", ko)])


def _ko(tmp_path: Path, name: str, depends: str) -> Path:
    path = tmp_path / f"{name}.ko"
    path.write_bytes(b"\x00junk\x00license=GPL\x00depends=" + depends.encode() +
                     b"\x00retpoline=Y\x00")
    return path


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    index = {"virtio_net": _ko(tmp_path, "virtio_net", "net_failover,virtio,virtio_ring"),
             "net_failover": _ko(tmp_path, "net_failover", "failover"),
             "failover": _ko(tmp_path, "failover", ""),
             "virtio": _ko(tmp_path, "virtio", ""),
             "virtio_ring": _ko(tmp_path, "virtio_ring", ""),
             "virtio_blk": _ko(tmp_path, "virtio_blk", "virtio,virtio_ring")}
    order = module_order(["virtio_blk", "virtio-net"], index)
    assert sorted(order) == sorted(index)
    for mod, deps in (("virtio_net", ["net_failover", "virtio", "virtio_ring"]),
                      ("net_failover", ["failover"]), ("virtio_blk", ["virtio", "virtio_ring"])):
        assert all(order.index(d) < order.index(mod) for d in deps), order


def test_module_order_errors(tmp_path: Path) -> None:
    with pytest.raises(LinuxBuildError, match="'virtio_nope'.*not in the kernel package"):
        module_order(["virtio_nope"], {})
    index = {"a": _ko(tmp_path, "a", "b"), "b": _ko(tmp_path, "b", "a")}
    with pytest.raises(LinuxBuildError, match="cycle: a -> b -> a"):
        module_order(["a"], index)


def test_packages_txt() -> None:
    text = (REPO_IMAGES / "linux" / "packages.txt").read_text()
    rows = linux_build._parse_packages(text)
    assert ("kernel", "linux-image-amd64", "linux-image-") in rows
    assert ("busybox", "busybox-static", "") in rows
    with pytest.raises(LinuxBuildError, match="packages.txt:1"):
        linux_build._parse_packages("just-one-word\n")


def test_resolve_follows_the_metapackage(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"linux-image-amd64": ("6.1.1-1", "linux-image-6.1.0-9-amd64 (= 6.1.1-1)"),
               "linux-image-6.1.0-9-amd64": ("6.1.1-1", "kmod, linux-base (>= 4.3~)"),
               "busybox-static": ("1:1.35.0-4", "")}
    monkeypatch.setattr(linux_build, "_candidates",
                        lambda names: {n: answers[n] for n in names})
    pkgs = linux_build.resolve_packages("kernel linux-image-amd64 linux-image-\n"
                                        "busybox busybox-static\n")
    assert pkgs == [linux_build.DebPackage("kernel", "linux-image-6.1.0-9-amd64", "6.1.1-1"),
                    linux_build.DebPackage("busybox", "busybox-static", "1:1.35.0-4")]
    answers["linux-image-amd64"] = ("6.1.1-1", "linux-image-a, linux-image-b")
    with pytest.raises(LinuxBuildError, match="exactly one package"):
        linux_build.resolve_packages("kernel linux-image-amd64 linux-image-\n")


def test_recipe_inputs_exist_and_agent_sources_are_all_listed() -> None:
    for rel in linux_build.INPUTS:
        assert (REPO_IMAGES / rel).is_file(), rel
    on_disk = {p.name for p in (REPO_IMAGES / "linux" / "agent").glob("*.[ch]")}
    assert on_disk == set(linux_build.AGENT_SOURCES)


def test_recipe_key_covers_package_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linux_build, "key_text", lambda text, cache=None: "deb kernel linux-image-x=1\n")
    before = images.recipe_key("linux-x86_64")
    monkeypatch.setattr(linux_build, "key_text", lambda text, cache=None: "deb kernel linux-image-x=2\n")
    assert images.recipe_key("linux-x86_64") != before


def test_recipe_key_names_apt_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(text: str, cache: object = None) -> str:
        raise LinuxBuildError("apt knows no candidate for 'busybox-static': run apt-get update")
    monkeypatch.setattr(linux_build, "key_text", fail)
    with pytest.raises(images.ImageError, match="linux-x86_64.*apt-get update"):
        images.recipe_key("linux-x86_64")


def _bzimage(payload: bytes, setup_sects: int = 2) -> bytes:
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20F)
    offset = 0x40
    struct.pack_into("<II", head, 0x248, offset, len(payload))
    return bytes(head) + bytes(offset) + payload + b"trailer"


def test_vmlinux_from_bzimage() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    xz = lzma.compress(elf, format=lzma.FORMAT_XZ)
    assert vmlinux_from_bzimage(_bzimage(xz)) == elf
    with pytest.raises(HarnessError, match="not a bzImage"):
        vmlinux_from_bzimage(b"\x00" * 1024)
    with pytest.raises(HarnessError, match="not XZ"):
        vmlinux_from_bzimage(_bzimage(gzip.compress(elf)))
    with pytest.raises(HarnessError, match="not an ELF"):
        vmlinux_from_bzimage(_bzimage(lzma.compress(b"nope", format=lzma.FORMAT_XZ)))
