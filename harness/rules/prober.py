"""Probe a QEMU build's migration rules against the oracle (``mharness probe``).

For one build this starts a few small QEMUs (no guest code needed) and runs
every probe that ``harness.rules.probes`` generates for them, in each state a
rule can depend on:

* the source, idle, then with an outgoing migration running (to
  ``exec:cat``, throttled and held before switchover so it stays active);
* a destination started with ``-incoming defer``, before and after
  ``migrate-incoming``;
* destinations where multifd, or postcopy-ram + postcopy-preempt, were turned
  on before ``migrate-incoming`` (rules that read the current capabilities).

One QEMU serves all the probes of a state: a refused command applies nothing
and an accepted one is undone by the runner, so fresh processes are only
needed where the state itself changes.

Any build can be probed, whatever its target: the source runs a machine the
build has (a matrix target profile for its architecture, else the build's
own default machine) under TCG when the build has it, the destinations run
``-M none``.  A build whose QEMU version has no rule model is judged by the
nearest model's rules, and what differs is reported as ``unmodelled``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from harness.cell import TargetSpec
from harness.errors import QemuError
from harness.qemu.build import QemuBuild
from harness.qemu.cmdline import firmware_args
from harness.qemu.machine import Machine
from harness.rules import Phase, ProbeState, Side
from harness.rules.book import deviations_for, is_modelled, reference_version
from harness.rules.judge import ProbeVerdict
from harness.rules.model import Deviation, HostFacts, Version
from harness.rules.probes import (
    ProbeResult,
    build_facts,
    detect_host_facts,
    generate_probes,
    run_probes,
    schema_mismatches,
    summarize,
)
from harness.run.rundir import runtime_dir
from harness.units import MiB
from harness.waiting import WaitAborted, WaitTimeout, poll_until

log = logging.getLogger(__name__)

#: Source RAM when no target profile names one: the rules do not depend on it.
DEFAULT_MEMORY = 64 * MiB
#: Machines tried, in order, when the build has no default and no profile fits.
PREFERRED_MACHINES = ("q35", "virt", "pc")
STATUS_TIMEOUT = 20.0


@dataclass(frozen=True)
class ProbeMachine:
    """How the probe's source QEMU is started, and why that way."""

    machine: str
    accel: str
    memory: int = DEFAULT_MEMORY
    cpu: str | None = None
    #: Where the choice came from ("target profile e2k-tcg-pattern", ...).
    origin: str = ""

    def argv(self, arch: str, workdir: Path) -> list[str]:
        out = ["-M", self.machine, "-m", f"{self.memory // MiB}M", "-S"]
        if self.cpu:
            out += ["-cpu", self.cpu]
        return out + firmware_args(arch, workdir)


def probe_accel(build: QemuBuild) -> str:
    """TCG when the build has it (every probe's answer is the same under it, and
    it is all an e2k build has), else the first accelerator usable here."""
    if "tcg" in build.accelerators or not build.accelerators:
        return "tcg"
    usable = [a for a, problem in build.accel_problems.items() if problem is None]
    return usable[0] if usable else build.accelerators[0]


def choose_machine(build: QemuBuild, targets: Iterable[TargetSpec] = ()) -> ProbeMachine:
    """The machine to start the source with: one the build has.

    A matrix target profile for the build's architecture comes first (its
    machine, memory and firmware are known to start), preferring one for the
    probe's accelerator; then the build's default machine; then a common name
    it has; then any machine but ``none``.
    """
    accel = probe_accel(build)
    fitting = [t for t in targets
               if t.arch == build.arch and build.resolve_machine(t.machine) is not None]
    fitting.sort(key=lambda t: t.accel != accel)  # stable: file order otherwise
    if fitting:
        t = fitting[0]
        return ProbeMachine(t.machine, accel, t.memory, t.cpu if t.accel == accel else None,
                            f"target profile {t.name}")
    default = [m.name for m in build.machines.values() if m.is_default]
    if default:
        return ProbeMachine(default[0], accel, origin="the build's default machine")
    for name in PREFERRED_MACHINES:
        resolved = build.resolve_machine(name)
        if resolved is not None:
            return ProbeMachine(resolved, accel, origin=f"the build's machine '{name}'")
    others = sorted(m.name for m in build.machines.values() if m.name != "none"
                    and not m.deprecated)
    if others:
        return ProbeMachine(others[0], accel, origin="the first of the build's machines")
    return ProbeMachine("none", accel, origin="the build lists no machine but 'none'")


