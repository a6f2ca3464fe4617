"""The ``mharness`` command.

Exit status contract (CI scripts rely on it): 0 when every selected cell passed,
was a known failure (``--strict``: 1) or was skipped with a reason beside cells
that ran, 1 when any cell failed, 2 for bad input (matrix, options, a build
lacking what the matrix asks for), 5 when no selected cell ran (all skipped, or
none selected), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from harness import packaged
from harness.errors import HarnessError
from harness.logs import console_logging
from harness.qemu.process import Interrupted, install_signal_handlers

if TYPE_CHECKING:
    from harness.cell import Cell

# The matrix, build discovery and the reports are imported by the commands
# that use them, not here: every command (and ``--help``) pays for what this
# module imports, and the matrix alone pulls in YAML, the rule book and numpy
# (about 0.3 s), which compare, history, merge and init never use.

EXIT_BAD_INPUT = 2


MATRIX_HELP = "matrix file (default: ./matrix.yaml, else the one shipped with the package)"


def _matrix_file(args: argparse.Namespace) -> Path:
    """``--matrix``, else ``./matrix.yaml``, else the packaged matrix: then the
    command's first line says so, since the user named no file.  ``args.matrix``
    becomes the file used (results.json and the run's summary name it)."""
    path, default = packaged.find_matrix(args.matrix)
    if default:
        print(f"using the packaged matrix {path} (no --matrix and no ./matrix.yaml; "
              f"'mharness init' copies it here to edit)", file=sys.stderr)
    args.matrix = str(path)
    return path


def _add_history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", default=None, metavar="PATH|URL",
                   help="history database: a SQLite file or a postgresql:// URL (default: "
                        "$MHARNESS_HISTORY, else ~/.local/share/mharness/history.sqlite)")
    p.add_argument("--no-history", action="store_true",
                   help="do not record this run in (or read) the history database")


def _add_matrix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--matrix", default=None, help=MATRIX_HELP)
    p.add_argument("--tier", default=None, help="tier to run (default: smoke)")
    p.add_argument("-k", dest="select", default=None, metavar="EXPR",
                   help="select cells by id, as pytest -k does (e.g. 'unix and not kvm')")
    p.add_argument("--qemu", default=None, metavar="PATH",
                   help="use this QEMU binary as the build for both sides of every cell")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed of the covering arrays (default: 0; the same seed gives the "
                        "same cells everywhere)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="only shard K of N: every N-th cell of the tier from the K-th "
                        "(shards are disjoint and together make the tier)")


def _plan(args: argparse.Namespace) -> tuple[Any, list[Cell]]:
    """The tier's plan and its cells after --qemu, -k and --shard."""
    from harness.matrix import load_matrix_on, plan_tier, select
    from harness.qemu.build import discover
    from harness.run.runner import parse_shard, shard

    matrix = load_matrix_on(_matrix_file(args), args.qemu)
    plan = plan_tier(matrix, args.tier or "smoke", args.seed or 0, resolve=discover)
    cells = list(plan.cells)
    if getattr(args, "place_on", None):
        cells = _place_on(matrix, cells, args.place_on)
    if args.select:
        cells = select(cells, args.select)
    if args.shard:
        try:
            k, n = parse_shard(args.shard)
        except ValueError as exc:
            raise HarnessError(str(exc)) from None
        cells = shard(cells, k, n)
    return plan, cells


def _place_on(matrix: Any, cells: list[Cell], names: str) -> list[Cell]:
    """``run --hosts a,b``: each cell's source and destination on the named
    inventory hosts, round-robin over their ordered pairs (a cell that names
    its hosts keeps them): harness.matrix.hosts.round_robin."""
    from harness.matrix.hosts import round_robin
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in matrix.hosts]
    if unknown or not wanted:
        raise HarnessError(f"--hosts {names}: unknown host(s) {', '.join(unknown) or '(none)'} "
                           f"(the inventory has: {', '.join(matrix.hosts)})")
    return round_robin(cells, [matrix.hosts[n] for n in dict.fromkeys(wanted)])


def _cells(args: argparse.Namespace) -> list[Cell]:
    return _plan(args)[1]


def _validate_against_builds(cells: list[Cell]) -> None:
    """Bad input is refused before anything runs: a capability or parameter the
    cell's build does not have is an error naming the build and what it offers.
    (Missing builds and unusable accelerators are per-cell skips instead.)"""
    from harness.migration.flow import preflight
    from harness.qemu.build import discover

    errors = []
    for cell in cells:
        try:
            preflight(cell, discover(cell.src_build), discover(cell.dst_build))
        except HarnessError as exc:
            errors.append(str(exc))
    if errors:
        raise HarnessError("\n".join(dict.fromkeys(errors)))


