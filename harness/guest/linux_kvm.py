"""Can this host's KVM boot the Linux guest?  Asked once, remembered.

Under some hosts' KVM a stock Linux kernel never starts (here: the nested,
paravirtualised ``kvm_pvm``, where the bare-metal dirtier runs but Debian's
kernel prints nothing).  A Linux cell on KVM there would only time out, so the
workload asks first: it boots the guest once under KVM with the agent off and
waits for the kernel to reach its init (``Run /init``, init/main.c
run_init_process), or for :data:`PROBE_TIMEOUT`.  The answer is cached per
host kernel, CPU flags, QEMU binary and guest kernel in
``<cache>/linux-kvm.json``, so the probe runs once per machine and build.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

from harness.cell import BuildSpec
from harness.fileio import write_atomic
from harness.guest.images import cache_dir
from harness.waiting import WaitTimeout, poll_until_sync

__all__ = ["PROBE_TIMEOUT", "kvm_boot_problem", "probe"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 30.0
#: What the kernel prints once it starts userspace.
BOOTED = b"Run /init"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _key(spec: BuildSpec, kernel: Path) -> str:
    binary = os.path.realpath(spec.binary)
    try:
        stamp = os.stat(binary).st_mtime_ns
    except OSError:
        stamp = 0
    text = "\n".join([platform.release(), _cpu_flags(), binary, str(stamp), kernel.name,
                      str(kernel.stat().st_size)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def probe(argv: list[str], env: dict[str, str] | None = None,
          timeout: float = PROBE_TIMEOUT) -> str | None:
    """Run ``argv`` (a QEMU with the console on stdout) until the kernel
    reaches init (None) or ``timeout`` (the problem, with what it printed)."""
    t0 = time.monotonic()
    out = b""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    except OSError as e:
        return f"cannot start {argv[0]}: {e}"
    stdout = proc.stdout
    assert stdout is not None

    def look() -> str:
        """What the console says so far: booted, exited (and nothing left to
        read) or "" (neither yet)."""
        nonlocal out
        chunk = stdout.read(65536)
        if chunk:
            out += chunk
            return "booted" if BOOTED in out else ""
        return "exited" if proc.poll() is not None else ""
    try:
        os.set_blocking(stdout.fileno(), False)
        if poll_until_sync(look, bool, timeout=timeout, interval=0.1,
                           what="the KVM guest's kernel at init") == "booted":
            return None
    except WaitTimeout:
        pass
    finally:
        proc.kill()
        proc.wait()
    tail = out.decode("ascii", "replace").strip().splitlines()[-3:]
    said = " | ".join(tail) if tail else "no console output"
    return (f"the Linux guest's kernel does not boot under this host's KVM (not at init "
            f"after {time.monotonic() - t0:.0f} s: {said})")


def kvm_boot_problem(spec: BuildSpec, kernel: Path, initrd: Path, cpu: str | None) -> str | None:
    """Why this host's KVM cannot boot the Linux guest with ``spec``, or None
    (cached per host and build: see the module doc)."""
    cache = cache_dir() / "linux-kvm.json"
    key = _key(spec, kernel)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]["problem"]
    argv = [spec.binary, *(a for d in spec.data_dirs for a in ("-L", d)), *spec.extra_args,
            "-nodefaults", "-display", "none", "-machine", "q35", "-accel", "kvm",
            "-cpu", cpu or "qemu64", "-m", "256M", "-kernel", str(kernel), "-initrd",
            str(initrd), "-append", "console=ttyS0 nokaslr panic=0 mh.agent=off",
            "-serial", "stdio", "-no-reboot"]
    log.info("probing whether KVM boots the Linux guest here (once; up to %.0f s)",
             PROBE_TIMEOUT)
    problem = probe(argv, dict(spec.env), PROBE_TIMEOUT)
    known[key] = {"problem": problem, "build": spec.name, "binary": spec.binary,
                  "host_kernel": platform.release(),
                  "probed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(cache, json.dumps(known, indent=1))
    return problem
