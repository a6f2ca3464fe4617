"""The ``mharness`` command-line contract, end to end with real QEMU.

CI scripts rely on: exit 0 when every selected cell passed or was skipped,
1 when a cell failed, 2 for bad input; results.json and junit.xml in the
results folder; logs of failed cells kept.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from clihelp import ROOT, mharness, run_pytest, write_matrix

MATRIX = """\
version: 1
defaults:
  parameters: {{max-bandwidth: 10G}}
builds:
  system: {{binary: /usr/bin/qemu-system-x86_64, required: true}}
targets:
  t: {{arch: x86_64, machine: q35, accel: tcg, build: system, memory: 128M,
      workload: {{kind: dirtier, base: 2M, region: 16M}}}}
transports: [unix]
capsets:
  plain: {{}}
  odd: {{{cap}: true}}
paramsets:
  strict: {{downtime-limit: 1}}
tiers:
  good:
    cells: [{{target: t, transport: unix, capset: plain}}]
  failing:
    cells: [{{target: t, transport: unix, capset: plain, paramset: strict,
              downtime-tolerance-ms: 0}}]
  unknown-cap:
    cells: [{{target: t, transport: unix, capset: odd}}]
  mixed:
    include: [failing, good]
"""


@pytest.fixture
def matrix_file(tmp_path: Path) -> Path:
    return write_matrix(tmp_path, MATRIX.format(cap="no-such-capability"))


def test_run_passing_cell_writes_results_and_exits_0(tmp_path, matrix_file):
    out = mharness("run", "--matrix", str(matrix_file), "--tier", "good",
                   "--results", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    (cell,) = data["cells"]
    assert cell["id"] == "t-unix-plain" and cell["verdict"] == "passed"
    assert {c["name"] for c in cell["checks"]} >= {"converged", "ram", "guest", "liveness", "downtime"}
    assert set(cell["phases"]) >= {"launch", "warmup", "migrate", "verify", "teardown"}
    assert cell["figures"]["total_time_ms"] > 0
    assert cell["logdir"] is None  # logs of passed cells are not kept by default
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
    assert "t-unix-plain" in out.stdout and "PASS" in out.stdout
    assert "results:" in out.stdout


def test_failing_cell_exits_1_and_keeps_its_logs(tmp_path, matrix_file):
    out = mharness("run", "--matrix", str(matrix_file), "--tier", "failing",
                   "--results", str(tmp_path / "r"))
    assert out.returncode == 1, out.stdout + out.stderr
    (cell,) = json.loads((tmp_path / "r" / "results.json").read_text())["cells"]
    assert cell["verdict"] == "failed" and "downtime" in cell["reason"]
    logs = Path(cell["logdir"])
    for name in ("src.stderr", "dst.stderr", "src.serial.log", "dst.serial.log",
                 "src.qmp.jsonl", "dst.qmp.jsonl"):
        assert (logs / name).exists(), name
    transcript = [json.loads(line) for line in (logs / "src.qmp.jsonl").read_text().splitlines()]
    assert any(e.get("cmd") == "migrate" for e in transcript)
    assert any(e.get("dir") == "event" for e in transcript)
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert suite.get("failures") == "1"


def test_unknown_capability_is_bad_input_naming_build_and_supported_list(tmp_path, matrix_file):
    out = mharness("run", "--matrix", str(matrix_file), "--tier", "unknown-cap",
                   "--results", str(tmp_path / "r"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "QEMU build 'system'" in out.stderr
    assert "'no-such-capability'" in out.stderr
    assert "it supports:" in out.stderr and "postcopy-ram" in out.stderr


def test_malformed_matrix_names_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MATRIX.format(cap="events").replace("memory: 128M", "memroy: 128M"))
    out = mharness("run", "--matrix", str(bad), "--tier", "good")
    assert out.returncode == 2
    assert f"{bad}:7: key 'targets.t.memroy': unknown key" in out.stderr


def test_missing_qemu_binary_is_bad_input(tmp_path, matrix_file):
    out = mharness("run", "--matrix", str(matrix_file), "--tier", "good",
                   "--qemu", str(tmp_path / "no-qemu"))
    assert out.returncode == 2 and "no such executable" in out.stderr


def test_k_selects_cells_like_pytest():
    out = mharness("list", "--tier", "smoke", "-k", "unix and not kvm")
    assert out.returncode == 0, out.stderr
    ids = [line.split()[0] for line in out.stdout.splitlines()[:-1]]
    assert ids and all("unix" in i and "kvm" not in i for i in ids)


def test_doctor_describes_the_system_build():
    out = mharness("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "build 'system'" in out.stdout and "version 7.2" in out.stdout
    assert "accel tcg: usable" in out.stdout
    assert "migration capabilities" in out.stdout and "multifd" in out.stdout


def test_a_failing_cell_does_not_stop_the_run(tmp_path, matrix_file):
    out = mharness("run", "--matrix", str(matrix_file), "--tier", "mixed",
                   "--results", str(tmp_path / "r"))
    assert out.returncode == 1, out.stdout + out.stderr
    cells = json.loads((tmp_path / "r" / "results.json").read_text())["cells"]
    assert [(c["id"], c["verdict"]) for c in cells] == [
        ("t-unix-plain-strict", "failed"), ("t-unix-plain", "passed")]


def test_test_command_fails_loudly_when_the_required_qemu_is_missing(tmp_path):
    """The README's test command must not turn a missing Debian QEMU into skips."""
    matrix = write_matrix(tmp_path, MATRIX.format(cap="events").replace(
        "/usr/bin/qemu-system-x86_64", str(tmp_path / "no-such-qemu")))
    out = run_pytest(str(ROOT / "testcases" / "test_cells.py"), "--matrix", str(matrix),
                     "--tier", "good", timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "required QEMU build 'system' is missing" in out.stdout + out.stderr


def test_failure_path_cells_run_listed_and_selected_like_any_cell(tmp_path):
    """Scenario cells of a tier: listed with kind 'scenario', selected with -k,
    run in parallel, recorded in results.json and junit.xml."""
    matrix = write_matrix(tmp_path, MATRIX.format(cap="events").replace(
        "required: true}", 'required: true, version: "7.2"}').replace(
        "tiers:\n", "tiers:\n  small:\n    cells:\n"
        "      - {target: t, transport: unix, capset: plain}\n"
        "      - {scenarios: [bad-destination-tcp-refused, unknown-uri-scheme], "
        "build: system}\n", 1))
    listed = mharness("list", "--matrix", str(matrix), "--tier", "small", "--json")
    assert listed.returncode == 0, listed.stderr
    cells = {c["id"]: c for c in json.loads(listed.stdout)["cells"]}
    want = ["failpath-bad-destination-tcp-refused-qemu-7.2", "failpath-unknown-uri-scheme-qemu-7.2"]
    assert list(cells) == ["t-unix-plain", *want]
    assert cells["t-unix-plain"]["kind"] == "migration"
    assert [cells[i]["kind"] for i in want] == ["scenario", "scenario"]
    assert cells[want[1]]["scenario"] == "unknown-uri-scheme"

    out = mharness("run", "--matrix", str(matrix), "--tier", "small", "-k", "failpath",
                   "-j", "2", "--results", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [(c["id"], c["verdict"]) for c in data["cells"]] == [(i, "passed") for i in want]
    for c in data["cells"]:
        assert c["inputs"]["kind"] == "scenario" and c["inputs"]["tier"] == "small"
        assert c["checks"] and all(check["passed"] for check in c["checks"])
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert all(i in out.stdout for i in want)