def _jobs(text: str) -> int:
    if text == "auto":
        from harness.run.runner import Budget

        return max(1, int(Budget.of_this_machine().cpus))
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return jobs


def cmd_run(args: argparse.Namespace) -> int:
    from harness.report.artefacts import FinishListener, check_history
    from harness.report.live import progress_listener
    from harness.run.runner import default_results_dir, failed_in, mark_flaky, run_cells

    previous: dict[str, Any] = {}
    rerun_of = Path(args.rerun_failed) if args.rerun_failed else None
    if rerun_of is not None:
        try:
            failed, meta = failed_in(rerun_of)
        except (OSError, ValueError, KeyError) as exc:
            raise HarnessError(f"--rerun-failed {rerun_of}: no readable results.json "
                               f"({exc})") from None
        previous = {p.id: p for p in failed}
        # The earlier run's tier and seed, unless given again.
        if args.tier is None:
            args.tier = meta.get("tier")
        if args.seed is None:
            args.seed = meta.get("seed")
    cells = _cells(args)
    if rerun_of is not None:
        ids = {c.id for c in cells}
        gone = [i for i in previous if i not in ids]
        if gone:
            raise HarnessError(f"--rerun-failed {rerun_of}: cells not in tier "
                               f"'{args.tier or 'smoke'}' (seed {args.seed or 0}): "
                               f"{', '.join(gone)}")
        cells = [c for c in cells if c.id in previous]
    _validate_against_builds(cells)
    history = _history_location(args)
    check_history(history)
    results_dir = Path(args.results) if args.results else default_results_dir()
    tier = args.tier or "smoke"
    print(f"{len(cells)} cells from {args.matrix} tier '{tier}'"
          + (f" seed {args.seed}" if args.seed else "")
          + (f" matching -k '{args.select}'" if args.select else "")
          + (f" shard {args.shard}" if args.shard else "")
          + (f", failed in {rerun_of}" if rerun_of else "")
          + (f", {args.jobs} at a time" if args.jobs > 1 else ""), file=sys.stderr)
    meta = {"matrix": args.matrix, "tier": tier, "seed": args.seed or 0,
            "select": args.select, "shard": args.shard, "jobs": args.jobs,
            "rerun_of": str(rerun_of) if rerun_of else None,
            "run_id": uuid.uuid4().hex, "entry": "run"}
    finish = None
    if rerun_of is not None:
        finish = lambda r: mark_flaky(r, previous[r.id], rerun_of)  # noqa: E731
    state = None
    progress, finisher = progress_listener(jobs=args.jobs), FinishListener(history)

    def listener(event: str, st: Any) -> None:
        progress(event, st)
        finisher(event, st)
    try:
        state = run_cells(cells, results_dir, keep_logs=args.keep_logs, listener=listener,
                          jobs=args.jobs, meta=meta, finish=finish)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({exc.__class__.__name__}): QEMU processes ended, partial results "
              f"in {results_dir}", file=sys.stderr)
        _finished(finisher.finished)
        return 130
    status = _report(state, results_dir, strict=args.strict)
    problems = _finished(finisher.finished)
    return status or problems


def _history_location(args: argparse.Namespace) -> str | None:
    """--history PATH|URL, else MHARNESS_HISTORY, else the per-user default;
    None with --no-history."""
    from harness.report.history import default_location

    if getattr(args, "no_history", False):
        return None
    return args.history or default_location()


