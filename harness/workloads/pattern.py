"""An architecture-neutral workload: a seeded pseudo-random pattern in guest RAM.

No guest code is needed, so it works for any target (e2k included): the
pattern file is placed in the *source's* guest RAM by QEMU's generic loader
(``-device loader,file=F,addr=A,force-raw=on``: hw/core/generic-loader.c,
``generic_loader_realize`` -> ``load_image_targphys_as``; the bytes become a ROM
blob that ``rom_reset`` copies into RAM at machine reset, hw/core/loader.c).
Without ``cpu-num`` the loader sets no CPU's PC, so the firmware runs as usual.

The destination is started *without* the loader: whatever pattern bytes it
holds after the migration came through the migration stream.  The check then
regenerates the pattern from its seed and compares it with the destination's
RAM file byte for byte (the harness backs guest RAM with a
``memory-backend-file``), reporting the first differing guest-physical address.

Pick a region firmware does not touch: e.g. 64 MiB into a 128 MiB x86 guest
(SeaBIOS keeps its tables at the top of low RAM and below 1 MiB).
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from harness.results import CheckResult

#: Differences listed in the figures.
KEEP = 16


def pattern_bytes(size: int, seed: int) -> np.ndarray:
    """The pattern: ``size`` bytes from PCG64 seeded with ``seed`` (stable
    across numpy versions: ``Generator.bytes`` draws from the bit generator)."""
    return np.frombuffer(np.random.Generator(np.random.PCG64(seed)).bytes(size), dtype=np.uint8)


def make_pattern(path: Path, size: int, seed: int) -> Path:
    """Write the pattern to ``path`` (the loader's ``file=``) and return it."""
    path = Path(path)
    path.write_bytes(pattern_bytes(size, seed).tobytes())
    return path


def loader_args(path: Path, gpa: int) -> list[str]:
    """QEMU arguments that preload ``path`` raw at guest-physical ``gpa``."""
    return ["-device", f"loader,file={path},addr={gpa:#x},force-raw=on"]


def check_pattern(ram_file: Path, file_offset: int, size: int, seed: int,
                  gpa: int | None = None) -> CheckResult:
    """``pattern``: the ``size`` bytes at ``file_offset`` of ``ram_file`` are
    exactly the pattern of ``seed``; ``gpa`` (default: ``file_offset``, true
    for RAM mapped from 0) labels addresses in the result."""
    base = file_offset if gpa is None else gpa
    want = pattern_bytes(size, seed)
    with open(ram_file, "rb") as f:
        if f.seek(0, 2) < file_offset + size:
            return CheckResult("pattern", False, f"RAM file {ram_file} is shorter than "
                               f"{file_offset + size:#x}", {"gpa": hex(base), "size": size})
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            got = np.frombuffer(m, dtype=np.uint8, count=size, offset=file_offset)
            try:
                bad = np.flatnonzero(got != want)
                first = [(int(i), int(got[i]), int(want[i])) for i in bad[:KEEP]]
            finally:
                del got
    figures = {"gpa": hex(base), "size": size, "seed": seed, "differing_bytes": int(len(bad))}
    if len(bad) == 0:
        return CheckResult("pattern", True, f"{size} pattern bytes at {base:#x} intact", figures)
    figures["first_differences"] = [{"gpa": hex(base + i), "got": f"{g:#04x}", "want": f"{w:#04x}"}
                                    for i, g, w in first]
    return CheckResult("pattern", False, f"{len(bad)} of {size} pattern bytes differ, first at "
                       f"guest-physical {base + first[0][0]:#x}", figures)


async def migrate_pattern(base_argv: list[str], env: dict[str, str], machine_args: list[str],
                          ram_size: int, gpa: int, size: int, seed: int, workdir: Path,
                          logdir: Path, *, running: bool, arch: str, timeout: float = 60.0,
                          file_offset: int | None = None) -> dict[str, object]:
    """Migrate a machine whose only workload is the pattern (no guest code,
    any target) and judge the paused destination: ``pattern`` and ``cpu-state``.

    ``base_argv`` is the binary with its ``-L``/extra arguments and
    ``machine_args`` what makes the target's machine (``-M``, ``-bios``...).
    The source gets the loader (and ``-S`` unless ``running``); the destination
    neither, plus ``-S -incoming defer``.  Returns the check results, the
    migration figures and both run states.
    """
    import asyncio
    import time

    from harness.checks.cpustate import collect_cpu_state
    from harness.driver import run_migration, settled_status
    from harness.qemu.machine import Machine

    blob = make_pattern(workdir / "pattern.bin", size, seed)
    t0 = time.monotonic()
    machines = []
    for role in ("src", "dst"):
        ram = workdir / f"{role}.ram"
        argv = [*base_argv, "-nodefaults", "-no-user-config", "-display", "none",
                *machine_args, "-m", f"{ram_size >> 20}M",
                "-object", f"memory-backend-file,id=ram0,size={ram_size},mem-path={ram},share=on",
                "-machine", "memory-backend=ram0",
                "-qmp", f"unix:{workdir / (role + '.qmp')}",
                "-chardev", f"socket,id=serial0,path={workdir / (role + '.serial')}",
                "-serial", "chardev:serial0"]
        if role == "src":
            argv += loader_args(blob, gpa) + ([] if running else ["-S"])
        else:
            argv += ["-S", "-incoming", "defer"]
        machines.append(Machine(role, argv, env, qmp_path=workdir / f"{role}.qmp",
                                serial_path=workdir / f"{role}.serial", logdir=logdir, t0=t0))
    src, dst = machines
    handed_over = False
    try:
        await asyncio.gather(src.start(), dst.start())
        caps = {"events": True}
        for m in machines:
            await m.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}]})
        if running:
            await asyncio.sleep(0.3)  # let the firmware run a little
        uri = f"unix:{workdir / 'migration.sock'}"
        await dst.execute("migrate-incoming", {"uri": uri})
        t = time.monotonic()
        run = await run_migration(src, dst, uri, caps, timeout, t0)
        out: dict[str, object] = {"status": run.status, "migrate_seconds": round(time.monotonic() - t, 3),
                                  "downtime_ms": run.info.get("downtime"),
                                  "total_time_ms": run.info.get("total-time")}
        if not run.completed:
            out["error"] = run.error
            return out
        out["runstates"] = {"source": await src.status(), "destination": await settled_status(dst)}
        off = gpa if file_offset is None else file_offset
        out["pattern"] = check_pattern(workdir / "dst.ram", off, size, seed, gpa)
        out["pattern_source"] = check_pattern(workdir / "src.ram", off, size, seed, gpa)
        out["cpu-state"] = await collect_cpu_state(src, dst, arch)
        # Still open, both stopped: the caller may read more (coverage) and
        # must close them.
        out["machines"] = (src, dst)
        handed_over = True
        return out
    finally:
        if not handed_over:
            for m in machines:
                await m.close()
