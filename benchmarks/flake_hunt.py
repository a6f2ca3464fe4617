#!/usr/bin/env python3
"""Run the test command's QEMU tests N times on a busy machine and count failures.

The README's test command must be green on every run, on a cold, busy
2-core machine.  This script is the proof: it runs ``pytest testcases``
(or a ``-k`` subset) N times in a row while a CPU hog keeps both cores busy,
reads each run's outcome from pytest's own JUnit XML report, and prints, per
test id, how many of the N runs it failed in, then a total.  It exits 1 when
any test failed (or errored) in any run, or when a run produced no report.

    python3 benchmarks/flake_hunt.py -n 5                      # all of testcases/, hog on
    python3 benchmarks/flake_hunt.py -n 2 -k "modes and release"
    python3 benchmarks/flake_hunt.py -n 3 --no-hog -- -x       # after --: more pytest args
    python3 benchmarks/flake_hunt.py -n 5 -- -m not_in_test_command   # the tests left out

Each run selects what the test command selects: pytest reads pyproject's
``addopts`` here too, whose ``-m 'not not_in_test_command'`` leaves out the
tests not yet reliable enough for it; a ``-m`` after ``--`` replaces that
expression (pytest keeps the last ``-m``), e.g. to hunt those tests alone.
A ``-k`` that selects only left-out tests runs nothing: "no test ran".

The hog is ``stress-ng --cpu 2`` when stress-ng is installed (scripts/setup.sh
installs it), else two busy Python processes (``--hog-procs`` changes the
count).  It runs in its own session, with a parent-death signal, and is
ended by the PID (process group) this script started: on a normal exit, on
an error, on Ctrl-C and on SIGTERM.  Nothing is ever killed by name.

Each run's JUnit XML, pytest output and the harness's cell results go to
``--out`` (default: a new folder under results/), with ``summary.json``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
#: A run that ends with no test executed, or collects none, is an error:
#: pytest's "no tests collected" (5) is never a green hunt.
PYTEST_NO_TESTS = 5


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop the runs, end the hog, report what ran."""

    #: The run under way when it came, as far as its report got.
    partial: "RunOutcome | None" = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when this script dies, even by SIGKILL.
    Own session, so a terminal's Ctrl-C reaches the hog only through us."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Hog:
    """CPU hog processes this script started; ended by their PIDs (process groups)."""

    kind: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, procs: int) -> "Hog":
        if shutil.which("stress-ng"):
            # stress-ng's stressors get their own parent-death signal from
            # stress-ng; the whole group is ended below anyway.
            argv = ["stress-ng", "--cpu", str(procs), "--quiet"]
            hog = cls(f"stress-ng --cpu {procs}")
            hog.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL,
                                              preexec_fn=_die_with_parent))
        else:
            hog = cls(f"{procs} busy Python processes")
            for _ in range(procs):
                hog.procs.append(subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent))
        return hog

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """SIGTERM each process group we started (leader PID = the group id),
        then SIGKILL whatever is left after 5 s."""
        for p in self.procs:
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p.pid, signal.SIGKILL)   # stragglers of the group, if any
            if p.poll() is None:
                p.wait()
        self.procs.clear()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class RunOutcome:
    index: int
    returncode: int
    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    #: test id -> "passed" | "failed" | "error" | "skipped"
    tests: dict[str, str]
    report: Path
    log: Path
    problem: str = ""

    @property
    def failed(self) -> list[str]:
        return sorted(t for t, o in self.tests.items() if o in ("failed", "error"))


def test_id(case: ET.Element) -> str:
    """pytest's node id from a JUnit ``testcase``: classname is the dotted path
    (``testcases.test_modes``), name the function with its parameters."""
    classname = case.get("classname", "")
    name = case.get("name", "")
    if not classname:
        # A collection error names the module's dotted path; an interrupted
        # session adds a nameless entry.
        return name.replace(".", "/") + ".py (collection)" if name else ""
    parts = classname.split(".")
    # A test class appears as the last dotted part starting with an upper case letter.
    cls = [p for p in parts if p[:1].isupper()]
    module = parts[:len(parts) - len(cls)]
    path = "/".join(module) + ".py" if module else ""
    return "::".join([path, *cls, name]) if path else name