def _finished(fin: Any) -> int:
    """Say where report.html and the history row went; 2 if either failed."""
    if fin is None:
        return 0
    where = []
    if fin.report is not None:
        where.append(f"report: {fin.report}")
    if fin.history_run is not None:
        where.append(f"history: run #{fin.history_run} in {fin.history}")
    if where:
        print("  ".join(where))
    for err in fin.errors:
        print(f"mharness: error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT if fin.errors else 0


def _open_history(args: argparse.Namespace) -> Any:
    from harness.report.history import History

    location = _history_location(args)
    if location is None:
        raise HarnessError("--no-history: no history to read")
    return History(location, create=False)


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs of a tier (folders or history run ids; default: the last two
    in history): exit 1 on a new failure or a figure regression."""
    from harness.report import compare as cmp

    if len(args.runs) > 2:
        raise HarnessError("compare takes at most two runs (A B)")
    history = None
    needs_history = len(args.runs) < 2 or any(
        not Path(r).exists() and cmp.run_id_of(r) is not None for r in args.runs)
    if needs_history:
        history = _open_history(args)
    try:
        if not args.runs:
            a, b = cmp.last_two(history, args.tier)
        elif len(args.runs) == 1:
            b = cmp.resolve(args.runs[0], history)
            a = cmp.previous_run(history, b)
        else:
            a, b = (cmp.resolve(r, history) for r in args.runs)
        floors = dict(args.floor)
        figures = tuple(cmp.Figure(f.key, f.label, f.unit, floors.get(f.key, f.floor), f.scale)
                        for f in cmp.FIGURES)
        result = cmp.compare(a, b, args.threshold / 100, figures)
    finally:
        if history is not None:
            history.close()
    print(json.dumps(result.to_json(), indent=2) if args.json else result.text())
    return result.exit_status


def _floor(text: str) -> tuple[str, float]:
    from harness.report.compare import FIGURES

    name, _, value = text.partition("=")
    keys = {f.label.replace(" ", "-"): f.key for f in FIGURES}
    if name not in keys:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(keys)}=VALUE")
    try:
        return keys[name], float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a number") from None


def cmd_history(args: argparse.Namespace) -> int:
    """Each cell's verdict and downtime over the last N runs of a tier."""
    from harness.report.console import history_table

    with _open_history(args) as db:
        tier = args.tier
        if tier is None:
            newest = db.runs(limit=1)
            if not newest:
                print(f"history {db.where}: no runs yet")
                return 0
            tier = newest[0].tier
        # Interrupted runs too: they are part of the story of a cell.
        runs, by_cell = db.trend(tier, last=args.n, complete=False)
    ids = list(by_cell)
    if args.select:
        from harness.matrix import select   # only here: the matrix package is heavy

        ids = [c.id for c in select([_Named(i) for i in ids], args.select)]  # type: ignore[list-item]
    if not runs:
        print(f"no runs of tier {tier!r} in the history")
        return 0
    print(history_table(runs, by_cell, ids))
    return 0


class _Named:
    """A cell id where ``select`` expects a cell (it reads ``.id`` only)."""

    def __init__(self, id: str) -> None:
        self.id = id


def _report(state: Any, results_dir: Path, strict: bool = False) -> int:
    from harness.report.console import summary, table
    from harness.report.porter import porter_summary
    from harness.run.runner import exit_status, nothing_ran

    print()
    print(table(state.results))
    failed = [r for r in state.results
              if r.verdict in ("failed", "error", "flaky", "known-failure")]
    for r in failed:
        print(f"\n{r.id}: {r.verdict}: {r.reason}" + (f"\n  logs: {r.logdir}" if r.logdir else ""))
    noted = [r for r in state.results if getattr(r, "notes", None)]
    if noted:
        print()
    for r in noted:
        print(f"note: {r.id}: " + "; ".join(r.notes))
    porter = porter_summary(state.results)
    if porter:
        print(f"\n{porter}")
    print(f"\n{summary(state)}")
    print(f"results: {results_dir / 'results.json'}  junit: {results_dir / 'junit.xml'}")
    status = exit_status(state, strict=strict)
    why = nothing_ran(state) if not state.interrupted else None
    if why:
        print(f"mharness: nothing ran: {why} (exit {status})", file=sys.stderr)
    elif strict and status and any(r.verdict == "known-failure" for r in state.results) \
            and all(r.verdict != "failed" and r.verdict != "error" for r in state.results):
        print("mharness: --strict: known failures fail the run (exit 1)", file=sys.stderr)
    return status


def cmd_merge(args: argparse.Namespace) -> int:
    """Combine results folders (e.g. the shards of a tier) into one report."""
    from harness.run.runner import merge_results

    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not (d / "results.json").is_file():
            raise HarnessError(f"{d}: no results.json")
    try:
        state = merge_results(dirs, Path(args.results))
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    print(f"merged {len(dirs)} results folders: {len(state.results)} cells", file=sys.stderr)
    from harness.report.html import write_report_html
    write_report_html(state)
    return _report(state, Path(args.results))


def cmd_list(args: argparse.Namespace) -> int:
    from harness.matrix.plan import dimensions

    plan, cells = _plan(args)
    if args.json:
        print(json.dumps({
            "tier": plan.tier, "seed": plan.seed, "count": len(cells),
            "cells": [{"id": c.id, "dimensions": dimensions(c), **c.inputs()} for c in cells],
            "coverage": [r.to_json() for r in plan.coverings],
            "exclusions": [x.to_json() for x in plan.exclusions],
            "filtered_out": plan.filtered_out,
        }, indent=2, default=str))
        return 0
    for c in cells:
        if c.scenario:   # a failure path: its scenario sets transports and capabilities
            print(f"{c.id}  [scenario {c.scenario} on {c.src_build.name}]")
            continue
        caps = ",".join(k for k, v in c.capabilities if v) or "-"
        params = ",".join(f"{k}={v}" for k, v in c.parameters) or "-"
        print(f"{c.id}  [{c.src_build.name}->{c.dst_build.name} {c.target.machine} "
              f"{c.target.accel} {c.transport} caps={caps} params={params}"
              + (f" repeat={c.repeat}" if c.repeat > 1 else "")
              + (f" known-issues={','.join(k.id for k in c.known_issues)}"
                 if c.known_issues else "") + "]")
    if plan.coverings:
        print()
        for r in plan.coverings:
            print(f"coverage: {r.describe()}")
            for m in r.coverage.missing:
                print(f"  not covered: {m}")
    if plan.exclusions:
        print(f"\nexcluded ({len(plan.exclusions)}):")
        for x in plan.exclusions:
            print(f"  {x.describe()}")
    if plan.filtered_out:
        print(f"\nfilter removed {plan.filtered_out} cells")
    print(f"{len(cells)} cells")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Describe every build the matrix names (or --qemu), and what is missing."""
    from harness.cell import BuildSpec
    from harness.matrix import load_matrix
    from harness.qemu import hugeram
    from harness.qemu.build import discover, kvm_host_problem
    from harness.run import rundir

    if args.hosts is not None:
        return _doctor_hosts(args)
    if args.qemu:
        specs = [BuildSpec(name=args.qemu, binary=args.qemu)]
    else:
        specs = list(load_matrix(_matrix_file(args)).build_specs())
    problems = 0
    reports = []
    kvm = kvm_host_problem()
    for spec in specs:
        build = discover(spec)
        reports.append(build.summary())
        if args.json:
            continue
        print(f"build '{spec.name}': {spec.binary}")
        if build.missing:
            problems += spec.required
            print(f"  MISSING: {build.missing}" + ("  (required)" if spec.required else
                                                     "  (its cells will be skipped)"))
            continue
        print(f"  version {build.version_text} ({build.package or 'no package string'}), "
              f"target {build.arch}")
        for accel, problem in build.accel_problems.items():
            print(f"  accel {accel}: {'usable' if problem is None else 'NOT usable: ' + problem}")
        machines = sorted(m.name for m in build.machines.values() if not m.deprecated)
        print(f"  machines ({len(machines)}): {', '.join(machines)}")
        print(f"  migration capabilities ({len(build.capabilities)}): {', '.join(build.capabilities)}")
        print(f"  migration parameters ({len(build.parameters)}): {', '.join(sorted(build.parameters))}")
    ram_files = hugeram.describe(rundir.runtime_base())
    if args.json:
        print(json.dumps({"kvm_host": kvm or "usable", "ram_files": ram_files,
                          "builds": reports}, indent=2, default=str))
    else:
        print(f"host KVM: {kvm or '/dev/kvm accessible'}")
        print(ram_files)
    return 1 if problems else 0


def _doctor_hosts(args: argparse.Namespace) -> int:
    """``doctor --hosts [NAMES]``: each inventory host reachable, its key known,
    the matrix's builds there, KVM, free memory and clock offset (harness.hosts.doctor).
    Exit 1 when a host is unusable."""
    from harness.cell import BuildSpec
    from harness.hosts.doctor import check_hosts, format_table, select_hosts
    from harness.matrix import load_matrix

    matrix = load_matrix(_matrix_file(args))
    try:
        specs = select_hosts(matrix.hosts, args.hosts)
    except KeyError as exc:
        raise HarnessError(f"--hosts: {exc.args[0]}") from None
    builds = ([BuildSpec(name=args.qemu, binary=args.qemu, required=True)] if args.qemu
              else matrix.build_specs())
    # a cell's source and destination may share a host: twice the largest guest
    need = 2 * max((t.memory for t in matrix.targets.values()), default=0)
    reports = check_hosts(specs, builds, min_memory=need)
    if args.json:
        print(json.dumps({"hosts": [r.as_dict() for r in reports],
                          "usable": all(r.usable for r in reports)}, indent=2))
    else:
        print(format_table(reports))
    return 0 if all(r.usable for r in reports) else 1


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe every build (or --qemu) against the rule oracle.

    Exit 1 on any disagreement with the contract that no known deviation
    explains; known deviations and an unmodelled QEMU version's differences
    are reported, not failed on."""
    from harness.cell import BuildSpec
    from harness.matrix import load_matrix
    from harness.qemu.build import discover
    from harness.rules.prober import conformance_table, probe_build, summary_text

    if args.qemu:
        if not shutil.which(args.qemu):
            raise HarnessError(f"--qemu {args.qemu}: no such executable")
        specs = [BuildSpec(name=args.qemu, binary=shutil.which(args.qemu) or args.qemu)]
        try:  # target profiles tell which machine a build of that arch starts with
            targets = list(load_matrix(_matrix_file(args)).targets.values())
        except HarnessError:
            targets = []
    else:
        matrix = load_matrix(_matrix_file(args))
        specs = list(matrix.build_specs())
        targets = list(matrix.targets.values())
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    probes, builds, reports = [], [], []
    for spec in specs:
        build = discover(spec)
        if build.missing:
            print(f"build '{spec.name}': skipped: {build.missing}", file=sys.stderr)
            builds.append({"build": spec.name, "skipped": build.missing})
            continue
        print(f"build '{spec.name}' {build.version_text}: probing ...", file=sys.stderr)
        report = probe_build(build, results_dir / "probe-logs" / _safe(spec.name), targets)
        reports.append(report)
        builds.append(report.to_json())
        probes.extend(report.results)
        print(f"  {len(report.results)} probes in {report.seconds:.1f} s "
              f"(source machine {report.machine}, accel {report.accel})", file=sys.stderr)
        for line in report.summary_lines():
            print(f"  {line}", file=sys.stderr)
    (results_dir / "probe.json").write_text(json.dumps(
        {"builds": builds, "probes": [r.to_json() for r in probes]}, indent=1, default=str))
    table = conformance_table(probes)
    summary = summary_text(reports)
    (results_dir / "probe-table.txt").write_text(table + "\n\n" + summary + "\n")
    bad = [r for r in probes if not r.ok]
    for r in bad[:50]:
        print(r.describe())
    deviations = sum(r.verdict == "deviation" for r in probes)
    print(f"{len(probes)} probes, {len(bad)} disagree with the oracle, {deviations} reproduce "
          f"a known deviation; results: {results_dir / 'probe.json'}, "
          f"table: {results_dir / 'probe-table.txt'}")
    return 0 if all(rep.ok for rep in reports) else 1


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def cmd_images(args: argparse.Namespace) -> int:
    from harness.guest.images import build_image

    path = build_image(args.name)
    print(path)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write the packaged matrix to ./matrix.yaml, the file to edit for this machine."""
    from harness.fileio import write_atomic

    dest = Path(packaged.MATRIX_NAME)
    if dest.exists() and not args.force:
        raise HarnessError(f"{dest} exists: not overwritten (--force replaces it)")
    write_atomic(dest, packaged.default_matrix().read_bytes())
    umask = os.umask(0)
    os.umask(umask)
    dest.chmod(0o666 & ~umask)  # a file for the user to edit, not a private temp file
    print(f"wrote {dest}: a copy of the packaged matrix; edit it, then 'mharness run' uses it")
    return 0


class _VersionAction(argparse.Action):
    """``--version``: the package version and the QEMU builds found, then exit
    (like argparse's own version action, which prints a fixed string)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from harness.about import version_report

        print(version_report(*packaged.find_matrix(None)))
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mharness", description="QEMU live-migration test harness")
    p.add_argument("--version", action=_VersionAction,
                   help="print the package version and the QEMU builds found, and exit")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the cells of a tier")
    _add_matrix_args(run)
    run.add_argument("--results", default=None, metavar="DIR",
                     help="results folder (default: a new timestamped folder under results/)")
    run.add_argument("--keep-logs", action="store_true", help="keep logs of passed cells too")
    run.add_argument("-j", "--jobs", type=_jobs, default=1, metavar="N",
                     help="run up to N cells at once within this machine's cores and memory "
                          "('auto': one per core; default 1)")
    run.add_argument("--rerun-failed", default=None, metavar="RESULTS_DIR",
                     help="rerun only the cells that failed in that earlier run (its tier and "
                          "seed unless given); one that passes now is reported flaky")
    run.add_argument("--strict", action="store_true",
                     help="known failures (a build's known issues, matrix.yaml known-issues:) "
                          "fail the run: exit 1 instead of 0")
    run.add_argument("--hosts", dest="place_on", default=None, metavar="A,B",
                     help="run each cell's source and destination on these inventory hosts "
                          "(hosts: in the matrix), round-robin over their ordered pairs (a->b, "
                          "b->a); cells that name src-host/dst-host keep theirs")
    _add_history_args(run)
    run.set_defaults(func=cmd_run)

    cmp = sub.add_parser("compare", help="compare two runs of a tier (folders or history run "
                         "ids; default: the last two in history); exit 1 on a new failure or "
                         "regression")
    cmp.add_argument("runs", nargs="*", metavar="RUN",
                     help="A and B: results folders or history run ids (one: B, against the "
                          "run before it; none: the last two runs of --tier)")
    cmp.add_argument("--tier", default=None, help="tier for the default runs (default: the "
                     "newest run's)")
    cmp.add_argument("--threshold", type=float, default=100.0, metavar="PCT",
                     help="a figure regresses when it grows by more than PCT percent "
                          "(default 100: doubled) and by at least its floor")
    cmp.add_argument("--floor", type=_floor, action="append", default=[], metavar="FIG=V",
                     help="smallest change that counts: downtime=MS, total-time=MS, "
                          "transferred=MIB (defaults 100, 1000, 64)")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _add_history_args(cmp)
    cmp.set_defaults(func=cmd_compare)

    hist = sub.add_parser("history", help="each cell's verdict and downtime over the last runs")
    hist.add_argument("-k", dest="select", default=None, metavar="EXPR",
                      help="cells whose id matches, as pytest -k does")
    hist.add_argument("--tier", default=None, help="tier (default: the newest run's)")
    hist.add_argument("-n", type=int, default=10, metavar="N", help="last N runs (default 10)")
    _add_history_args(hist)
    hist.set_defaults(func=cmd_history)

    merge = sub.add_parser("merge", help="combine results folders (e.g. shards) into one report")
    merge.add_argument("dirs", nargs="+", metavar="DIR")
    merge.add_argument("--results", required=True, metavar="OUT",
                       help="folder for the merged results.json and junit.xml")
    merge.set_defaults(func=cmd_merge)

    ls = sub.add_parser("list", help="list the cells of a tier")
    _add_matrix_args(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    doc = sub.add_parser("doctor", help="describe the QEMU builds and what is missing")
    doc.add_argument("--matrix", default=None, help=MATRIX_HELP)
    doc.add_argument("--qemu", default=None, metavar="PATH")
    doc.add_argument("--json", action="store_true")
    doc.add_argument("--hosts", nargs="?", const="", default=None, metavar="NAMES",
                     help="check the inventory's hosts instead (all, or NAMES: a,b): reachable, "
                          "host key known, builds there, KVM, free memory, clock offset; "
                          "exit 1 when a host is unusable")
    doc.set_defaults(func=cmd_doctor)

    probe = sub.add_parser("probe", help="probe builds' migration rules against the oracle")
    probe.add_argument("--matrix", default=None, help=MATRIX_HELP)
    probe.add_argument("--qemu", default=None, metavar="PATH")
    probe.add_argument("--results", required=True, metavar="DIR")
    probe.set_defaults(func=cmd_probe)

    img = sub.add_parser("images", help="build (or find cached) guest images")
    img.add_argument("name", nargs="?", default="dirtier-x86")
    img.set_defaults(func=cmd_images)

    init = sub.add_parser("init", help="write the packaged matrix to ./matrix.yaml for editing")
    init.add_argument("--force", action="store_true", help="overwrite an existing ./matrix.yaml")
    init.set_defaults(func=cmd_init)

    # -v: the harness's own log on stderr (-v info, -vv debug; default: warnings).
    # Every cell's log folder gets all of it anyway (harness.log).
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more of the harness's own log on stderr (-vv: debug)")
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help="more of the harness's own log on stderr (-vv: debug)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console_logging((logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)])
    install_signal_handlers()
    try:
        return int(args.func(args))
    except HarnessError as exc:
        print(f"mharness: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted):
        print("mharness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
