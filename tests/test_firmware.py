"""The ``firmware`` key (issue #16): qboot and the dirtier's PVH build.

A target's ``firmware: seabios|qboot`` (matrix.yaml) becomes
``TargetSpec.firmware``; qboot needs the PVH image recipe, a kernel per cell
with the region patched in, and ``-bios qboot.rom -kernel`` on the command
line.  Nothing here starts QEMU (testcases/test_guest_boot.py boots both).
"""
from __future__ import annotations

import dataclasses
import shutil
import struct
import textwrap
from pathlib import Path

import pytest

from harness.cell import DEFAULT_FIRMWARE, FIRMWARES, BuildSpec, Cell, TargetSpec
from harness.errors import MatrixError
from harness.guest import dirtier as d
from harness.guest import images
from harness.matrix import load_matrix, tier_cells
from harness.qemu.cmdline import QBOOT_ROM, firmware_args

MIB = 1 << 20

needs_binutils = pytest.mark.skipif(
    shutil.which("as") is None or shutil.which("ld") is None,
    reason="binutils (as, ld) not installed")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


# --- the image recipe -----------------------------------------------------------


def _elf_notes(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in the ELF32's PT_NOTE segments."""
    phoff, = struct.unpack_from("<I", data, 0x1C)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x2A)
    notes = []
    for i in range(phnum):
        p_type, off, _v, _p, filesz, _m = struct.unpack_from("<IIIIII", data, phoff + i * phentsize)
        if p_type != 4:
            continue
        pos = off
        while pos < off + filesz:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            pos += 12
            name = data[pos:pos + namesz]
            pos += (namesz + 3) & ~3
            notes.append((name, ntype, data[pos:pos + descsz]))
            pos += (descsz + 3) & ~3
    return notes


@needs_binutils
def test_pvh_recipe_builds_an_elf_with_the_pvh_entry_note(cache: Path) -> None:
    data = images.build_image(d.PVH_IMAGE_NAME).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 1          # ELF32
    assert struct.unpack_from("<H", data, 0x12)[0] == 3      # EM_386
    entry, = struct.unpack_from("<I", data, 0x18)
    # QEMU's load_elfboot takes the entry from the XEN_ELFNOTE_PHYS32_ENTRY note.
    assert (b"Xen\0", 18, struct.pack("<I", entry)) in _elf_notes(data)
    assert entry == images.PVH_LOAD_ADDR
    # The parameter block once, with the assembled defaults.
    assert data.count(d.PARAM_MAGIC) == 1
    off = d.param_offset(data, "pvh")
    assert struct.unpack_from(d.PARAM_FORMAT, data, off) == (
        d.PARAM_MAGIC, d.DEFAULT_REGION_BASE, d.DEFAULT_REGION_PAGES)
    assert len(data) == images.RECIPES[d.PVH_IMAGE_NAME].pad_to


@needs_binutils
def test_boot_block_and_pvh_build_share_one_source(cache: Path) -> None:
    """One dirtier.S, two builds: both keys move when it changes, and the
    boot block keeps its layout (code at 0x7c00, 55 AA, block at 0x1F0)."""
    recipe = images.RECIPES[d.PVH_IMAGE_NAME]
    assert recipe.inputs[0] == images.RECIPES[d.IMAGE_NAME].inputs[0] == "x86/dirtier.S"
    assert images.recipe_key(d.PVH_IMAGE_NAME) != images.recipe_key(d.IMAGE_NAME)
    mbr = images.build_image(d.IMAGE_NAME).read_bytes()
    assert mbr[510:512] == b"\x55\xaa" and mbr[0x1F0:0x1F4] == d.PARAM_MAGIC