def read_junit(path: Path) -> dict[str, str]:
    """test id -> outcome, from pytest's ``--junitxml`` report."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if "error" in kinds:
            outcome = "error"          # setup/teardown errors count as failures
        elif "failure" in kinds:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        tid = test_id(case)
        if not tid:
            continue
        # A test with a failing teardown appears twice: keep the worst.
        if outcomes.get(tid) not in ("failed", "error"):
            outcomes[tid] = outcome
    return outcomes


def run_once(index: int, out: Path, paths: Sequence[str], keyword: str | None,
             extra: Sequence[str], child: list[subprocess.Popen[bytes]]) -> RunOutcome:
    """One pytest run; its JUnit XML is the record of what passed."""
    report = out / f"run-{index}.xml"
    log = out / f"run-{index}.log"
    argv = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
            f"--junitxml={report}", "--mh-results", str(out / f"run-{index}-results")]
    if keyword:
        argv += ["-k", keyword]
    argv += list(extra)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        child.append(proc)      # so an interruption can end it, by its PID
        try:
            rc = proc.wait()
        except Interrupted as exc:
            signal.signal(signal.SIGINT, signal.SIG_IGN)    # let its teardown finish
            _stop_child(child, terminal_ctrl_c=str(exc) == "SIGINT")
            exc.partial = _outcome(index, proc.returncode, time.monotonic() - t0, load_before,
                                   report, log, "interrupted")
            raise
        child.remove(proc)
    return _outcome(index, rc, time.monotonic() - t0, load_before, report, log)


def _outcome(index: int, rc: int, seconds: float, load_before: tuple[float, float, float],
             report: Path, log: Path, problem: str = "") -> RunOutcome:
    """A run's outcome from its JUnit report (written by pytest also when
    interrupted)."""
    tests: dict[str, str] = {}
    if report.is_file():
        try:
            tests = read_junit(report)
        except ET.ParseError as exc:
            problem = problem or f"unreadable JUnit report: {exc}"
    else:
        problem = problem or f"no JUnit report (pytest exit {rc})"
    if not problem and (rc == PYTEST_NO_TESTS or not tests):
        problem = "no test ran"
    elif not problem and rc not in (0, 1):
        problem = f"pytest exit {rc} (interrupted or an internal error)"
    return RunOutcome(index, rc, seconds, load_before, os.getloadavg(), tests, report, log,
                      problem)


def _stop_child(child: list[subprocess.Popen[bytes]], terminal_ctrl_c: bool) -> None:
    """End the running pytest by its PID, as Ctrl-C would (it tears its QEMUs
    down).  A Ctrl-C at the terminal already reached it (same process group):
    it gets time to finish its teardown before a second SIGINT."""
    for proc in list(child):
        if not terminal_ctrl_c and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                proc.wait(30)
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
        proc.wait()


def table(runs: list[RunOutcome], show_all: bool) -> tuple[str, int, int]:
    """Per test id: failures out of the runs it ran in.  Returns (text, failing ids,
    failures)."""
    fails: Counter[str] = Counter()
    ran: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for run in runs:
        for tid, outcome in run.tests.items():
            if outcome == "skipped":
                skipped[tid] += 1
                continue
            ran[tid] += 1
            if outcome in ("failed", "error"):
                fails[tid] += 1
    ids = sorted(set(ran) | set(skipped), key=lambda t: (-fails[t], t))
    n = len(runs)
    lines = []
    for tid in ids:
        if not show_all and not fails[tid]:
            continue
        note = f"  (skipped in {skipped[tid]})" if skipped[tid] else ""
        lines.append(f"{fails[tid]:>3}/{n:<3} {tid}{note}")
    total_fail = sum(fails.values())
    total_ran = sum(ran.values())
    failing = sum(1 for t in ids if fails[t])
    never = sum(1 for t in ids if not ran[t])
    lines.append("")
    lines.append(f"total: {total_fail} failures in {total_ran} test runs "
                 f"({len(ids)} test ids x {n} runs; {failing} ids failed at least once"
                 + (f"; {never} ids skipped in every run" if never else "") + ")")
    return "\n".join(lines), failing, total_fail


#: How close each timed check came to its bound: (check, figure, bound) from
#: a cell's check figures.  Negative controls (expected to fail) are left out.
def _timed(check: dict) -> list[tuple[str, float, float]]:
    fig = check.get("figures") or {}
    if check.get("name") == "downtime":
        bound = fig["downtime_limit_ms"] + fig["tolerance_ms"]
        out = [("downtime QEMU", fig.get("qemu_downtime_judged_ms", fig["qemu_downtime_ms"]),
                bound)]
        if fig.get("guest_gap_ms") is not None:
            # What the check really compares with limit + tolerance: the gap
            # less its heartbeat resolution (a throttled guest's passes take
            # seconds, and a gap of 5.6 s against a 6.1 s bound is 4 ms).
            res = fig.get("heartbeat_interval_ms") or 0.0
            out.append(("downtime guest", fig["guest_gap_ms"] - res, fig["guest_bound_ms"] - res))
        return out
    if check.get("name") == "bandwidth":
        return [("bandwidth", fig["bytes_per_s"], fig["max_bandwidth"] * (1 + fig["tolerance"]))]
    return []


def _closest_approach(cell: dict) -> tuple[float, float] | None:
    """A control that must not converge: (lowest expected downtime QEMU
    reported, downtime-limit).  Only from the dirty sync after the first one
    with a measured dirty rate: until then QEMU reports the limit itself as
    its expectation (7.2 and 10.0 migration_update_counters set
    expected_downtime only once dirty_pages_rate is known, after a dirty sync
    ending a period of at least 1 s, and a sync or so later: samples of
    10.0's multifd zlib control still showed the limit after the rate).  A
    control held back by an injected fault (no switchover ack, another UUID)
    does not depend on timing: None."""
    if cell.get("inputs", {}).get("fault"):
        return None
    limit = (cell.get("inputs", {}).get("parameters", {}) or {}).get("downtime-limit", 300)
    active = [s for s in cell.get("figures", {}).get("samples", [])
              if s.get("status") == "active"]
    rated = next((s.get("syncs") or 0 for s in active if s.get("dirty_rate")), None)
    seen = [s["expected_downtime"] for s in active
            if rated is not None and (s.get("syncs") or 0) > rated and s.get("expected_downtime")]
    return (float(min(seen)), float(limit)) if seen else None


def _gap_parts(cell: dict) -> str:
    """Where a cell's guest gap went (harness.guest.workload's figure)."""
    parts = cell.get("figures", {}).get("guest_gap_parts") or {}
    names = (("last_source_beat_to_source_done_ms", "last source beat -> source done"),
             ("source_done_to_destination_ready_ms", "-> destination ready"),
             ("resumed_to_first_destination_beat_ms", "; resumed -> first destination beat"),
             ("destination_pass_interval_ms", "; destination pass"))
    return " ".join(f"{label} {parts[key]:.0f}" for key, label in names if key in parts)


def margins(runs: list[RunOutcome], out: Path, top: int = 12) -> str:
    """The timed checks that came closest to their bounds, over every run's
    cell results (the harness's results.json): a green hunt whose worst
    figure sits at 95% of its bound is luck, not a margin."""
    worst: dict[tuple[str, str], tuple[float, float, float]] = {}
    parts: dict[str, str] = {}
    holds: list[tuple[float, float, str]] = []
    for run in runs:
        for path in (out / f"run-{run.index}-results").glob("**/results.json"):
            try:
                cells = json.loads(path.read_text()).get("cells", [])
            except (OSError, ValueError):
                continue
            for cell in cells:
                if cell.get("verdict") != "passed":
                    # Failed cells are in the table above; the fault tests'
                    # cells (a destination run or reset on purpose) fail by
                    # design and their timings mean nothing.
                    continue
                for check in cell.get("checks", []):
                    if check.get("name") == "converged" and check.get("expected_to_fail"):
                        near = _closest_approach(cell)
                        if near is not None:
                            key = ("no convergence", cell["id"])
                            ratio = near[1] / near[0]
                            if key not in worst or ratio > worst[key][0]:
                                worst[key] = (ratio, near[0], near[1])
                    if check.get("expected_to_fail"):
                        continue
                    fig = check.get("figures") or {}
                    if check.get("name") == "downtime" and "harness_hold_host_ms" in fig:
                        holds.append((fig["harness_hold_ms"], fig["harness_hold_host_ms"],
                                      cell["id"]))
                    for what, got, bound in _timed(check):
                        key = (what, cell["id"])
                        ratio = got / bound if bound else 0.0
                        if key not in worst or ratio > worst[key][0]:
                            worst[key] = (ratio, got, bound)
                            if what == "downtime guest":
                                parts[cell["id"]] = _gap_parts(cell)
    if not worst:
        return ""
    rows = sorted(worst.items(), key=lambda kv: -kv[1][0])[:top]
    lines = [f"closest to their bounds (worst of {len(runs)} run(s), figure / bound):"]
    for (what, cell), (ratio, got, bound) in rows:
        if what == "no convergence":     # the limit over QEMU's closest expectation
            lines.append(f"  {ratio:5.2f}  {what:15s} limit {bound:.0f} / expected downtime "
                         f"{got:.0f} ms at the closest  {cell}")
            continue
        unit = " MiB/s" if what == "bandwidth" else " ms"
        scale = 2 ** 20 if what == "bandwidth" else 1
        lines.append(f"  {ratio:5.2f}  {what:15s} {got / scale:8.1f} / {bound / scale:7.1f}{unit}"
                     f"  {cell}")
        if what == "downtime guest" and parts.get(cell):
            lines.append(f"         (the gap less its resolution; {parts[cell]} ms)")
    if holds:
        # The pre-switchover hold is judged on QEMU's event timestamps; the
        # host's figure is its cross-check.
        qemu, host, cell = max(holds, key=lambda h: abs(h[0] - h[1]))
        lines.append(f"pre-switchover hold, QEMU's clock vs the host's over {len(holds)} cells: "
                     f"worst {qemu:.1f} vs {host:.1f} ms ({cell})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, extra = args_list[:cut], args_list[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5, help="runs (default 5)")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    hog = ap.add_mutually_exclusive_group()
    hog.add_argument("--hog", dest="hog", action="store_true", default=True,
                     help="keep the CPUs busy during the runs (default)")
    hog.add_argument("--no-hog", dest="hog", action="store_false", help="no CPU hog")
    ap.add_argument("--hog-procs", type=int, default=2,
                    help="CPU hog workers (default 2: one per core of the 2-core CI machine)")
    ap.add_argument("--paths", nargs="+", default=["testcases"],
                    help="what pytest runs (default: testcases, the QEMU tests)")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for reports and logs (default: results/flake-hunt-<time>)")
    ap.add_argument("--failed-only", dest="show_all", action="store_false",
                    help="list only the test ids that failed in some run")
    args = ap.parse_args(args_list)
    if args.n < 1:
        ap.error("-n must be at least 1")
    out = args.out or ROOT / "results" / time.strftime("flake-hunt-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    runs: list[RunOutcome] = []
    child: list[subprocess.Popen[bytes]] = []
    hogger: Hog | None = None
    interrupted = ""
    try:
        if args.hog:
            hogger = Hog.start(args.hog_procs)
            time.sleep(0.5)
            if not hogger.alive():
                raise SystemExit("flake_hunt: the CPU hog did not start")
            print(f"hog: {hogger.kind} (pids {', '.join(map(str, hogger.pids))})", flush=True)
        else:
            print("hog: none", flush=True)
        sel = f" -k {args.keyword!r}" if args.keyword else ""
        print(f"runs: {args.n} x pytest {' '.join(args.paths)}{sel}"
              f"{' ' + ' '.join(extra) if extra else ''}; reports in {out}", flush=True)
        for i in range(1, args.n + 1):
            run = run_once(i, out, args.paths, args.keyword, extra, child)
            runs.append(run)
            counts = Counter(run.tests.values())
            print(f"run {i}/{args.n}: {run.seconds:.0f} s, load {run.load_before[0]:.1f} -> "
                  f"{run.load_after[0]:.1f}, " + ", ".join(f"{v} {k}" for k, v in
                                                           sorted(counts.items()))
                  + (f"; {run.problem}" if run.problem else "")
                  + "".join(f"\n    FAILED {t}" for t in run.failed), flush=True)
    except Interrupted as exc:
        interrupted = str(exc)
        if exc.partial is not None:
            runs.append(exc.partial)
    finally:
        if hogger is not None:
            pids = ", ".join(map(str, hogger.pids))
            hogger.stop()
            print(f"hog ended (pids {pids})", flush=True)

    text, failing, total_fail = table(runs, args.show_all)
    print()
    print(f"failures out of {len(runs)} run(s)" + (" (interrupted by "
                                                    f"{interrupted})" if interrupted else "")
          + (", hog: " + hogger.kind if hogger else ", no hog") + ":")
    print(text)
    near = margins(runs, out)
    if near:
        print()
        print(near)
    problems = [f"run {r.index}: {r.problem} (log {r.log})" for r in runs if r.problem]
    for p in problems:
        print(p)
    (out / "summary.json").write_text(json.dumps({
        "runs": [{"index": r.index, "returncode": r.returncode, "seconds": round(r.seconds, 1),
                  "load_before": r.load_before, "load_after": r.load_after,
                  "failed": r.failed, "problem": r.problem,
                  "counts": dict(Counter(r.tests.values()))} for r in runs],
        "hog": hogger.kind if hogger else None, "keyword": args.keyword,
        "paths": args.paths, "extra": extra, "interrupted": interrupted or None,
        "failing_ids": failing, "failures": total_fail}, indent=1))
    if interrupted:
        return 130
    return 1 if total_fail or problems else 0


if __name__ == "__main__":
    sys.exit(main())
