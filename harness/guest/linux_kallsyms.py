"""Copying the guest kernel's /proc/kallsyms out, once per image build.

The image build (harness.guest.linux_build) calls :func:`capture` with the
kernel and initramfs it just made.  It boots them once under TCG with the
kernel parameter ``mh.symbols``: the init script (images/linux/init) then
writes ``/proc/iomem`` and ``/proc/kallsyms`` onto a raw virtio-blk disk
(a few MB: far faster than the 16550 console) and powers off.  The boot
uses the bzImage *without* ``nokaslr``, so the kernel relocates itself
(virtually and physically) unlike in the cells; the map is stored as offsets
from ``_text`` (harness.guest.linux_symbols), and this boot proves that is
sound on the real guest:

- the iomem ranges of this boot (``Kernel code``/``rodata``/``data``/``bss``)
  sit at the map's offsets from ``_text`` (:meth:`SymbolMap.layout_problem`);
- the guest's RAM (a memory-backend-file QEMU writes through) holds
  ``linux_banner``'s text, "Linux version ...", at "Kernel code" start +
  the symbol's offset.

Either failing fails the build.  Where no ``qemu-system-x86_64`` is on PATH the
bundle is built without a map (pages are then named by section only).
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.guest.linux_symbols import (ANCHOR, SymbolMap, SymbolMapError, dump,
                                         kernel_image_symbols)

__all__ = ["KallsymsError", "capture", "parse_capture", "CAPTURE_TIMEOUT"]

log = logging.getLogger(__name__)

#: The bzImage decompresses itself emulated: ~8 s on a quiet machine, ~18 s
#: measured at load 10.
CAPTURE_TIMEOUT = 300.0
DISK_BYTES = 32 << 20
RAM_MIB = 256
#: The kernel image of x86-64 without KASLR: CONFIG_PHYSICAL_START and
#: __START_KERNEL (arch/x86/include/asm/page_64_types.h).
DEFAULT_TEXT = (0xFFFFFFFF81000000, 0x1000000)

_IOMEM = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) : Kernel (code|rodata|data|bss)$")


class KallsymsError(HarnessError):
    """The capture boot failed or what it copied out cannot be trusted."""


def parse_capture(raw: bytes) -> tuple[dict[str, str], dict[str, tuple[int, int]], str]:
    """(header fields, iomem kernel sections as [start, end), kallsyms text)
    from the disk the init script wrote."""
    end = raw.find(b"\nMH END\n")
    if not raw.startswith(b"MH SYMBOLS ") or end < 0:
        raise KallsymsError("the capture disk holds no complete MH SYMBOLS .. MH END record")
    text = raw[:end + 1].decode("ascii", "replace")
    head, _, rest = text.partition("\n")
    iomem_text, sep, kallsyms = rest.partition("MH KALLSYMS\n")
    if not sep:
        raise KallsymsError("the capture disk has no MH KALLSYMS line")
    fields = dict(f.split("=", 1) for f in head.split()[2:] if "=" in f)
    iomem = {}
    for line in iomem_text.splitlines():
        m = _IOMEM.match(line)
        if m:
            iomem[m.group(3)] = (int(m.group(1), 16), int(m.group(2), 16) + 1)
    return fields, iomem, kallsyms


def _console_tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text("ascii", "replace").strip().splitlines()[-8:])
    except OSError:
        return "(no console output)"


def _boot(qemu: str, kernel: Path, initrd: Path, work: Path) -> tuple[Path, Path]:
    disk, ram, console = work / "symbols.disk", work / "symbols.ram", work / "symbols.console"
    with open(disk, "wb") as f:
        f.truncate(DISK_BYTES)
    argv = [qemu, "-nodefaults", "-display", "none", "-machine", "q35", "-accel", "tcg",
            "-m", f"{RAM_MIB}M",
            "-object", f"memory-backend-file,id=ram0,size={RAM_MIB}M,mem-path={ram},share=on",
            "-machine", "memory-backend=ram0",
            "-kernel", str(kernel), "-initrd", str(initrd),
            # No nokaslr: this boot relocates the kernel (see the module doc).
            "-append", "console=ttyS0,115200 panic=-1 mh.symbols",
            "-serial", f"file:{console}",
            "-drive", f"if=none,id=d0,file={disk},format=raw",
            "-device", "virtio-blk-pci,drive=d0", "-no-reboot"]
    t0 = time.monotonic()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=CAPTURE_TIMEOUT,
                             check=False)
    except subprocess.TimeoutExpired:
        raise KallsymsError(f"the symbol capture boot did not power off within "
                            f"{CAPTURE_TIMEOUT:.0f} s; console:\n{_console_tail(console)}") from None
    except OSError as e:
        raise KallsymsError(f"cannot run {qemu}: {e}") from e
    if res.returncode != 0:
        raise KallsymsError(f"the symbol capture boot failed (exit {res.returncode}): "
                            f"{res.stderr.strip()[-500:]}; console:\n{_console_tail(console)}")
    log.info("symbol capture boot: %.1f s", time.monotonic() - t0)
    return disk, ram


def _check_anchor(smap: SymbolMap, iomem: dict[str, tuple[int, int]], ram: Path) -> str:
    name, want = ANCHOR
    off = smap.offset_of(name)
    if off is None:
        raise KallsymsError(f"kallsyms has no '{name}'")
    gpa = iomem["code"][0] + off
    with open(ram, "rb") as f:     # below 2 GiB on q35: file offset = gpa
        f.seek(gpa)
        got = f.read(len(want) + 40)
    if not got.startswith(want):
        raise KallsymsError(f"{name} is not where the map puts it: guest-physical {gpa:#x} "
                            f"('Kernel code' + {off:#x}) holds {got!r}")
    return got.split(b"\n")[0].decode("ascii", "replace")


def capture(kernel: Path, initrd: Path, work: Path) -> tuple[bytes | None, dict[str, object]]:
    """The stored symbol map (harness.guest.linux_symbols.dump) and what the
    manifest says of it; (None, reason) without a QEMU to boot."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        log.warning("no qemu-system-x86_64 on PATH: the Linux guest is built without its "
                    "kernel symbol map (differing pages are named by section only)")
        return None, {"missing": "no qemu-system-x86_64 on PATH at build time"}
    disk, ram = _boot(qemu, kernel, initrd, work)
    try:
        fields, iomem, kallsyms = parse_capture(disk.read_bytes()[:DISK_BYTES])
        try:
            symbols = kernel_image_symbols(kallsyms)
        except SymbolMapError as e:
            raise KallsymsError(f"kallsyms (kptr_restrict={fields.get('kptr_restrict')}): "
                                f"{e}") from e
        smap = SymbolMap(symbols)
        problem = smap.layout_problem(iomem)
        if problem:
            raise KallsymsError(f"the symbol map does not fit the capture boot: {problem}")
        banner = _check_anchor(smap, iomem, ram)
    finally:
        ram.unlink(missing_ok=True)
        disk.unlink(missing_ok=True)
    text_virt = int(next(line.split()[0] for line in kallsyms.splitlines()
                         if line.endswith(" _text")), 16)
    relocated = (text_virt, iomem["code"][0]) != DEFAULT_TEXT
    meta = {"captured_text_virt": f"{text_virt:#x}", "captured_text_phys":
            f"{iomem['code'][0]:#x}", "kaslr_relocated": str(relocated).lower(),
            "kptr_restrict": fields.get("kptr_restrict", "?"), "anchor": ANCHOR[0]}
    log.info("kernel symbols: %d (capture boot relocated: %s), %s", len(symbols), relocated,
             banner)
    return dump(symbols, meta), {"count": len(symbols), **meta}
