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
"""
from __future__ import annotations

import asyncio
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from harness.run.rundir import runtime_dir
from harness.qemu.build import QemuBuild
from harness.qemu.machine import Machine
from harness.rules import Phase, ProbeState, Side
from harness.rules.probes import (
    ProbeResult,
    build_facts,
    detect_host_facts,
    generate_probes,
    run_probes,
    schema_mismatches,
    summarize,
)


@dataclass
class BuildProbeReport:
    """All probe results of one build, with per-state timings."""

    build: str
    version: str
    results: list[ProbeResult] = field(default_factory=list)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.schema_mismatches and all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"build": self.build, "version": self.version, "seconds": self.seconds,
                "schema_mismatches": self.schema_mismatches, "scenarios": self.scenarios,
                **summarize(self.results)}


@asynccontextmanager
async def _bare(build: QemuBuild, args: list[str], workdir: Path, logdir: Path,
                name: str, t0: float) -> AsyncIterator[Machine]:
    """A QEMU with no guest: only its QMP monitor matters here."""
    argv = [*build.base_argv(), "-nodefaults", "-display", "none", "-accel", "tcg", *args,
            "-qmp", f"unix:{workdir / (name + '.qmp')}"]
    m = Machine(name, argv, build.env(), qmp_path=workdir / f"{name}.qmp",
                serial_path=workdir / f"{name}.serial", logdir=logdir, t0=t0)
    async with m:
        yield m


async def _wait_status(m: Machine, want: set[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = (await m.execute("query-migrate")).get("status", "none")
        if status in want or time.monotonic() > deadline:
            return str(status)
        await asyncio.sleep(0.02)


async def probe_build_async(build: QemuBuild, logdir: Path) -> BuildProbeReport:
    logdir.mkdir(parents=True, exist_ok=True)
    workdir = runtime_dir()
    t0 = time.monotonic()
    host = detect_host_facts()
    report = BuildProbeReport(build=build.name, version=build.version_text)
    version = build.version[:2]

    async def scenario(m: Machine, label: str, side: Side, phase: Phase, facts: Any) -> None:
        caps_list = await m.execute("query-migrate-capabilities")
        params = await m.execute("query-migrate-parameters")
        state = ProbeState(side=side, phase=phase, host=host, build=facts).replace(
            caps={c["capability"]: c["state"] for c in caps_list}, params=params)
        probes = generate_probes(version, [c["capability"] for c in caps_list], params, state)
        start = time.monotonic()
        results = await run_probes(m.execute, probes, version, state, build=build.name)
        for r in results:
            r.phase = label.split("/", 1)[1]
        report.scenarios[label] = {"probes": len(results),
                                   "seconds": round(time.monotonic() - start, 2),
                                   **summarize(results)}
        report.results.extend(results)

    try:
        async with _bare(build, ["-M", "q35", "-m", "64", "-S"], workdir, logdir, "src", t0) as src:
            schema = await src.execute("query-qmp-schema")
            facts = build_facts(version, schema, list(build.capabilities))
            report.schema_mismatches = list(schema_mismatches(version, schema))
            await scenario(src, "source/idle", Side.SOURCE, Phase.IDLE, facts)
            # An outgoing migration that stays running: throttled and held
            # before switchover (10.0 does not count zero pages against the
            # bandwidth limit, so an idle guest alone would finish in ~1 s).
            await src.execute("migrate-set-parameters", {"max-bandwidth": 1000})
            await src.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "pause-before-switchover", "state": True}]})
            await src.execute("migrate", {"uri": "exec:cat > /dev/null"})
            running = {"active", "pre-switchover"}
            if await _wait_status(src, running) in running:
                await scenario(src, "source/active", Side.SOURCE, Phase.ACTIVE, facts)
            await src.execute("migrate_cancel")
            await _wait_status(src, {"cancelled", "failed"})

        async with _bare(build, ["-M", "none", "-incoming", "defer"], workdir, logdir, "dst",
                         t0) as dst:
            await scenario(dst, "destination/incoming-deferred", Side.DESTINATION,
                           Phase.INCOMING_DEFERRED, facts)
            await dst.execute("migrate-incoming", {"uri": f"unix:{workdir / 'in.sock'}"})
            await scenario(dst, "destination/incoming-active", Side.DESTINATION,
                           Phase.INCOMING_ACTIVE, facts)

        presets = {"multifd": ["multifd"], "postcopy": ["postcopy-ram", "postcopy-preempt"]}
        for label, preset in presets.items():
            if not all(c in build.capabilities for c in preset):
                continue
            async with _bare(build, ["-M", "none", "-incoming", "defer"], workdir, logdir,
                             f"dst-{label}", t0) as dst:
                await dst.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": c, "state": True} for c in preset]})
                await dst.execute("migrate-incoming", {"uri": f"unix:{workdir / (label + '.sock')}"})
                await scenario(dst, f"destination/incoming-active+{label}", Side.DESTINATION,
                               Phase.INCOMING_ACTIVE, facts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = round(time.monotonic() - t0, 2)
    return report


def probe_build(build: QemuBuild, logdir: Path) -> BuildProbeReport:
    """Synchronous facade for the CLI and pytest."""
    return asyncio.run(probe_build_async(build, logdir))


def conformance_table(results: list[ProbeResult]) -> str:
    """One row per (build, rule): probes, agreeing, and one example message."""
    rows: dict[tuple[str, str, str], list[ProbeResult]] = {}
    for r in results:
        rule = r.expected_rule or "accept"
        rows.setdefault((r.build, r.version and ".".join(map(str, r.version)), rule), []).append(r)
    lines = [f"{'build':12} {'version':8} {'rule':58} {'probes':>6} {'agree':>6}  observed message"]
    for (build, version, rule), rs in sorted(rows.items()):
        bad = [r for r in rs if not r.ok]
        example = (bad or rs)[0]
        msg = "accepted" if example.observed_accept else (example.observed_message or "")
        lines.append(f"{build[:12]:12} {version:8} {rule[:58]:58} {len(rs):6d} "
                     f"{len(rs) - len(bad):6d}  {msg[:90]}")
    return "\n".join(lines)
