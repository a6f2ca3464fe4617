#!/usr/bin/env python3
"""How the reports scale: a synthetic 2,000-cell run through report.html,
the history database and ``compare``.

A benchmark, not a test: it prints figures against the targets of the
reports issue (report.html under 3 s and under 10 MB, history insert under
1 s, compare of two 2,000-cell runs under 1 s).

The cells have the shape of real ones (every check with its figures, the
VMState coverage lists, the final ``query-migrate``, ``query-migrate``
samples: most migrations a few samples long, one in twenty a non-converging
one of 300-600 samples), about 25 KB each in results.json as today.  Of 2,000
cells 3% fail (half of them with RAM differences), 1% error, 2% are skipped
and 1% flaky; failed cells have kept log folders.  The second run changes 20
verdicts and 40 downtimes, so compare has something to find.

Usage::

    python3 benchmarks/report_scale.py               # 2,000 cells, 3 reps
    python3 benchmarks/report_scale.py --cells 500 --reps 5 --keep
    python3 benchmarks/report_scale.py --browser     # also time opening it in chromium
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.report.compare import compare, side_from_folder, side_from_history  # noqa: E402
from harness.report import files  # noqa: E402
from harness.report.files import write_results_json  # noqa: E402
from harness.report.history import History, run_record  # noqa: E402
from harness.report.html import write_report_html  # noqa: E402
from harness.results import CellResult, CheckResult, RunState  # noqa: E402

TARGETS = {"report": 3.0, "size_mb": 10.0, "history": 1.0, "compare": 1.0}
DEVICES = [{"path": f"/machine/unattached/device[{i}]", "type": f"dev-{i}",
            "section": f"section-{i}"} for i in range(35)]


def samples(rng: random.Random, n: int, long: bool) -> list[dict[str, Any]]:
    out, t, sent, syncs = [], 0.3 + rng.random() * 0.2, 0, 1
    for i in range(n):
        status = "setup" if i == 0 else "active"
        sent += 0 if i == 0 else rng.randint(10, 120) << 20
        if long and i % 25 == 0:
            syncs += 1
        out.append({"t": round(t, 3), "status": status, "transferred": sent,
                    "remaining": max(0, (256 << 20) - sent % (256 << 20)),
                    "normal_bytes": sent, "dirty_rate": rng.randint(0, 60000),
                    "syncs": syncs, "mbps": rng.random() * 9000,
                    "expected_downtime": rng.randint(100, 900),
                    **({"throttle": min(99, i // 10)} if long else {})})
        t += 0.1
    return out


def make_cell(i: int, rng: random.Random, logs: Path) -> CellResult:
    target = rng.choice(["x86_64-q35-tcg", "x86_64-pc-tcg", "x86_64-q35-kvm", "aarch64-virt-tcg"])
    transport = rng.choice(["unix", "tcp", "exec", "file", "fd"])
    caps = rng.choice([{}, {"multifd": True}, {"xbzrle": True}, {"postcopy-ram": True},
                       {"auto-converge": True}, {"return-path": True}])
    cid = f"{target}-{transport}-{'-'.join(caps) or 'precopy'}-{i:04d}"
    roll = rng.random()
    verdict = ("failed" if roll < 0.03 else "error" if roll < 0.04 else "skipped" if roll < 0.06
               else "flaky" if roll < 0.07 else "passed")
    downtime = round(rng.uniform(20, 250))
    ram_bad = verdict == "failed" and rng.random() < 0.5
    long = rng.random() < 0.05
    n = rng.randint(300, 600) if long else rng.randint(1, 8)
    checks = [
        CheckResult("converged", not long, "migration completed",
                    {"source_states": ["setup", "active", "completed"]}),
        CheckResult("ram", not ram_bad, "3 page(s) differ, first at guest-physical 0x345000"
                    if ram_bad else "256 MiB identical",
                    {"bytes_compared": 256 << 20, "differing_pages": 3 if ram_bad else 0,
                     "first_differing_gpas": ["0x345000", "0x346000", "0x900000"] if ram_bad
                     else [], "compare_seconds": 0.08, "compare_mib_per_s": 3200}),
        CheckResult("guest", True, "25600 pages consistent", {"pages": 25600, "value_high": 42,
                                                              "value_low": 41}),
        CheckResult("cpu-state", True, "65 registers identical on 1 vCPU(s)",
                    {"vcpus": 1, "registers_compared": 65, "differing": 0, "differences": []}),
        CheckResult("coverage", True, "32 of 35 devices have VMState, 3 need none",
                    {"covered": DEVICES[:32], "not_covered": [],
                     "not_covered_fine": DEVICES[32:], "truncated": False}),
        CheckResult("liveness", True, "3 heartbeats", {"heartbeats": 3, "restarts": 0}),
        CheckResult("downtime", verdict != "failed" or ram_bad,
                    f"{downtime} ms <= 300 + 250 ms", {
                        "qemu_downtime_ms": downtime, "downtime_limit_ms": 300.0,
                        "tolerance_ms": 250.0, "tolerance_reason": "downtime-limit is QEMU's "
                        "convergence target for the estimated final copy, not an enforced "
                        "bound; device state and switchover overheads come on top",
                        "guest_gap_ms": downtime + 4.5, "heartbeat_interval_ms": 6.4,
                        "guest_bound_ms": 556.4}),
    ]
    logdir = None
    if verdict in ("failed", "error"):
        folder = logs / "cells" / cid
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("src.stderr", "dst.stderr", "src.serial.log", "dst.serial.log",
                     "src.qmp.jsonl", "dst.qmp.jsonl", "harness.log"):
            (folder / name).write_text("log\n")
        logdir = str(folder)
    qm = {"status": "completed", "total-time": rng.randint(100, 3000), "downtime": downtime,
          "ram": {"total": 268967936, "transferred": rng.randint(100, 900) << 20,
                  "remaining": 0, "dirty-sync-count": 3, "mbps": 8000.5}}
    figures = {
        "machine_type": "pc-q35-7.2", "warmup_passes": 4, "uri": "unix:/dev/shm/x/m.sock",
        "source_states": ["setup", "active", "completed"], "samples": samples(rng, n, long),
        "destination_states": ["setup", "active", "completed"],
        "runstates": {"source": "postmigrate", "destination": "paused"},
        "status": "completed", "total_time_ms": qm["total-time"], "downtime_ms": downtime,
        "setup_time_ms": 1, "expected_downtime_ms": None,
        "ram_transferred": qm["ram"]["transferred"], "ram_total": 268967936,
        "dirty_sync_count": 3, "mbps": 8000.5, "query_migrate": qm,
        "coverage": {"devices": DEVICES, "covered": DEVICES[:32]},
    }
    build = {"name": "system", "binary": "/usr/bin/qemu-system-x86_64", "version": "7.2.22",
             "package": "Debian 1:7.2+dfsg-7+deb12u18+b3", "missing": None}
    return CellResult(
        id=cid, verdict=verdict,
        reason="" if verdict == "passed" else f"{verdict}: synthetic reason for {cid}",
        inputs={"target": {"name": target, "arch": "x86_64", "machine": "q35", "accel": "tcg",
                           "memory": 268435456, "smp": 1},
                "src_build": "system", "dst_build": "system", "transport": transport,
                "capabilities": {"events": True, **caps},
                "parameters": {"max-bandwidth": 10737418240}, "timeout": 60.0,
                "downtime_tolerance_ms": 250.0, "expect_fail": [], "mode": "precopy",
                "fault": None, "tier": "nightly", "origin": f"matrix.yaml:{100 + i % 300}",
                "seed": rng.randint(0, 1 << 31)},
        checks=[] if verdict == "skipped" else checks,
        figures={} if verdict == "skipped" else figures,
        phases={"launch": 0.6, "configure": 0.01, "warmup": 0.05, "migrate": 0.1,
                "verify": 0.2, "liveness": 0.02, "teardown": 0.03},
        builds={"source": build, "destination": build}, logdir=logdir,
        duration=round(rng.uniform(0.5, 5), 3))


def second_run(cells: list[CellResult], rng: random.Random) -> list[CellResult]:
    """The next night: 20 verdicts and 40 downtimes changed."""
    out = [CellResult.from_json(c.to_json()) for c in cells]
    for c in rng.sample(out, 20):
        c.verdict = "failed" if c.verdict == "passed" else "passed"
    for c in rng.sample(out, 40):
        if "downtime_ms" in c.figures:
            c.figures["downtime_ms"] = c.figures["downtime_ms"] * 3 + 200
    return out


def timed(fn: Callable[[], Any], reps: int) -> tuple[list[tuple[float, float]], Any]:
    """(wall, CPU) seconds of each rep: on a shared machine the wall time
    includes waiting for a core, the CPU time is this process's own work."""
    times, value = [], None
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return times, value


