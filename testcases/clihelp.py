"""The ``mharness`` and ``pytest`` commands as the CLI tests run them: in a
subprocess from the checkout, on small matrices written for the test.

One place for the command lines (``python -m harness``, ``python -m pytest``
without its cache) and for the head those matrices share: Debian's system
QEMU as the required build, so a missing QEMU fails these tests (the harness
reports a missing required build as an error), never skips them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What the small matrices start with; each adds its targets, capsets and tiers.
MATRIX_HEAD = """\
version: 1
defaults:
  capabilities: {events: true}
  parameters: {max-bandwidth: 10G}
builds:
  system: {binary: /usr/bin/qemu-system-x86_64, required: true}
"""


def write_matrix(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def mharness(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``mharness ARGS`` run to its end, output captured as text."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


#: ``python3 -m harness`` with Ctrl-C restored first.  A pytest started as a
#: background job of a non-interactive shell (``cmd &``) inherits SIGINT
#: ignored, and Python then leaves it ignored (it only installs its
#: KeyboardInterrupt handler when SIGINT is at its default), so the tests that
#: send SIGINT would test the shell that started pytest, not the harness.
_MAIN_WITH_CTRL_C = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                     "from harness.cli import main; sys.exit(main(sys.argv[1:]))")


def start_mharness(*args: str) -> subprocess.Popen[bytes]:
    """``mharness ARGS`` started (stdout and stderr in one pipe), for tests
    that watch or signal it while it runs; SIGINT raises KeyboardInterrupt in
    it whatever this process inherited."""
    return subprocess.Popen([sys.executable, "-c", _MAIN_WITH_CTRL_C, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_pytest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own (``-q``, no cache folder written)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
