"""Runtime folders of dead harness processes are swept; live ones are kept."""
from __future__ import annotations

import os
import subprocess

from harness.run.rundir import OWNER_FILE, PREFIX, runtime_dir, sweep_stale


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_runtime_dir_is_private_and_owned(tmp_path):
    d = runtime_dir()
    try:
        assert oct(d.stat().st_mode & 0o777) == "0o700"
        assert (d / OWNER_FILE).read_text() == str(os.getpid())
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def test_sweep_removes_only_dead_owners(tmp_path):
    dead = tmp_path / f"{PREFIX}dead"
    live = tmp_path / f"{PREFIX}live"
    other = tmp_path / "not-ours"
    for d in (dead, live, other):
        d.mkdir()
        (d / "src.ram").write_bytes(b"x")
    (dead / OWNER_FILE).write_text(str(_dead_pid()))
    (live / OWNER_FILE).write_text(str(os.getpid()))
    (other / OWNER_FILE).write_text(str(_dead_pid()))
    removed = sweep_stale(tmp_path)
    assert removed == [dead]
    assert not dead.exists() and live.exists() and other.exists()
