"""Guest images built from the recipes in ``images/``, cached by content hash.

The recipes are package data (:mod:`harness.packaged`), so an installed harness
builds its images from any directory; ``$MHARNESS_IMAGES_DIR`` points it at
another folder of recipes (a porter's edited copy).

Images are built from source on the machine that runs the harness rather than
shipped as binaries, so a reviewer can read exactly what the guest does and a
porter can rebuild it with their own toolchain.  The cache key covers
everything that can change the output bytes: the recipe's input files, the
recipe's own version string (bumped when its commands change) and the
``--version`` banner of every tool it runs.  One cached image serves every
cell; per-cell parameters are patched into a copy (see
:mod:`harness.guest.dirtier`).

Builds are safe to run concurrently (xdist workers, several runners on one
host): each build happens in a private temporary directory and lands in the
cache with :func:`os.replace`, which is atomic within one filesystem, so a
reader sees either no file or a complete one.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import runpy
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable

from harness import packaged
from harness.errors import HarnessError
from harness.guest import linux_build
from harness.fileio import write_atomic

__all__ = [
    "ImageError",
    "Recipe",
    "RECIPES",
    "images_dir",
    "cache_dir",
    "recipe_key",
    "build_image",
]

MIB = 1024 * 1024


class ImageError(HarnessError):
    """An image cannot be built: a tool is missing, or a build step failed."""


@dataclass(frozen=True)
class Recipe:
    """How to turn source files under ``images/`` into a disk image.

    ``build`` gets the absolute input paths (same order as ``inputs``) and a
    scratch directory, and returns the raw image bytes; padding to
    ``pad_to`` is done by :func:`build_image` so every recipe gets it right.
    ``key_sources`` names files of the ``harness`` package that a build
    runs in-process (the e2k encoder): their bytes enter the key like inputs.
    """

    name: str
    inputs: tuple[str, ...]          # paths relative to images_dir()
    tools: tuple[str, ...]           # executables whose version enters the key
    version: str                     # bump when the build commands change
    build: Callable[[list[Path], Path], bytes]
    pad_to: int = MIB                # SeaBIOS on q35 does not boot a bare 512-byte disk
    key_sources: tuple[str, ...] = ()  # paths relative to the harness.guest package
    #: What else the output depends on that is not a file here (the Linux
    #: guest: the Debian package versions apt would fetch); given images_dir().
    key_extra: Callable[[Traversable], str] | None = None


def images_dir() -> Traversable:
    """The folder with image recipes: ``$MHARNESS_IMAGES_DIR``, else the packaged
    recipes (the repository's ``images/``, shipped in the package)."""
    env = os.environ.get("MHARNESS_IMAGES_DIR")
    if env:
        return Path(env)
    return packaged.recipes()


def _input(root: Traversable, rel: str) -> Traversable:
    """A recipe input; ``rel`` uses ``/`` whatever the kind of ``root``."""
    return root.joinpath(*rel.split("/"))


def cache_dir() -> Path:
    """Root of the harness cache (images live in its ``images/`` subfolder).

    ``$MHARNESS_CACHE_DIR`` wins, then ``$XDG_CACHE_HOME/mharness``, then
    ``~/.cache/mharness``.
    """
    env = os.environ.get("MHARNESS_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mharness"


def _tool(name: str) -> str:
    """Absolute path of a build tool, or an error saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise ImageError(f"install binutils: '{name}' not found")
    return path


@functools.lru_cache(maxsize=32)
def _tool_version(path: str, mtime_ns: int) -> str:
    """First line of ``TOOL --version``; cached per binary path and mtime."""
    del mtime_ns  # only part of the cache key: an upgraded tool is asked again
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageError(f"cannot run '{path} --version': {e}") from e
    return out.splitlines()[0].strip() if out else ""


def _run(argv: list[str], cwd: Path) -> None:
    """Run one build step; a failure carries the tool's own message."""
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                             timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageError(f"build step failed: {' '.join(argv)}: {e}") from e
    if res.returncode != 0:
        raise ImageError(f"build step failed (exit {res.returncode}): {' '.join(argv)}\n"
                         f"{res.stderr.strip()}")


def _build_boot_sector_x86(inputs: list[Path], work: Path) -> bytes:
    """Assemble a 16/32-bit boot block and link it flat at 0x7c00."""
    (src,) = inputs
    obj = work / "boot.o"
    out = work / "boot.bin"
    _run([_tool("as"), "--32", str(src), "-o", str(obj)], work)
    _run([_tool("ld"), "-m", "elf_i386", "-Ttext", "0x7c00", "-e", "_start",
          "--oformat", "binary", str(obj), "-o", str(out)], work)
    data = out.read_bytes()
    if len(data) != 512 or data[510:512] != b"\x55\xaa":
        raise ImageError(f"{src}: expected a 512-byte boot block ending in 55 AA, "
                         f"got {len(data)} bytes")
    return data


def _build_linux(inputs: list[Path], work: Path) -> bytes:
    """The Linux guest bundle (kernel, initramfs with the agent): see
    harness.guest.linux_build."""
    try:
        return linux_build.build_bundle(inputs, work)
    except linux_build.LinuxBuildError as e:
        raise ImageError(str(e)) from e


def _linux_key(root: Traversable) -> str:
    return linux_build.key_text(_input(root, "linux/packages.txt").read_text(),
                                cache_dir() / "linux-key.json")


#: Where pvh.ld links the dirtier's PVH build, and the end of what it loads
#: there (checked at build time): the region must stay clear of it.
PVH_LOAD_ADDR = 0x100000
PVH_LOAD_END = 0x101000


def _build_pvh_x86(inputs: list[Path], work: Path) -> bytes:
    """The dirtier's PVH build: the same source assembled with ``PVH=1`` and
    linked by ``x86/pvh.ld`` into an ELF for ``-kernel`` (one loadable
    segment at 1 MiB and the XEN_ELFNOTE_PHYS32_ENTRY note), symbols
    stripped so the file holds the parameter block's magic only once."""
    src, script = inputs
    obj = work / "pvh.o"
    out = work / "pvh.elf"
    _run([_tool("as"), "--32", "--defsym", "PVH=1", str(src), "-o", str(obj)], work)
    _run([_tool("ld"), "-m", "elf_i386", "-T", str(script), "-s", "--build-id=none",
          str(obj), "-o", str(out)], work)
    data = out.read_bytes()
    if data[:4] != b"\x7fELF":
        raise ImageError(f"{src}: the PVH build is not an ELF file")
    _check_pvh_segments(src, data)
    return data


def _check_pvh_segments(src: Path, data: bytes) -> None:
    """The loadable segments lie in [PVH_LOAD_ADDR, PVH_LOAD_END) and a PT_NOTE
    exists: what harness.guest.dirtier promises about where the code is."""
    phoff, = struct.unpack_from("<I", data, 0x1C)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x2A)
    notes = 0
    for i in range(phnum):
        p_type, _off, _vaddr, paddr, _filesz, memsz = struct.unpack_from(
            "<IIIIII", data, phoff + i * phentsize)
        if p_type == 1 and not (PVH_LOAD_ADDR <= paddr and paddr + memsz <= PVH_LOAD_END):
            raise ImageError(f"{src}: the PVH build loads 0x{paddr:x}+0x{memsz:x}, outside "
                             f"[0x{PVH_LOAD_ADDR:x}, 0x{PVH_LOAD_END:x})")
        notes += p_type == 4
    if not notes:
        raise ImageError(f"{src}: the PVH build has no PT_NOTE segment (QEMU would not "
                         f"find its entry point)")


def _build_python_listing(inputs: list[Path], work: Path) -> bytes:
    """Run a Python listing (e.g. ``e2k/dirtier.py``) and return its ``build()`` bytes."""
    (src,) = inputs
    del work
    try:
        data = runpy.run_path(str(src), run_name="mharness_image")["build"]()
    except Exception as e:  # noqa: BLE001 - any failure of the listing is a build failure
        raise ImageError(f"build step failed: {src}: {type(e).__name__}: {e}") from e
    if not isinstance(data, bytes) or not data:
        raise ImageError(f"{src}: build() returned no image bytes")
    return data


RECIPES: dict[str, Recipe] = {
    "dirtier-x86": Recipe(
        name="dirtier-x86",
        inputs=("x86/dirtier.S",),
        tools=("as", "ld"),
        version="1",
        build=_build_boot_sector_x86,
    ),
    # The same dirtier as a PVH ELF for -kernel, booted by qboot (a target's
    # ``firmware: qboot``): no SeaBIOS POST, no disk boot.
    "dirtier-x86-pvh": Recipe(
        name="dirtier-x86-pvh",
        inputs=("x86/dirtier.S", "x86/pvh.ld"),
        tools=("as", "ld"),
        version="1",
        build=_build_pvh_x86,
        pad_to=16 * 1024,
    ),
    # e2k firmware for qemu-e2k's -bios, from the project's own encoder.
    "dirtier-e2k": Recipe(
        name="dirtier-e2k",
        inputs=("e2k/dirtier.py",),
        tools=(),
        version="1",
        build=_build_python_listing,
        pad_to=64 * 1024,
        key_sources=("e2kasm.py",),
    ),
    # Debian's kernel and busybox with the project's agent: a bundle that
    # harness.guest.linux unpacks (kernel, initramfs, manifest).
    "linux-x86_64": Recipe(
        name="linux-x86_64",
        inputs=linux_build.INPUTS,
        tools=(),                    # gcc, apt and dpkg enter the key via key_extra
        version="1",
        build=_build_linux,
        pad_to=32 * MIB,
        key_sources=("linux_build.py", "linux_kallsyms.py", "linux_symbols.py"),
        key_extra=_linux_key,
    ),
}


def recipe_key(name: str) -> str:
    """16-hex-digit content hash of a recipe's inputs, version and tool versions."""
    recipe = _recipe(name)
    h = hashlib.sha256()
    h.update(f"recipe {recipe.name} v{recipe.version} pad {recipe.pad_to}\n".encode())
    # Only relative names and bytes enter the key, never where the recipes were
    # read from: the same recipes give the same key from a checkout, an
    # installed package or $MHARNESS_IMAGES_DIR.
    root = images_dir()
    for rel in recipe.inputs:
        path = _input(root, rel)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"image '{name}': cannot read recipe input {path}: {e.strerror} "
                             f"(the installed package lacks its recipes: reinstall it, or "
                             f"set MHARNESS_IMAGES_DIR to a folder of recipes such as the "
                             f"repository's images/)") from e
        h.update(f"input {rel} {len(data)}\n".encode())
        h.update(data)
    for rel in recipe.key_sources:
        data = resources.files("harness.guest").joinpath(rel).read_bytes()
        h.update(f"source {rel} {len(data)}\n".encode())
        h.update(data)
    for tool in recipe.tools:
        path = _tool(tool)
        h.update(f"tool {tool} {_tool_version(path, os.stat(path).st_mtime_ns)}\n".encode())
    if recipe.key_extra is not None:
        try:
            h.update(f"extra {recipe.key_extra(root)}".encode())
        except HarnessError as e:
            raise ImageError(f"image '{name}': {e}") from e
    return h.hexdigest()[:16]


def _recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise ImageError(f"unknown image '{name}' (known: {known})") from None


def build_image(name: str = "dirtier-x86") -> Path:
    """Return the path of the built image, building it only if not cached yet.

    The path is ``cache_dir()/images/<name>-<key>.img``; an existing file with
    that name is trusted (it can only have been written whole, by
    ``os.replace``).
    """
    recipe = _recipe(name)
    key = recipe_key(name)
    dest_dir = cache_dir() / "images"
    dest = dest_dir / f"{name}-{key}.img"
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = images_dir()
    with contextlib.ExitStack() as stack:
        inputs = [stack.enter_context(resources.as_file(_input(root, rel)))
                  for rel in recipe.inputs]
        work = Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f"build-{name}-", dir=dest_dir)))
        data = recipe.build(inputs, work)
        if len(data) > recipe.pad_to:
            raise ImageError(f"image '{name}' is {len(data)} bytes, more than {recipe.pad_to}")
        write_atomic(dest, bytes(data) + bytes(recipe.pad_to - len(data)), fsync=True)
    return dest
