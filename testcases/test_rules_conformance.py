"""Every migration rule of every build, probed live against the oracle.

One session-wide probe run per build (``harness.rules.prober``: the same code as
``mharness probe``), then one test id per build and rule:
``test_rule[system-caps.postcopy-ram.conflicts-multifd]``.  A rule passes when
every probe that should hit it is refused by QEMU with that rule's message and
leaves the state unchanged; ``accept`` collects the probes QEMU must accept.
A rule no probe can reach on this host (e.g. KVM dirty ring) is skipped with
that reason, never passed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.matrix import load_matrix
from harness.rules.prober import BuildProbeReport, conformance_table, probe_build
from harness.qemu.build import QemuBuild, discover
from harness.rules import rules_for

_reports: dict[str, BuildProbeReport] = {}


def _builds(config: pytest.Config) -> list[QemuBuild]:
    matrix = load_matrix(Path(config.getoption("--matrix")))
    return [discover(spec) for spec in matrix.build_specs()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rule_id" not in metafunc.fixturenames:
        return
    params = []
    for build in _builds(metafunc.config):
        if build.missing:
            params.append(pytest.param(build, "all", id=f"{build.name}-all",
                                       marks=pytest.mark.skip(reason=build.missing)))
            continue
        ids = ["accept"] + [r.id for r in rules_for(build.version[:2])]
        params += [pytest.param(build, rid, id=f"{build.name}-{rid}") for rid in dict.fromkeys(ids)]
    metafunc.parametrize(("build", "rule_id"), params)


@pytest.fixture
def report(build: QemuBuild, run_state) -> BuildProbeReport:
    if build.name not in _reports:
        logdir = run_state.results_dir / "probe-logs" / build.name
        _reports[build.name] = probe_build(build, logdir)
        rep = _reports[build.name]
        # The same files as `mharness probe` writes, in this session's results.
        out = run_state.results_dir / f"probe-{build.name}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(
            {"builds": [rep.to_json()], "probes": [r.to_json() for r in rep.results]},
            indent=1, default=str))
        (out / "probe-table.txt").write_text(conformance_table(rep.results) + "\n")
        assert not rep.schema_mismatches, rep.schema_mismatches
    return _reports[build.name]


def test_rule(build: QemuBuild, rule_id: str, report: BuildProbeReport) -> None:
    probes = [r for r in report.results if (r.expected_rule or "accept") == rule_id]
    if not probes:
        pytest.skip(f"no probe reaches {rule_id} on this host and build {build.version_text}")
    bad = [r for r in probes if not r.ok]
    assert not bad, f"{len(bad)}/{len(probes)} probes diverge:\n" + "\n".join(
        r.describe() for r in bad[:20])
