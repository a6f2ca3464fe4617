"""Process handling, with a stand-in process: the kernel's death signal and
the PID registry are what is tested here, not QEMU (testcases/test_teardown.py
proves the same against real QEMU)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from harness.qemu.process import (QemuProcess, accept_or_exit, kill_all, live_processes,
                                  wait_exited)
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


def test_wait_exited_gives_the_status_or_none(tmp_path):
    """Watched through its pidfd: the status once it ends, None while it runs."""
    quick = QemuProcess(["sh", "-c", "sleep 0.1; exit 3"], tmp_path / "err1")
    slow = QemuProcess(["sleep", "100"], tmp_path / "err2")
    try:
        assert asyncio.run(wait_exited(quick, 30.0)) == 3
        assert quick not in live_processes()
        assert asyncio.run(wait_exited(slow, 0.1)) is None
        assert slow.running
    finally:
        slow.kill()


class _Remote:
    """A process seen only through poll() (as a remote host's): polled for its end."""

    name = "remote"

    def __init__(self, ends_after: int) -> None:
        self.looks = 0
        self.ends_after = ends_after

    def poll(self):
        self.looks += 1
        return 0 if self.looks > self.ends_after else None


def test_wait_exited_polls_a_process_it_cannot_watch():
    assert asyncio.run(wait_exited(_Remote(3), 30.0)) == 0
    assert asyncio.run(wait_exited(_Remote(10 ** 9), 0.1)) is None


def test_accept_or_exit_says_which_came_first(tmp_path):
    async def never() -> None:
        await asyncio.Event().wait()

    async def soon() -> None:
        await asyncio.sleep(0.05)

    async def broken() -> None:
        raise EOFError("handshake")

    dies = QemuProcess(["sh", "-c", "exit 1"], tmp_path / "err1")
    runs = QemuProcess(["sleep", "100"], tmp_path / "err2")
    try:
        t = time.monotonic()
        assert asyncio.run(accept_or_exit(never(), dies, 30.0)) == "exited"
        assert time.monotonic() - t < 20, "the exit was not noticed before the timeout"
        assert asyncio.run(accept_or_exit(never(), runs, 0.1)) == "timeout"
        assert asyncio.run(accept_or_exit(soon(), runs, 30.0)) == "accepted"
        try:
            asyncio.run(accept_or_exit(broken(), runs, 30.0))
        except EOFError:
            pass
        else:
            raise AssertionError("accept's own error was not raised")
    finally:
        runs.kill()