def model_note(version: tuple[int, ...]) -> str | None:
    """What the report says when the build's QEMU version has no rule model."""
    if is_modelled(version):
        return None
    ref = reference_version(version)
    return (f"no rule model for QEMU {version[0]}.{version[1]}; probed against "
            f"{ref[0]}.{ref[1]}'s rules, differences marked unmodelled")


@dataclass
class BuildProbeReport:
    """All probe results of one build, with per-state timings."""

    build: str
    version: str
    results: list[ProbeResult] = field(default_factory=list)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: The rule model the build was judged by (its own version, or the nearest).
    rules_version: Version = (0, 0)
    modelled: bool = True
    #: "no rule model for QEMU X.Y; ..." when not modelled.
    model_note: str | None = None
    machine: str = ""
    accel: str = ""
    #: Known deviations of this build's version (whether or not a probe saw them).
    deviations: list[Deviation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No disagreement (deviations and unmodelled differences are not failures)."""
        schema_ok = not self.schema_mismatches or not self.modelled
        return schema_ok and all(r.ok for r in self.results)

    def summary(self) -> dict[str, Any]:
        return summarize(self.results)

    def summary_lines(self) -> list[str]:
        """The report's human summary: verdict counts, then the known deviations."""
        s = self.summary()
        lines = [f"{s['probes']} probes: {s['agree']} agree, {s['deviation']} known deviation, "
                 f"{s['unmodelled']} unmodelled, {s['disagree']} disagree"]
        if self.model_note:
            lines.append(self.model_note)
        known = {d.id: d for d in self.deviations}
        for did in s["deviations_reproduced"]:
            d = known.get(did)
            n = sum(r.deviation == did for r in self.results)
            fix = f"; fixed in {d.fixed_in}" if d and d.fixed_in else "; no fix known"
            lines.append(f"deviation reproduced: {did} ({n} probes; QEMU {d.versions if d else '?'}"
                         f"{fix})")
        for did in s["deviations_not_reproduced"]:
            lines.append(f"deviation {did} did not reproduce: fixed in this build")
        if self.schema_mismatches:
            lines.append(f"{len(self.schema_mismatches)} schema mismatches"
                         + ("" if self.modelled else " (unmodelled version: not a failure)"))
        lines += self.notes
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"build": self.build, "version": self.version, "seconds": self.seconds,
                "rules_version": ".".join(map(str, self.rules_version)),
                "modelled": self.modelled, "model_note": self.model_note,
                "machine": self.machine, "accel": self.accel, "ok": self.ok,
                "known_deviations": [d.to_json() for d in self.deviations],
                "notes": self.notes,
                "schema_mismatches": self.schema_mismatches, "scenarios": self.scenarios,
                **summarize(self.results)}


@asynccontextmanager
async def _bare(build: QemuBuild, accel: str, args: list[str], workdir: Path, logdir: Path,
                name: str, t0: float) -> AsyncIterator[Machine]:
    """A QEMU with no guest: only its QMP monitor matters here."""
    argv = [*build.base_argv(), "-nodefaults", "-display", "none", "-accel", accel, *args,
            "-qmp", f"unix:{workdir / (name + '.qmp')}"]
    m = Machine(name, argv, build.env(), qmp_path=workdir / f"{name}.qmp",
                serial_path=workdir / f"{name}.serial", logdir=logdir, t0=t0)
    async with m:
        yield m