def test_pvh_segments_outside_the_promised_range_are_refused() -> None:
    # A minimal ELF32 header with one PT_LOAD at 0x200000.
    ehdr = bytearray(52)
    ehdr[:4] = b"\x7fELF"
    struct.pack_into("<I", ehdr, 0x1C, 52)
    struct.pack_into("<HH", ehdr, 0x2A, 32, 1)
    phdr = struct.pack("<IIIIIIII", 1, 0, 0x200000, 0x200000, 16, 16, 5, 4)
    with pytest.raises(images.ImageError, match="outside"):
        images._check_pvh_segments(Path("x.S"), bytes(ehdr) + phdr)
    phdr = struct.pack("<IIIIIIII", 1, 0, 0x100000, 0x100000, 16, 16, 5, 4)
    with pytest.raises(images.ImageError, match="no PT_NOTE"):
        images._check_pvh_segments(Path("x.S"), bytes(ehdr) + phdr)


# --- the per-cell kernel and the command line -------------------------------------


@needs_binutils
def test_make_kernel_patches_only_the_parameter_block(cache: Path) -> None:
    kernel = d.make_kernel(cache / "cell" / "k.elf", 0x400000, 8 * MIB)
    image = images.build_image(d.PVH_IMAGE_NAME).read_bytes()
    out = kernel.read_bytes()
    off = d.param_offset(image, "pvh")
    assert d.read_params(kernel) == (0x400000, 2048)
    assert out[:off] == image[:off] and out[off + 12:] == image[off + 12:]


@needs_binutils
@pytest.mark.parametrize("base,msg", [(0x100000, "below 0x101000"), (0x7000, "below 1 MiB")])
def test_make_kernel_keeps_the_region_off_the_code(cache: Path, base: int, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        d.make_kernel(cache / "k.elf", base, MIB)
    d.make_kernel(cache / "k.elf", d.PVH_MIN_REGION_BASE, MIB)
    # The boot block's code is below 1 MiB: its region may start there.
    d.make_disk(cache / "disk.img", 0x100000, MIB)


@needs_binutils
def test_boot_args(cache: Path) -> None:
    work = cache / "cell"
    work.mkdir()
    assert d.boot_args("seabios", work, 0x200000, 4 * MIB) == []
    args = d.boot_args("qboot", work, 0x200000, 4 * MIB, 256 * MIB)
    assert args == ["-kernel", str(work / d.KERNEL_NAME)]
    assert d.read_params(work / d.KERNEL_NAME) == (0x200000, 1024)
    # Both sides of a cell share the one kernel.
    assert d.boot_args("qboot", work, 0x200000, 4 * MIB) == args


def test_firmware_args() -> None:
    assert firmware_args("x86_64", Path("/nonexistent")) == []
    assert firmware_args("x86_64", Path("/nonexistent"), "seabios") == []
    assert firmware_args("x86_64", Path("/nonexistent"), "qboot") == ["-bios", QBOOT_ROM]


# --- the matrix key --------------------------------------------------------------

MATRIX = """\
version: 1
builds:
  sys: {binary: "/usr/bin/qemu-system-{arch}", version: "7.2"}
targets:
  kvm: &kvm {arch: x86_64, machine: q35, accel: kvm, build: sys, cpu: "qemu64,-kvmclock"}
  kvm-seabios: {<<: *kvm, firmware: seabios}
  kvm-qboot: {<<: *kvm, firmware: qboot}
transports: [unix]
tiers:
  smoke:
    cells:
      - {target: kvm, transport: unix}
      - {target: kvm-seabios, transport: unix}
      - {target: kvm-qboot, transport: unix}
"""


def _load(tmp_path: Path, text: str) -> list[Cell]:
    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(text))

    def no_binary(spec: BuildSpec) -> None:
        raise AssertionError("planning asked a binary")

    return tier_cells(load_matrix(path), "smoke", resolve=no_binary)


def test_firmware_key_and_default(tmp_path: Path) -> None:
    plain, seabios, qboot = _load(tmp_path, MATRIX)
    assert DEFAULT_FIRMWARE == FIRMWARES[0] == "seabios"
    assert plain.target.firmware == seabios.target.firmware == "seabios"
    assert qboot.target.firmware == "qboot"
    assert qboot.inputs()["target"]["firmware"] == "qboot"


