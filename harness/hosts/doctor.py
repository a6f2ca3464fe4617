"""``mharness doctor --hosts``: can cells run on each host of the inventory?

For every host (or the named ones) it connects within the host's
``connect-timeout`` with strict host keys (harness.hosts.ssh refuses an
unknown or changed key with an error naming the host and the known-hosts
file), then asks the host, through the same :class:`~harness.hosts.base.Host`
interface the cells use, for each matrix build (binary at its path and its
version, data directories), KVM (``/dev/kvm`` opened read-write), free memory
(MemAvailable) and its clock offset to this machine with the uncertainty
(:meth:`Host.clock`: the hosts layer's own measurement, not a second one).

Why a separate check and not the first cell failing: a lab host with a
missing build or an unknown key should be found in seconds, before a shard
spends its slot, and with a message naming the host and what to fix.  Hosts
are checked at the same time, so N unreachable hosts cost one connect-timeout,
not N.

A host is *unusable* (exit 1) when it cannot be reached, its key is refused,
a command on it fails, or a *required* build is missing there.  An optional
build missing, KVM unusable or less free memory than the largest cell needs
are warnings: TCG cells, and cells of the other builds, still run there.
"""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from harness.cell import BuildSpec
from harness.hosts.base import ClockReading, Host, HostError, HostKeyError
from harness.hosts.inventory import HostSpec
from harness.units import GiB, MiB

log = logging.getLogger(__name__)

#: Longest a single command on a reachable host may take (``qemu --version``,
#: the facts script): a host that connects but hangs is reported, not waited on.
COMMAND_TIMEOUT = 30.0

#: First line of ``qemu-system-* --version`` (QEMU's softmmu/vl.c version(),
#: system/vl.c in 10.0): "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7...)".
_VERSION = re.compile(r"QEMU emulator version (\d+(?:\.\d+)*)\s*(?:\((.*)\))?")


@dataclass
class BuildCheck:
    """One matrix build as found on one host."""

    name: str
    binary: str
    required: bool
    version: str = ""
    package: str = ""
    #: Why the build cannot be used there (None: present).
    missing: str | None = None


@dataclass
class HostReport:
    """What the doctor found on one host.  ``error`` set: not reached at all."""

    name: str
    address: str
    local: bool
    connect_s: float | None = None
    error: str = ""
    #: ``host-key`` (unknown or changed key refused), ``unreachable``, ``host``
    #: (reached, but a command failed).
    error_kind: str = ""
    builds: list[BuildCheck] = field(default_factory=list)
    #: None: /dev/kvm opens read-write; else why not.  Unset when not reached.
    kvm: str | None = None
    mem_available: int | None = None
    clock: ClockReading | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.error and not self.problems

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usable"] = self.usable
        d["kvm"] = None if self.error else (self.kvm or "usable")
        d["clock"] = None if self.clock is None else {
            "offset_s": self.clock.offset, "uncertainty_s": self.clock.uncertainty}
        return d


def _address(spec: HostSpec) -> str:
    if spec.is_local:
        return "(this machine)"
    return f"{spec.user}@{spec.addr}:{spec.port}" + (f" (netns {spec.netns})" if spec.netns else "")


def check_build(host: Host, spec: BuildSpec) -> BuildCheck:
    """``spec``'s binary at its path on ``host`` and its version.

    ``--version`` runs with the build's environment (a private prefix needs
    its library path) through ``env NAME=VALUE``: still one argv list, quoted
    by the host, never a command string."""
    check = BuildCheck(spec.name, spec.binary, spec.required)
    env = [f"{k}={v}" for k, v in spec.env]
    argv = (["env", *env] if env else []) + [spec.binary, "--version"]
    try:
        res = host.run(argv, timeout=COMMAND_TIMEOUT)
    except HostError as exc:  # this machine: the OSError of starting it
        cause = exc.__cause__
        check.missing = (f"binary not found: {spec.binary}" if isinstance(cause, FileNotFoundError)
                         else f"binary not executable: {spec.binary}"
                         if isinstance(cause, PermissionError) else f"cannot run it: {exc.reason}")
        return check
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        # 127/126: the remote shell's "not found" / "cannot execute" (POSIX sh)
        why = {127: "binary not found", 126: "binary not executable"}.get(
            res.returncode, f"--version exited {res.returncode}")
        check.missing = f"{why}: {spec.binary}" + (f" ({err[-1]})" if err else "")
        return check
    m = _VERSION.search(res.stdout.decode(errors="replace"))
    if m is None:
        check.missing = f"{spec.binary} --version printed no QEMU version"
        return check
    check.version, check.package = m.group(1), (m.group(2) or "").strip()
    for d in spec.data_dirs:
        if host.run(["test", "-d", d], timeout=COMMAND_TIMEOUT).returncode != 0:
            check.missing = f"data directory {d} missing"
            break
    return check


