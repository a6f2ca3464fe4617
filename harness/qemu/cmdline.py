"""The QEMU command line for one side of a cell, built from the target profile.

Kept apart from process handling so it can be unit-tested and printed
(``mharness list --argv``) without starting anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.cell import TargetSpec
from harness.qemu.build import QemuBuild
from harness.qemu.hugeram import huge_page_size

RAM_BACKEND_ID = "ram0"
#: e2k boards start at 0x100000000 from ``-bios``; without a porter's firmware
#: a zero-filled placeholder lets the CPU run (and the pattern workload work).
E2K_BIOS_ENV = "MHARNESS_E2K_BIOS"
E2K_PLACEHOLDER_BIOS_SIZE = 64 * 1024


#: qboot's file name on QEMU's data path (``-L``): QEMU resolves ``-bios NAME``
#: there (system/datadir.c qemu_find_file, QEMU_FILE_TYPE_BIOS; softmmu/ in
#: 7.2), and both builds here ship it (Debian's qemu-system-data).
QBOOT_ROM = "qboot.rom"


def firmware_args(arch: str, workdir: Path, firmware: str = "seabios") -> list[str]:
    """Firmware a target needs on its command line: none for x86 with SeaBIOS
    (QEMU's default BIOS), ``-bios qboot.rom`` with ``firmware: qboot`` (a
    firmware without SeaBIOS's POST: it sets up the machine and starts the
    ``-kernel`` it is given, see harness.guest.dirtier.boot_args)."""
    if arch != "e2k":
        return ["-bios", QBOOT_ROM] if firmware == "qboot" else []
    bios = os.environ.get(E2K_BIOS_ENV)
    if not bios:
        placeholder = workdir / "e2k-placeholder.bios"
        if not placeholder.exists():
            placeholder.write_bytes(bytes(E2K_PLACEHOLDER_BIOS_SIZE))
        bios = str(placeholder)
    return ["-bios", bios]


@dataclass(frozen=True)
class MachinePaths:
    """Files one QEMU uses, all inside the cell's private (0700) runtime dir."""

    qmp: Path
    serial: Path
    ram: Path
    disk: Path | None


def ram_backend(size: int, ram: Path, prealloc: bool) -> str:
    """The guest RAM's ``-object``: a shared file the harness can read.

    When the file's folder is a tmpfs that allows transparent huge pages (a
    host set-up step, harness.qemu.hugeram), ``align=`` makes QEMU map the file
    at a huge-page boundary, so its madvise(MADV_HUGEPAGE) gets 2 MiB pages:
    QEMU's prealloc, the migration's page faults and the file's removal then
    handle 512 times fewer pages (per TCG cell about 0.4 CPU-s less here, see
    benchmarks/README.md).  Without such a tmpfs the option is left out and
    nothing changes.  A folder that does not exist here (a remote host's) is
    not looked at.
    """
    align = huge_page_size(ram.parent) if ram.parent.is_dir() else None
    return (f"memory-backend-file,id={RAM_BACKEND_ID},size={size},mem-path={ram},share=on,"
            f"prealloc={'on' if prealloc else 'off'}" + (f",align={align}" if align else ""))


def machine_argv(build: QemuBuild, target: TargetSpec, paths: MachinePaths, *,
                 incoming: bool, machine_type: str | None = None,
                 extra: tuple[str, ...] = (), prealloc: bool = True,
                 start_paused: bool = True) -> list[str]:
    """Command line for a source (``incoming=False``) or destination.

    Guest RAM lives in a ``memory-backend-file`` with ``share=on`` so both
    sides' RAM can be compared byte for byte from the host while the VMs are
    stopped.  The destination starts with ``-S`` so it stays paused after the
    last page lands, and with ``-incoming defer`` so capabilities and
    parameters can be set before it listens.  ``start_paused=False`` leaves
    ``-S`` out (a cell with ``dst-start: autostart``): QEMU then starts the
    guest itself once the migration is in (harness.migration.dst_start).
    """
    machine = machine_type or target.machine
    argv = build.base_argv()
    argv += [
        "-nodefaults", "-no-user-config", "-display", "none",
        # Named threads: the downtime check reads the migration thread's
        # run-queue wait by its name (harness.qemu.runqueue).
        "-name", f"{'dst' if incoming else 'src'},debug-threads=on",
        "-machine", f"{machine},memory-backend={RAM_BACKEND_ID}",
        "-accel", ",".join([target.accel] + [f"{k}={v}" for k, v in target.accel_options]),
        "-m", f"{target.memory // (1024 * 1024)}M",
        # prealloc (off when the file is another QEMU's live RAM: touching
        # pages rewrites them): both files end up fully populated by the end of a migration
        # anyway; populating them up front keeps page faults out of the
        # migration (measured: a third of the migrate phase for 1 GiB, TCG).
        "-object", ram_backend(target.memory, paths.ram, prealloc),
        "-smp", str(target.smp),
        "-qmp", f"unix:{paths.qmp}",
        "-chardev", f"socket,id=serial0,path={paths.serial}",
        "-serial", "chardev:serial0",
    ]
    if target.cpu:
        argv += ["-cpu", target.cpu]
    if paths.disk is not None:
        argv += ["-drive", f"file={paths.disk},format=raw,if=ide,index=0,media=disk"]
    if incoming:
        argv += (["-S"] if start_paused else []) + ["-incoming", "defer"]
    argv += list(extra)
    return argv
