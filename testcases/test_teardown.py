"""No QEMU outlives its cell: not on SIGKILL of the harness, SIGTERM or Ctrl-C.

The harness runs as a real ``mharness run`` subprocess; the test finds the
QEMU processes it started (its children, from /proc), hits the harness, and
then requires every one of those PIDs to be gone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clihelp import ROOT, start_mharness
from harness.matrix import tier_cells
from harness.qemu.build import discover
from harness.qemu.procfs import children, is_qemu, still_running
from harness.run.rundir import runtime_base, sweep_stale


def _start_run(tmp_path: Path, cell_id: str) -> tuple[subprocess.Popen, set[int]]:
    proc = start_mharness("run", "--matrix", str(ROOT / "matrix.yaml"), "--tier", "smoke",
                          "-k", cell_id, "--results", str(tmp_path / "results"))
    deadline = time.monotonic() + 30
    qemus: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        qemus = {p for p in children(proc.pid) if is_qemu(p)}
        if len(qemus) >= 2:
            # Let the cell get into its migration before hitting the harness.
            time.sleep(0.3)
            qemus |= {p for p in children(proc.pid) if is_qemu(p)}
            return proc, qemus
        time.sleep(0.02)
    out = proc.communicate(timeout=30)[0] if proc.poll() is not None else b""
    proc.kill()
    pytest.fail(f"harness never had two QEMUs running: {out.decode(errors='replace')[-2000:]}")


@pytest.fixture
def cell_id(matrix) -> str:
    for cell in tier_cells(matrix, "smoke", resolve=discover):
        if cell.target.accel == "tcg":
            return cell.id
    pytest.fail("no TCG cell in the smoke tier")


def test_sigkill_of_harness_leaves_no_qemu(tmp_path, cell_id):
    proc, qemus = _start_run(tmp_path, cell_id)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    left = still_running(qemus)
    for pid in left:  # clean up by the PIDs the harness started, then fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"QEMU survived SIGKILL of the harness: {sorted(left)}"
    # The dead harness could not remove its tmpfs folder (guest RAM files);
    # the next harness process sweeps it, by the owner PID recorded in it.
    # Where the harness makes them: MHARNESS_RUNTIME_DIR when set (e.g. a
    # huge-page tmpfs), else /dev/shm.
    owned = [d for d in runtime_base().glob("mharness-*")
             if (d / "owner.pid").exists() and (d / "owner.pid").read_text() == str(proc.pid)]
    assert owned, "the killed harness left no runtime folder to sweep (test setup changed?)"
    sweep_stale()
    assert not any(d.exists() for d in owned)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_tears_down_and_writes_partial_results(tmp_path, cell_id, sig):
    proc, qemus = _start_run(tmp_path, cell_id)
    proc.send_signal(sig)
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    left = still_running(qemus, timeout=2.0)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"QEMU survived {sig.name}: {sorted(left)}\n{out}"
    assert proc.returncode == 130, out
    data = json.loads((tmp_path / "results" / "results.json").read_text())
    assert data["interrupted"] is True


def test_aborting_qemu_fails_the_cell_with_signal_and_the_run_goes_on(matrix, run_state, record):
    """A QEMU that aborts mid-cell (as some porters' builds do on some commands)
    ends that cell as an error naming the signal; nothing is left running and
    the next cell runs normally."""
    from harness.migration.flow import run_cell
    from harness.qemu.process import live_processes
    from harness.run.runner import cell_logdir

    cell = next(c for c in tier_cells(matrix, "smoke", resolve=discover)
                if c.target.accel == "tcg")

    def abort_destination(src, dst):
        (proc,) = [p for p in live_processes() if p.name == "dst"]
        os.kill(proc.pid, signal.SIGABRT)
        proc.wait(10)

    import dataclasses
    aborted = dataclasses.replace(cell, id=cell.id + "-abort")
    result = record(run_cell(aborted, cell_logdir(run_state.results_dir, aborted.id),
                             inject=abort_destination))
    assert result.verdict == "error", result.reason
    assert "SIGABRT" in result.reason
    assert not live_processes()
    again = record(run_cell(cell, cell_logdir(run_state.results_dir, cell.id + "-after-abort")))
    assert again.verdict == "passed", again.reason