def test_default_firmware_leaves_ids_and_seeds_alone(tmp_path: Path) -> None:
    """Adding the key changed no existing cell: an unset (or explicit seabios)
    firmware is not part of the fingerprint, so ids and seeds stay; qboot is."""
    plain, seabios, qboot = _load(tmp_path, MATRIX)
    assert '"firmware"' not in plain.fingerprint()
    assert plain.fingerprint() == dataclasses.replace(
        seabios, id=plain.id, target=dataclasses.replace(seabios.target, name="kvm")
    ).fingerprint()
    assert (plain.id, seabios.id, qboot.id) == ("kvm-unix-default", "kvm-seabios-unix-default",
                                                "kvm-qboot-unix-default")
    twin = dataclasses.replace(qboot, target=dataclasses.replace(qboot.target,
                                                                 firmware="seabios"))
    assert twin.seed != qboot.seed


def _error(tmp_path: Path, text: str) -> MatrixError:
    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    return info.value


@pytest.mark.parametrize("target,reason", [
    ("{<<: *kvm, firmware: ovmf}", "unknown firmware 'ovmf' (known: seabios, qboot)"),
    ("{<<: *kvm, firmware: [qboot]}", "expected a string, got a list"),
    ("{<<: *kvm, firmware: qboot, workload: {kind: pattern, base: 64M, region: 16M}}",
     "firmware qboot starts the dirtier (as a PVH kernel); workload kind 'pattern' has "
     "nothing for it to start (use seabios)"),
    ("{<<: *kvm, firmware: qboot, workload: {base: 1M, region: 16M}}",
     "firmware qboot loads the dirtier's code at 1 MiB: the workload region must start at "
     "or above 0x101000, not 1M"),
    ("{arch: e2k, machine: e2k, build: sys, firmware: qboot}",
     "firmware qboot is for x86 targets, not arch 'e2k'"),
])
def test_firmware_errors_name_file_line_and_key(tmp_path: Path, target: str,
                                                reason: str) -> None:
    text = MATRIX.replace("kvm-qboot: {<<: *kvm, firmware: qboot}", f"bad: {target}")
    text = text.replace("{target: kvm-qboot, transport: unix}", "{target: bad, transport: unix}")
    err = _error(tmp_path, text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith("  bad:"))
    assert (err.line, err.key, err.reason) == (line, "targets.bad.firmware", reason)
    assert str(err).startswith(f"{tmp_path / 'matrix.yaml'}:{line}: key 'targets.bad.firmware'")


def test_repository_matrix_smoke_kvm_cells_boot_qboot_and_seabios_stays() -> None:
    """Smoke's KVM cells use qboot; smoke still migrates SeaBIOS's state (its
    TCG cells), and the SeaBIOS KVM cells keep their ids in extended."""
    repo = Path(__file__).resolve().parent.parent / "matrix.yaml"
    matrix = load_matrix(repo)

    def version_of(spec: BuildSpec) -> str:
        raise AssertionError(f"planning asked the binary {spec.binary}")

    smoke = [c for c in tier_cells(matrix, "smoke", resolve=version_of)
             if c.kind == "migration"]
    kvm = [c for c in smoke if c.target.accel == "kvm"]
    assert kvm and all(c.target.firmware == "qboot" for c in kvm)
    assert any(c.target.firmware == "seabios" for c in smoke)
    extended = {c.id: c for c in tier_cells(matrix, "extended", resolve=version_of)}
    for cid in ("x86_64-q35-kvm-unix-precopy", "x86_64-pc-kvm-tcp-precopy"):
        assert extended[cid].target.firmware == "seabios"


def test_targets_default_to_seabios() -> None:
    assert TargetSpec(name="t").firmware == "seabios"
