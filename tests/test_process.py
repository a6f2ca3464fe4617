"""Process handling, with a stand-in process: the kernel's death signal and
the PID registry are what is tested here, not QEMU (testcases/test_teardown.py
proves the same against real QEMU)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from harness.qemu.process import QemuProcess, kill_all, live_processes
from harness.qemu.procfs import running




def test_kill_ends_the_process_and_forgets_it(tmp_path):
    p = QemuProcess(["sleep", "100"], tmp_path / "err")
    assert p in live_processes()
    p.kill()
    assert not running(p.pid)
    assert p not in live_processes()
    assert p.describe_exit() == "killed by signal SIGKILL"


def test_started_in_own_process_group(tmp_path):
    p = QemuProcess(["sleep", "100"], tmp_path / "err")
    try:
        assert os.getpgid(p.pid) == p.pid
    finally:
        p.kill()


def test_kill_all_ends_everything_registered(tmp_path):
    procs = [QemuProcess(["sleep", "100"], tmp_path / f"err{i}") for i in range(3)]
    kill_all()
    assert not any(running(p.pid) for p in procs)
    assert live_processes() == []


def test_stderr_tail_and_exit_description(tmp_path):
    p = QemuProcess(["sh", "-c", "echo one >&2; echo two >&2; exit 3"], tmp_path / "err")
    assert p.wait(10) == 3
    assert p.stderr_tail(1) == "two"
    assert p.describe_exit() == "exit status 3"


def test_death_signal_kills_child_when_parent_is_sigkilled(tmp_path):
    """A parent that is SIGKILLed cannot clean up: the kernel must."""
    pidfile = tmp_path / "pid"
    code = (
        "import sys, time; from pathlib import Path;"
        "from harness.qemu.process import QemuProcess;"
        f"p = QemuProcess(['sleep', '100'], Path({str(tmp_path / 'err')!r}));"
        f"Path({str(pidfile)!r}).write_text(str(p.pid)); time.sleep(100)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.02)
    child = int(pidfile.read_text())
    assert running(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "child survived its parent's SIGKILL"
