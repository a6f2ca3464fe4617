"""Running cells in parallel, sharded and rerun, against real QEMU.

``mharness run -j 2`` runs cells at the same time in worker processes and
leaves no QEMU behind, also when interrupted; shards merge into one report;
``--rerun-failed`` reruns only what failed; ``pytest -n 2`` (xdist) sees the
same cell ids as ``mharness list``.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import time
from pathlib import Path

import pytest

from clihelp import MATRIX_HEAD, mharness, run_pytest, start_mharness, write_matrix
from harness.qemu.procfs import descendants, is_qemu, still_running

MATRIX = MATRIX_HEAD + """\
targets:
  q35: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 128M,
        workload: {kind: dirtier, base: 2M, region: 16M}}
  pc: {arch: x86_64, machine: pc, accel: tcg, build: system, memory: 128M,
       workload: {kind: dirtier, base: 2M, region: 16M}}
transports: [unix, tcp]
capsets:
  precopy: {}
paramsets:
  strict: {downtime-limit: 1}
tiers:
  four:
    product: {target: [q35, pc], transport: [unix, tcp], capset: [precopy]}
  mixed:
    cells:
      - {target: q35, transport: unix, capset: precopy}
      - {target: pc, transport: tcp, capset: precopy, paramset: strict,
         downtime-tolerance-ms: 0}
"""


@pytest.fixture
def matrix_file(tmp_path: Path) -> Path:
    return write_matrix(tmp_path, MATRIX)


def test_j2_runs_cells_at_once_and_leaves_no_qemu(tmp_path: Path, matrix_file: Path) -> None:
    proc = start_mharness("run", "--matrix", str(matrix_file), "--tier", "four", "-j", "2",
                          "--results", str(tmp_path / "r"))
    seen: set[int] = set()
    most = 0
    while proc.poll() is None:
        qemus = {p for p in descendants(proc.pid) if is_qemu(p)}
        seen |= qemus
        most = max(most, len(qemus))
        time.sleep(0.02)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert proc.returncode == 0, out
    assert not still_running(seen), "QEMU left running after the run"
    assert most >= 3, f"never more than one cell's QEMUs at a time (max {most})"
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [c["verdict"] for c in data["cells"]] == ["passed"] * 4
    assert [c["id"] for c in data["cells"]] == [   # tier order, whatever finished first
        "q35-unix-precopy", "q35-tcp-precopy", "pc-unix-precopy", "pc-tcp-precopy"]
    assert data["run"]["jobs"] == 2 and not data["interrupted"]
    assert not (tmp_path / "r" / ".workers").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_j2_tears_down_and_writes_partial_results(tmp_path: Path,
                                                               matrix_file: Path, sig) -> None:
    proc = start_mharness("run", "--matrix", str(matrix_file), "--tier", "four", "-j", "2",
                          "--results", str(tmp_path / "r"))
    deadline = time.monotonic() + 60
    qemus: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        qemus = {p for p in descendants(proc.pid) if is_qemu(p)}
        if len(qemus) >= 4:
            break
        time.sleep(0.02)
    assert len(qemus) >= 4, "two cells never ran at once"
    time.sleep(0.2)
    qemus |= {p for p in descendants(proc.pid) if is_qemu(p)}
    workers = {p for p in descendants(proc.pid) if not is_qemu(p)}
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert not still_running(qemus | workers, timeout=5.0), out
    assert proc.returncode == 130, out
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["interrupted"] is True and data["total_cells"] == 4
    assert len(data["cells"]) < 4


def test_shards_merge_and_rerun_failed(tmp_path: Path, matrix_file: Path) -> None:
    listed = mharness("list", "--matrix", str(matrix_file), "--tier", "mixed", "--json")
    ids = [c["id"] for c in json.loads(listed.stdout)["cells"]]
    dirs = []
    for k in (1, 2):
        d = tmp_path / f"shard{k}"
        out = mharness("run", "--matrix", str(matrix_file), "--tier", "mixed", "--shard",
                       f"{k}/2", "--results", str(d))
        assert out.returncode in (0, 1), out.stdout + out.stderr
        dirs.append(d)
    per_shard = [[c["id"] for c in json.loads((d / "results.json").read_text())["cells"]]
                 for d in dirs]
    assert per_shard == [[ids[0]], [ids[1]]]
    merged = mharness("merge", *map(str, dirs), "--results", str(tmp_path / "all"))
    assert merged.returncode == 1, merged.stdout + merged.stderr   # the strict cell fails
    data = json.loads((tmp_path / "all" / "results.json").read_text())
    assert sorted(c["id"] for c in data["cells"]) == sorted(ids)
    assert (tmp_path / "all" / "junit.xml").exists()
    # Only the failed cell is run again; it fails again, so it is not flaky.
    again = mharness("run", "--matrix", str(matrix_file), "--rerun-failed", str(tmp_path / "all"),
                     "--results", str(tmp_path / "rerun"))
    assert again.returncode == 1, again.stdout + again.stderr
    (cell,) = json.loads((tmp_path / "rerun" / "results.json").read_text())["cells"]
    assert cell["id"] == "pc-tcp-precopy-strict" and cell["verdict"] == "failed"


def test_pytest_xdist_sees_the_same_cells(tmp_path: Path, matrix_file: Path) -> None:
    if importlib.util.find_spec("xdist") is None:
        pytest.fail("pytest-xdist is not installed: pip install -e '.[test]' (scripts/setup.sh)")
    listed = mharness("list", "--matrix", str(matrix_file), "--tier", "four", "--json")
    ids = sorted(c["id"] for c in json.loads(listed.stdout)["cells"])
    out = run_pytest("-n", "2", "-rA", "testcases/test_cells.py", "--matrix", str(matrix_file),
                     "--tier", "four", "--mh-results", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    passed = sorted(line.split("[", 1)[1].rsplit("]", 1)[0] for line in out.stdout.splitlines()
                    if line.startswith("PASSED testcases/test_cells.py::test_cell["))
    assert passed == ids