async def _wait_status(m: Machine, want: set[str], timeout: float = STATUS_TIMEOUT) -> str:
    """The outgoing migration's status once it is one of ``want`` (or the last
    one seen when it never gets there: the caller says what that means)."""
    async def status() -> str:
        return str((await m.execute("query-migrate")).get("status", "none"))

    try:
        return await poll_until(status, lambda s: s in want, timeout=timeout, interval=0.02,
                                what=f"{m.role}: migration status in {sorted(want)}",
                                abort=lambda: None if m.alive else m.exit_reason())
    except (WaitTimeout, WaitAborted) as exc:
        log.info("%s", exc)
        return str(exc.last)


async def probe_build_async(build: QemuBuild, logdir: Path,
                            targets: Iterable[TargetSpec] = ()) -> BuildProbeReport:
    logdir.mkdir(parents=True, exist_ok=True)
    workdir = runtime_dir()
    t0 = time.monotonic()
    host = detect_host_facts()
    full = build.version
    version = reference_version(full)
    modelled = is_modelled(full)
    choice = choose_machine(build, targets)
    deviations = deviations_for(full, build.name, build.package)
    report = BuildProbeReport(build=build.name, version=build.version_text, rules_version=version,
                              modelled=modelled, model_note=model_note(full),
                              machine=f"{choice.machine} ({choice.origin})", accel=choice.accel,
                              deviations=deviations)
    if report.model_note:
        log.warning("build %s: %s", build.name, report.model_note)
    log.info("build %s %s: source machine %s, accel %s, rules %s, known deviations %s",
             build.name, build.version_text, report.machine, choice.accel, version,
             [d.id for d in deviations] or "none")

    async def scenario(m: Machine, label: str, side: Side, phase: Phase, facts: Any,
                       host_facts: HostFacts) -> None:
        caps_list = await m.execute("query-migrate-capabilities")
        params = await m.execute("query-migrate-parameters")
        state = ProbeState(side=side, phase=phase, host=host_facts, build=facts,
                           accel=choice.accel).replace(
            caps={c["capability"]: c["state"] for c in caps_list}, params=params)
        probes = generate_probes(version, [c["capability"] for c in caps_list], params, state)
        start = time.monotonic()
        results = await run_probes(m.execute, probes, version, state, build=build.name,
                                   deviations=deviations, build_version=full, modelled=modelled)
        for r in results:
            r.phase = label.split("/", 1)[1]
        report.scenarios[label] = {"probes": len(results),
                                   "seconds": round(time.monotonic() - start, 2),
                                   **summarize(results)}
        report.results.extend(results)

    try:
        try:
            src_cm = _bare(build, choice.accel, choice.argv(build.arch, workdir), workdir,
                           logdir, "src", t0)
            async with src_cm as src:
                schema = await src.execute("query-qmp-schema")
                facts = build_facts(version, schema, list(build.capabilities))
                report.schema_mismatches = list(schema_mismatches(version, schema))
                await scenario(src, "source/idle", Side.SOURCE, Phase.IDLE, facts, host)
                # An outgoing migration that stays running: throttled and held
                # before switchover (10.0 does not count zero pages against the
                # bandwidth limit, so an idle guest alone would finish in ~1 s).
                await src.execute("migrate-set-parameters", {"max-bandwidth": 1000})
                await src.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "pause-before-switchover", "state": True}]})
                await src.execute("migrate", {"uri": "exec:cat > /dev/null"})
                running = {"active", "pre-switchover"}
                status = await _wait_status(src, running)
                if status in running:
                    host = await _check_page_size(src, host, report)
                    await scenario(src, "source/active", Side.SOURCE, Phase.ACTIVE, facts, host)
                else:
                    report.notes.append(f"source/active not probed: the outgoing migration "
                                        f"went to '{status}' instead of staying active")
                await src.execute("migrate_cancel")
                await _wait_status(src, {"cancelled", "failed", "completed"})
        except QemuError as exc:
            raise QemuError(f"build '{build.name}': the probe's source ({choice.machine}, from "
                            f"{choice.origin}) did not run: {exc}") from exc

        async with _bare(build, choice.accel, ["-M", "none", "-incoming", "defer"], workdir,
                         logdir, "dst", t0) as dst:
            await scenario(dst, "destination/incoming-deferred", Side.DESTINATION,
                           Phase.INCOMING_DEFERRED, facts, host)
            await dst.execute("migrate-incoming", {"uri": f"unix:{workdir / 'in.sock'}"})
            await scenario(dst, "destination/incoming-active", Side.DESTINATION,
                           Phase.INCOMING_ACTIVE, facts, host)

        presets = {"multifd": ["multifd"], "postcopy": ["postcopy-ram", "postcopy-preempt"]}
        for label, preset in presets.items():
            if not all(c in build.capabilities for c in preset):
                continue
            async with _bare(build, choice.accel, ["-M", "none", "-incoming", "defer"], workdir,
                             logdir, f"dst-{label}", t0) as dst:
                await dst.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": c, "state": True} for c in preset]})
                await dst.execute("migrate-incoming", {"uri": f"unix:{workdir / (label + '.sock')}"})
                await scenario(dst, f"destination/incoming-active+{label}", Side.DESTINATION,
                               Phase.INCOMING_ACTIVE, facts, host)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = round(time.monotonic() - t0, 2)
    for line in report.summary_lines():
        log.info("build %s: %s", build.name, line)
    return report


