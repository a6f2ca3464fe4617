"""The Linux guest's files, unpacked from the cached image bundle.

``mharness images linux-x86_64`` (harness.guest.images, built by
harness.guest.linux_build) caches one tar bundle per content hash.  QEMU needs
its members as files, so :func:`linux_guest` unpacks the bundle once into a
folder beside it, ``linux-x86_64-<key>.d/``, and returns their paths.  Like the
image itself, the folder appears whole or not at all: it is filled under a
temporary name and renamed into place (a concurrent unpacker's copy wins and
ours is dropped).

The members include ``symbols.gz``, the kernel's symbol map
(:meth:`LinuxGuest.symbol_map`), when the build could capture it.

Besides the bundle's members the folder holds ``vmlinux``: the ELF kernel
inside Debian's bzImage, decompressed here.  QEMU boots an ELF kernel that
carries a PVH entry note (Debian's has one: CONFIG_PVH=y) through its
``pvh.bin`` option ROM (hw/i386/x86.c, x86_load_linux -> load_elfboot) with
no decompression in the guest; measured here under TCG, that saves about
6 s of the bzImage's own XZ decompression on every boot.  The kernel is the
same: only who decompresses it differs.
"""
from __future__ import annotations

import functools
import json
import logging
import lzma
import os
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.guest.images import build_image
from harness.guest.linux_build import SYMBOLS_MEMBER
from harness.guest.linux_symbols import SymbolMap, SymbolMapError, load

__all__ = ["IMAGE_NAME", "LinuxGuest", "linux_guest", "vmlinux_from_bzimage"]

log = logging.getLogger(__name__)

IMAGE_NAME = "linux-x86_64"


@dataclass(frozen=True)
class LinuxGuest:
    """The unpacked guest: what ``-kernel``/``-initrd`` take, and its manifest."""

    folder: Path
    vmlinuz: Path          # Debian's bzImage, as shipped
    vmlinux: Path          # the ELF inside it (PVH boot)
    initrd: Path
    config: Path
    manifest: dict[str, Any]
    #: The kernel's symbol map (harness.guest.linux_symbols); None when the
    #: image was built without one (no QEMU at build time).
    symbols: Path | None = None

    def symbol_map(self) -> SymbolMap | None:
        """The symbol map, loaded (once per process and image)."""
        return None if self.symbols is None else _load_symbols(self.symbols)

    @property
    def kernel_release(self) -> str:
        return str(self.manifest.get("kernel_release", ""))

    def kernel(self, boot: str) -> Path:
        """The file for ``-kernel``: ``pvh`` boots the ELF, ``bzimage`` the bzImage."""
        if boot == "pvh":
            return self.vmlinux
        if boot == "bzimage":
            return self.vmlinuz
        raise HarnessError(f"unknown Linux boot path '{boot}' (pvh, bzimage)")


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage, decompressed.

    The setup header (Documentation/arch/x86/boot.rst, protocol 2.08+) says
    where the payload is: ``payload_offset`` (0x248) and ``payload_length``
    (0x24c), counted from the protected-mode code that follows the
    ``setup_sects`` (0x1f1) + 1 sectors of real-mode code.  Debian compresses
    it with XZ (CONFIG_KERNEL_XZ); the result is the kernel's ELF image."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise HarnessError("not a bzImage (no 'HdrS' setup header)")
    version = struct.unpack_from("<H", bzimage, 0x206)[0]
    if version < 0x208:
        raise HarnessError(f"bzImage boot protocol {version:#x} has no payload fields")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        raise HarnessError(f"the bzImage payload is not XZ (starts {payload[:6].hex()}); "
                           "only Debian's XZ kernels are unpacked")
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    except lzma.LZMAError as e:
        raise HarnessError(f"cannot decompress the bzImage payload: {e}") from e
    if not elf.startswith(b"\x7fELF"):
        raise HarnessError("the decompressed kernel is not an ELF file")
    return elf


def _unpack(bundle: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for member in tar.getmembers():
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise HarnessError(f"{bundle}: unexpected member '{member.name}'")
                src = tar.extractfile(member)
                assert src is not None
                (tmp / member.name).write_bytes(src.read())
        (tmp / "vmlinux").write_bytes(vmlinux_from_bzimage((tmp / "vmlinuz").read_bytes()))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            log.debug("%s was unpacked concurrently; keeping that copy", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=2)
def _load_symbols(path: Path) -> SymbolMap | None:
    try:
        return load(path.read_bytes())
    except (OSError, SymbolMapError) as e:
        log.warning("kernel symbol map %s unusable: %s", path, e)
        return None


def linux_guest() -> LinuxGuest:
    """Build the image if needed, unpack it if needed, return its files."""
    bundle = build_image(IMAGE_NAME)
    dest = bundle.with_suffix(".d")
    if not (dest / "manifest.json").is_file():
        log.info("unpacking %s", bundle.name)
        _unpack(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    symbols = dest / SYMBOLS_MEMBER
    return LinuxGuest(folder=dest, vmlinuz=dest / "vmlinuz", vmlinux=dest / "vmlinux",
                      initrd=dest / "initrd.img", config=dest / "config", manifest=manifest,
                      symbols=symbols if symbols.is_file() else None)
