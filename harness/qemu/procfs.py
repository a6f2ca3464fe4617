"""Reading processes from /proc: whether a PID still runs, its children, and
whether it is a QEMU.  The teardown tests use these to prove that no QEMU the
harness started outlives it; nothing here ever signals a process."""
from __future__ import annotations

import os
import time
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (proc(5): field 3,
    the state, is index 0), or None when the process is gone.  The name is in
    parentheses and may itself hold spaces and ')', hence the split at the last
    ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> set[int]:
    """The direct children of ``pid`` (all its threads' children)."""
    kids: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids |= {int(x) for x in f.read().split()}
    except OSError:
        pass
    return kids


def descendants(pid: int) -> set[int]:
    """Children, grandchildren, ... of ``pid`` (e.g. a runner's workers' QEMUs)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for kid in children(todo.pop()):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def is_qemu(pid: int) -> bool:
    try:
        return b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def still_running(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait up to ``timeout`` for ``pids`` to end; return the ones still running."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if running(p)}
        if left:
            time.sleep(0.05)
    return left