async def _check_page_size(src: Machine, host: HostFacts, report: BuildProbeReport) -> HostFacts:
    """The target page size as the running migration reports it (``ram.page-size``).

    The xbzrle-cache-size rule depends on it; the oracle assumes the host's
    facts (4 KiB) until the source says otherwise, and later scenarios use
    what it said.
    """
    info = await src.execute("query-migrate")
    page = (info.get("ram") or {}).get("page-size")
    if isinstance(page, int) and page > 0 and page != host.target_page_size:
        report.notes.append(f"target page size is {page} (the idle source was judged with "
                            f"{host.target_page_size})")
        return dataclasses.replace(host, target_page_size=page)
    return host


def probe_build(build: QemuBuild, logdir: Path,
                targets: Iterable[TargetSpec] = ()) -> BuildProbeReport:
    """Synchronous facade for the CLI and pytest."""
    return asyncio.run(probe_build_async(build, logdir, targets))


def _verdict_label(r: ProbeResult) -> str:
    if r.verdict == ProbeVerdict.DEVIATION:
        return f"deviation {r.deviation}"
    return str(r.verdict)


def conformance_table(results: list[ProbeResult]) -> str:
    """One row per (build, rule, verdict): probes and one example message.

    The verdict column says ``agree``, ``deviation <id>`` (a known defect of
    this QEMU version reproduced), ``unmodelled`` or ``disagree``; a row that
    agrees where a known deviation was expected says it did not reproduce.
    """
    rows: dict[tuple[str, str, str, str], list[ProbeResult]] = {}
    for r in results:
        rule = r.expected_rule or "accept"
        key = (r.build, r.version and ".".join(map(str, r.version)), rule, _verdict_label(r))
        rows.setdefault(key, []).append(r)
    lines = [f"{'build':12} {'version':8} {'rule':58} {'verdict':44} {'probes':>6}  "
             "observed message"]
    for (build, version, rule, label), rs in sorted(rows.items()):
        example = rs[0]
        msg = "accepted" if example.observed_accept else (example.observed_message or "")
        fixed = sorted({d for r in rs for d in r.deviation_not_reproduced})
        if fixed:
            label += f" ({', '.join(fixed)} did not reproduce: fixed here)"
        lines.append(f"{build[:12]:12} {version:8} {rule[:58]:58} {label:44} {len(rs):6d}  "
                     f"{msg[:90]}")
    return "\n".join(lines)


def summary_text(reports: Iterable[BuildProbeReport]) -> str:
    """The per-build summaries (verdict counts, deviations reproduced and fixed)."""
    out = []
    for rep in reports:
        out.append(f"build '{rep.build}' {rep.version} (rules {'.'.join(map(str, rep.rules_version))}, "
                   f"source machine {rep.machine}, accel {rep.accel}):")
        out += [f"  {line}" for line in rep.summary_lines()]
    return "\n".join(out)