def check_host(spec: HostSpec, builds: Sequence[BuildSpec], *, min_memory: int = 0,
               open_host: Callable[[HostSpec], Host] | None = None) -> HostReport:
    """Everything the doctor says about one host; never raises a HostError."""
    if open_host is None:
        from harness.hosts import host_for
        open_host = host_for
    report = HostReport(spec.name, _address(spec), spec.is_local)
    t0 = time.monotonic()
    try:
        host = open_host(spec)
    except HostKeyError as exc:
        report.error, report.error_kind = str(exc), "host-key"
        return report
    except HostError as exc:
        report.error, report.error_kind = str(exc), "unreachable"
        return report
    report.connect_s = time.monotonic() - t0
    try:
        report.builds = [check_build(host, b) for b in builds]
        report.kvm = host.kvm_usable()
        report.mem_available = host.free_memory()
        report.clock = host.clock()
    except HostError as exc:
        report.error, report.error_kind = str(exc), "host"
        return report
    for b in report.builds:
        if b.missing:
            (report.problems if b.required else report.warnings).append(
                f"build '{b.name}' {'(required) ' if b.required else ''}{b.missing}")
    if report.kvm is not None:
        report.warnings.append(f"KVM not usable ({report.kvm}): only TCG cells can run here")
    if min_memory and report.mem_available is not None and report.mem_available < min_memory:
        report.warnings.append(f"MemAvailable {_bytes(report.mem_available)} is less than the "
                               f"largest cell needs ({_bytes(min_memory)}: source and destination)")
    return report


def check_hosts(specs: Sequence[HostSpec], builds: Sequence[BuildSpec], *, min_memory: int = 0,
                open_host: Callable[[HostSpec], Host] | None = None) -> list[HostReport]:
    """:func:`check_host` for every spec at once (one thread each), in order."""
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix="doctor") as pool:
        return list(pool.map(lambda s: check_host(s, builds, min_memory=min_memory,
                                                  open_host=open_host), specs))


def select_hosts(inventory: dict[str, HostSpec], names: str) -> list[HostSpec]:
    """``--hosts a,b`` (empty: every host), unknown names refused by the caller's error."""
    if not names:
        return list(inventory.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in inventory]
    if unknown:
        raise KeyError(f"unknown host(s) {', '.join(unknown)} (inventory: "
                       f"{', '.join(inventory)})")
    return [inventory[n] for n in wanted]


# -- the readable table -------------------------------------------------------

def _bytes(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def _clock(r: HostReport) -> str:
    if r.clock is None:
        return "-"
    if r.local:
        return "0 (this clock)"
    return f"{r.clock.offset * 1e3:+.1f} ms ± {r.clock.uncertainty * 1e3:.1f} ms"


def _row(r: HostReport) -> list[str]:
    if r.error:
        return [r.name, r.address, "-", "-", "-", "-", "-", "UNUSABLE"]
    builds = ", ".join(f"{b.name} {b.version}" if not b.missing else f"{b.name} MISSING"
                       for b in r.builds) or "-"
    return [r.name, r.address, "-" if r.local else f"{r.connect_s:.2f} s", builds,
            "usable" if r.kvm is None else "NO", _bytes(r.mem_available or 0), _clock(r),
            "ok" if r.usable else "UNUSABLE"]


HEADER = ["host", "address", "connect", "builds", "kvm", "MemAvailable",
          "clock offset (host - here)", "status"]


def format_table(reports: Sequence[HostReport]) -> str:
    """One row per host, then every error, problem and warning, each naming its host."""
    rows = [HEADER] + [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    notes = []
    for r in reports:
        if r.error:
            notes.append(f"{r.name}: UNUSABLE: {r.error}")
        notes += [f"{r.name}: UNUSABLE: {p}" for p in r.problems]
        notes += [f"{r.name}: warning: {w}" for w in r.warnings]
    usable = sum(r.usable for r in reports)
    return "\n".join(lines + ([""] + notes if notes else [])
                     + [f"{usable} of {len(reports)} host(s) usable"])
