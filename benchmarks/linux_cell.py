#!/usr/bin/env python3
"""How long a Linux cell takes: boot, migration and the whole cell.

A benchmark, not a test: it prints figures and judges nothing about time.

It runs the matrix's short Linux cell (``linux-short`` tier: a 256 MiB q35
guest under TCG, Debian's kernel with the project's agent, every Linux check,
a reboot on the destination) ``--runs`` times per build through
``harness.migration.flow.run_cell`` and prints each run and the median of:

- boot: from the source QEMU's start to the agent's HELLO (``boot_s``) and to
  its READY (``ready_s``: buffer filled, devices open);
- warm-up: the phase, boot included, until the agent has made its passes;
- migrate: the migration phase (QEMU's ``total-time`` beside it);
- guest checks: the agent's verdict, the reboot on the destination, the disk
  and network checks;
- cell: the whole cell, launch to teardown.

The image is built (or found in the cache) before the first run, so its
build time is not counted.  The target is a whole cell under 15 s on these
2-core machines; the figures say how far from it a loaded machine is
(``os.getloadavg`` is printed beside them).

Usage::

    python3 benchmarks/linux_cell.py                   # 5 runs on 10.0, 5 on 7.2
    python3 benchmarks/linux_cell.py --runs 3 --build debian-10.0 --no-reboot
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import packaged
from harness.guest.linux_image import linux_guest
from harness.matrix import load_matrix, tier_cells
from harness.migration.flow import run_cell
from harness.qemu.build import discover


def _figures(result: Any) -> dict[str, float | None]:
    linux = result.figures.get("linux") or {}
    return {
        "boot_s": linux.get("boot_s"), "ready_s": linux.get("ready_s"),
        "warmup_s": result.phases.get("warmup"), "migrate_s": result.phases.get("migrate"),
        "qemu_total_ms": (result.figures.get("query_migrate") or {}).get("total-time"),
        "guest_checks_s": result.phases.get("guest-checks"), "cell_s": result.duration,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--build", action="append", choices=["system", "debian-10.0"],
                    help="source and destination build (default: both, one after the other)")
    ap.add_argument("--no-reboot", action="store_true",
                    help="leave out the reboot on the destination (the reboot check)")
    args = ap.parse_args()
    matrix = load_matrix(Path(packaged.on_disk(packaged.default_matrix())))
    cells = {c.src_build.name: c for c in tier_cells(matrix, "linux-short", resolve=discover)}
    t = time.monotonic()
    guest = linux_guest()
    print(f"guest: kernel {guest.kernel_release}, {guest.initrd.stat().st_size >> 10} KiB "
          f"initramfs (ready in {time.monotonic() - t:.1f} s)")
    names = ("boot_s", "ready_s", "warmup_s", "migrate_s", "qemu_total_ms", "guest_checks_s",
             "cell_s")
    for build in args.build or ["debian-10.0", "system"]:
        cell = cells[build]
        if args.no_reboot:
            wl = cell.target.workload
            options = tuple(sorted(dict(wl.options, reboot=False).items()))
            cell = dataclasses.replace(cell, target=dataclasses.replace(
                cell.target, workload=dataclasses.replace(wl, options=options)))
        print(f"\n{cell.id} ({cell.target.memory >> 20} MiB, {cell.target.machine}, "
              f"{cell.target.accel}), {args.runs} runs")
        print("run  verdict   " + "  ".join(f"{n:>14}" for n in names) + "  load")
        rows: list[dict[str, float | None]] = []
        with tempfile.TemporaryDirectory(prefix="linux-bench-") as logs:
            for i in range(args.runs):
                result = run_cell(cell, Path(logs) / f"run{i}")
                fig = _figures(result)
                rows.append(fig)
                cells_txt = "  ".join(f"{'-' if fig[n] is None else round(fig[n], 2):>14}"
                                      for n in names)
                print(f"{i:>3}  {str(result.verdict):8}  {cells_txt}  "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
                if result.verdict not in ("passed", "known-failure"):
                    print(f"     {result.reason[:300]}")
        med = {n: statistics.median([r[n] for r in rows if r[n] is not None])
               if any(r[n] is not None for r in rows) else None for n in names}
        print("med  " + " " * 9 + "  ".join(
            f"{'-' if med[n] is None else round(med[n], 2):>14}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