def show(label: str, times: list[tuple[float, float]], target: float | None = None) -> None:
    wall = [w for w, _ in times]
    cpu = statistics.median(c for _, c in times)
    med = statistics.median(wall)
    verdict = "" if target is None else ("  OK" if med < target else "  OVER TARGET")
    print(f"{label:<50} wall min {min(wall):6.3f} median {med:6.3f} max {max(wall):6.3f} s, "
          f"CPU {cpu:6.3f} s" + (f"  (target < {target:g} s){verdict}" if target else ""))


def browser_load(page_path: Path, failing_id: str) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser: playwright not installed, skipped")
        return
    if not Path("/usr/bin/chromium").exists():
        print("browser: /usr/bin/chromium not installed, skipped")
        return
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = b.new_page()
        t = time.perf_counter()
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready]", timeout=60000)
        loaded = time.perf_counter() - t
        t = time.perf_counter()
        page.evaluate(f"location.hash = '#c-{failing_id}'")
        page.wait_for_selector(f"[id='c-{failing_id}'] .main-svg", timeout=30000)
        opened = time.perf_counter() - t
        b.close()
    print(f"browser: page ready in {loaded:.2f} s, a failing cell's section with its plot "
          f"drawn in {opened:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--browser", action="store_true", help="time opening it in chromium")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="mh-report-scale-"))
    try:
        a_dir, b_dir = tmp / "a", tmp / "b"
        print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        t = time.perf_counter()
        cells_a = [make_cell(i, rng, a_dir) for i in range(args.cells)]
        cells_b = second_run(cells_a, rng)
        print(f"{args.cells} synthetic cells made in {time.perf_counter() - t:.1f} s "
              f"({sum(1 for c in cells_a if len(c.figures.get('samples', [])) > 100)} with "
              f"300-600 samples); {args.reps} reps each")
        st_a = RunState(results_dir=a_dir, total=len(cells_a), results=cells_a,
                        meta={"tier": "nightly", "seed": 0, "run_id": "bench-a"})
        st_b = RunState(results_dir=b_dir, total=len(cells_b), results=cells_b,
                        meta={"tier": "nightly", "seed": 0, "run_id": "bench-b"})
        def cold() -> None:
            files._cell_text.clear()
            write_results_json(st_a)
        times, _ = timed(cold, 1)
        size = (a_dir / "results.json").stat().st_size
        show(f"results.json + summary.json, every cell ({size / 1e6:.1f} MB)", times)

        def after_one_more_cell() -> None:   # what the runner does after each cell
            st_a.results[-1] = CellResult.from_json(st_a.results[-1].to_json())
            write_results_json(st_a)
        times, _ = timed(after_one_more_cell, args.reps)
        show("results.json + summary.json rewritten after a cell", times)
        write_results_json(st_b)

        times, page = timed(lambda: write_report_html(st_a), args.reps)
        show("report.html generated", times, TARGETS["report"])
        mb = page.stat().st_size / 1e6
        print(f"{'report.html size':<52} {mb:.2f} MB (target < {TARGETS['size_mb']:g} MB)"
              + ("  OK" if mb < TARGETS["size_mb"] else "  OVER TARGET"))

        db = tmp / "history.sqlite"
        with History(db) as h:
            for n in range(5):   # a history with earlier nights in it
                h.record(run_record(RunState(results_dir=a_dir, total=len(cells_a),
                                             results=cells_a, meta={"tier": "nightly",
                                                                    "run_id": f"old-{n}"})))
            count = iter(range(1000))
            times, _ = timed(lambda: h.record(run_record(RunState(
                results_dir=b_dir, total=len(cells_b), results=cells_b,
                meta={"tier": "nightly", "run_id": f"bench-{next(count)}"}))), args.reps)
            show("history insert of one run (SQLite, WAL)", times, TARGETS["history"])
            times, _ = timed(lambda: h.trend("nightly", last=10), args.reps)
            show("history: 10-run trend of every cell", times)
            ids = [r.id for r in h.runs("nightly", limit=2)]

        times, result = timed(lambda: compare(side_from_folder(a_dir), side_from_folder(b_dir)),
                              args.reps)
        show("compare two results folders (summary.json)", times, TARGETS["compare"])
        print(f"{'':<52} found {len(result.new_failures)} new failures, {len(result.fixes)} "
              f"fixes, {len(result.regressions)} regressions")

        def from_history() -> Any:
            with History(db, create=False) as h:
                return compare(side_from_history(h, ids[1]), side_from_history(h, ids[0]))
        times, _ = timed(from_history, args.reps)
        show("compare two history runs", times, TARGETS["compare"])

        def from_results_json() -> Any:
            for d in (a_dir, b_dir):
                (d / "summary.json").rename(d / "summary.json.off")
            try:
                return compare(side_from_folder(a_dir), side_from_folder(b_dir))
            finally:
                for d in (a_dir, b_dir):
                    (d / "summary.json.off").rename(d / "summary.json")
        times, _ = timed(from_results_json, 1)
        show("compare two folders without summary.json", times)

        times, out = timed(lambda: subprocess.run(
            [sys.executable, "-m", "harness", "compare", str(a_dir), str(b_dir), "--no-history"],
            cwd=ROOT, capture_output=True, text=True), args.reps)
        show("`mharness compare A B` command (wall: Python start included)", times)
        if args.browser:
            failing = next(c.id for c in cells_a if c.verdict == "failed"
                           and len(c.figures.get("samples", [])) > 1)
            browser_load(page, failing)
        print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if args.keep:
            print(f"kept: {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
