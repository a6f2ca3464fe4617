"""Every migration rule of every build, probed live against the oracle.

One session-wide probe run per build (``harness.rules.prober``: the same code as
``mharness probe``), then one test id per build and rule:
``test_rule[system-caps.postcopy-ram.conflicts-multifd]``.  A rule passes when
every probe that should hit it is answered as the contract says (refused with
that rule's message, state unchanged); ``accept`` collects the probes QEMU
must accept.  Where probes are answered as a known deviation of the build's
QEMU version says instead, the rule is an expected failure (xfail), never a
pass; any other answer fails it.  A rule no
probe can reach on this host (e.g. KVM dirty ring) is skipped with that
reason, never passed.  A build of the matrix that is missing fails its
``test_rule[<build>-all]`` when it is the required one, else skips it.

Known deviations get their own ids, ``test_deviation[system-<id>]``: an
expected failure (xfail, with the deviation's summary) when the build
reproduces it, a pass with a "fixed in this build" warning when it does not,
a skip when no probe could tell.  Any build works, whatever its target: the
probe starts the machine a matrix target profile or the build itself names
(``MHARNESS_E2K_QEMU`` may point at a qemu-system-e2k, or any other build).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from harness.cell import BuildSpec
from harness.matrix import load_matrix
from harness.qemu.build import QemuBuild, discover
from harness.rules import deviations_for, reference_version, rules_for
from harness.rules.prober import (
    BuildProbeReport,
    conformance_table,
    probe_build,
    summary_text,
)
from qemu_builds import usable

_reports: dict[str, BuildProbeReport] = {}


def _matrix(config: pytest.Config):
    return load_matrix(Path(config.getoption("--matrix")))


def _builds(config: pytest.Config) -> list[QemuBuild]:
    return [discover(spec) for spec in _matrix(config).build_specs()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rule_id" in metafunc.fixturenames:
        params = []
        for build in _builds(metafunc.config):
            if build.missing:   # failed or skipped by the report fixture (usable)
                params.append(pytest.param(build, "all", id=f"{build.name}-all"))
                continue
            ids = ["accept"] + [r.id for r in rules_for(reference_version(build.version))]
            params += [pytest.param(build, rid, id=f"{build.name}-{rid}")
                       for rid in dict.fromkeys(ids)]
        metafunc.parametrize(("build", "rule_id"), params)
    if "deviation_id" in metafunc.fixturenames:
        params = []
        for build in _builds(metafunc.config):
            if build.missing:
                continue
            params += [pytest.param(build, d.id, id=f"{build.name}-{d.id}")
                       for d in deviations_for(build.version, build.name, build.package)]
        metafunc.parametrize(("build", "deviation_id"), params)


@pytest.fixture
def report(build: QemuBuild, run_state, pytestconfig: pytest.Config) -> BuildProbeReport:
    usable(build)
    if build.name not in _reports:
        logdir = run_state.results_dir / "probe-logs" / build.name
        targets = list(_matrix(pytestconfig).targets.values())
        _reports[build.name] = probe_build(build, logdir, targets)
        rep = _reports[build.name]
        # The same files as `mharness probe` writes, in this session's results.
        out = run_state.results_dir / f"probe-{build.name}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(
            {"builds": [rep.to_json()], "probes": [r.to_json() for r in rep.results]},
            indent=1, default=str))
        (out / "probe-table.txt").write_text(conformance_table(rep.results) + "\n\n"
                                             + summary_text([rep]) + "\n")
    rep = _reports[build.name]
    if rep.modelled:
        assert not rep.schema_mismatches, rep.schema_mismatches
    return rep


def test_rule(build: QemuBuild, rule_id: str, report: BuildProbeReport) -> None:
    probes = [r for r in report.results if (r.expected_rule or "accept") == rule_id]
    if not probes:
        pytest.skip(f"no probe reaches {rule_id} on this host and build {build.version_text}")
    bad = [r for r in probes if not r.ok]
    assert not bad, f"{len(bad)}/{len(probes)} probes diverge:\n" + "\n".join(
        r.describe() for r in bad[:20])
    known = sorted({r.deviation for r in probes if r.deviation})
    if known:  # the build breaks this rule in a known way: not a pass
        n = sum(r.deviation is not None for r in probes)
        pytest.xfail(f"{n}/{len(probes)} probes reproduce known deviation(s) "
                     f"{', '.join(known)} instead of the contract")


def test_deviation(build: QemuBuild, deviation_id: str, report: BuildProbeReport) -> None:
    """A known defect of the build's QEMU version: never a pass while it reproduces."""
    dev = next(d for d in report.deviations if d.id == deviation_id)
    hits = [r for r in report.results if r.deviation == deviation_id]
    gone = [r for r in report.results if deviation_id in r.deviation_not_reproduced]
    if hits:
        pytest.xfail(f"known deviation {deviation_id} reproduced on {len(hits)} probes "
                     f"(QEMU {dev.versions}): {dev.summary}")
    if gone:
        warnings.warn(f"known deviation {deviation_id} did not reproduce on "
                      f"{build.name} {build.version_text}: fixed in this build", stacklevel=1)
        return
    pytest.skip(f"no probe on this host tells {deviation_id} apart from the contract")


ARM = shutil.which("qemu-system-aarch64")


@pytest.mark.skipif(ARM is None, reason="qemu-system-aarch64 is not installed "
                                        "(scripts/setup.sh installs Debian's qemu-system-arm)")
def test_probe_runs_a_build_of_another_architecture(run_state, pytestconfig) -> None:
    """The probe on a build no matrix target describes: it starts the build's
    own machine (aarch64 ``virt``) under TCG and judges it like any other."""
    build = discover(BuildSpec(name="aarch64", binary=ARM))
    targets = list(_matrix(pytestconfig).targets.values())
    rep = probe_build(build, run_state.results_dir / "probe-logs" / "aarch64", targets)
    assert rep.machine.startswith("virt") and rep.accel == "tcg", rep.machine
    assert "source/active" in rep.scenarios, rep.notes
    assert rep.ok, "\n".join(r.describe() for r in rep.results if not r.ok)
