"""Discover what a QEMU build is and can do, by asking the binary itself.

Nothing about a build is assumed from its version number alone: the machine
types, accelerators, migration capabilities and parameters all come from one
short-lived QMP session with the binary (``-M none``).  A porter's build (e.g.
``qemu-system-e2k``) gets the same treatment; commands known to crash some
builds (``query-target`` aborts the e2k fork) are avoided when the answer can be
had another way (the binary name).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from harness.cell import BuildSpec
from harness.errors import BuildError
from harness.qemu.process import QemuProcess, accept_or_exit

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT = 30.0


@dataclass(frozen=True)
class MachineType:
    name: str
    alias: str | None = None
    is_default: bool = False
    deprecated: bool = False


@dataclass
class QemuBuild:
    """A discovered QEMU build.  ``missing`` is set instead of raising when the
    binary is absent, so ``doctor`` can list it and cells can skip with a reason."""

    spec: BuildSpec
    version: tuple[int, int, int] = (0, 0, 0)
    package: str = ""
    arch: str = ""
    machines: dict[str, MachineType] = field(default_factory=dict)
    accelerators: tuple[str, ...] = ()
    #: accelerator -> None if usable on this host, else the reason it is not.
    accel_problems: dict[str, str | None] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    #: QMP command names the build offers (from query-qmp-schema).
    commands: frozenset[str] = frozenset()
    missing: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def brief(self) -> dict[str, Any]:
        """What results.json records of the build a cell ran on (``CellResult.builds``:
        known issues match their versions against it)."""
        return {"name": self.name, "binary": self.spec.binary, "version": self.version_text,
                "package": self.package, "missing": self.missing}

    def resolve_machine(self, name: str) -> str | None:
        """The concrete machine type for ``name`` (aliases like q35 resolve)."""
        if name in self.machines:
            return name
        for m in self.machines.values():
            if m.alias == name:
                return m.name
        return None

    def base_argv(self) -> list[str]:
        """Binary, data directories and the build's own extra arguments."""
        argv = [self.spec.binary]
        for d in self.spec.data_dirs:
            argv += ["-L", d]
        argv += list(self.spec.extra_args)
        return argv

    def env(self) -> dict[str, str]:
        return dict(self.spec.env)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for results and ``doctor --json``."""
        return {
            "name": self.name,
            "binary": self.spec.binary,
            "missing": self.missing,
            "version": self.version_text,
            "package": self.package,
            "arch": self.arch,
            "accelerators": {a: (p or "usable") for a, p in self.accel_problems.items()},
            "machines": sorted(self.machines),
            "capabilities": list(self.capabilities),
            "parameters": self.parameters,
        }


_ARCH_FROM_NAME = re.compile(r"qemu-system-([A-Za-z0-9_]+)$")
_cache: dict[tuple[Any, ...], QemuBuild] = {}


def kvm_host_problem() -> str | None:
    """Why KVM cannot be used by this user on this host, or None if it may work."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no read/write access to /dev/kvm (add this user to group 'kvm')"
    return None


def discover(spec: BuildSpec, *, refresh: bool = False) -> QemuBuild:
    """Discover ``spec``'s build; results are cached per binary identity."""
    binary = shutil.which(spec.binary) or spec.binary
    try:
        st = os.stat(binary)
    except OSError:
        return QemuBuild(spec=spec, missing=f"binary not found: {spec.binary}")
    if not os.access(binary, os.X_OK):
        return QemuBuild(spec=spec, missing=f"binary is not executable: {binary}")
    key = (spec, st.st_mtime_ns, st.st_size, kvm_host_problem())
    if not refresh and key in _cache:
        return _cache[key]
    log.debug("discovering build %s (%s)", spec.name, binary)
    build = asyncio.run(_discover(spec)) if not _in_loop() else _discover_in_thread(spec)
    log.info("build %s: QEMU %s, %s, accelerators %s, %d machine types, %d migration "
             "capabilities", spec.name, build.version_text, build.arch,
             ",".join(f"{a}{'' if p is None else '(unusable)'}"
                      for a, p in build.accel_problems.items()),
             len(build.machines), len(build.capabilities))
    _cache[key] = build
    return build


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _discover_in_thread(spec: BuildSpec) -> QemuBuild:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(_discover(spec))).result()


def _accelerators(spec: BuildSpec) -> tuple[str, ...]:
    """Accelerators compiled into the binary (``-accel help``)."""
    argv = [spec.binary, *[x for d in spec.data_dirs for x in ("-L", d)], "-accel", "help"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                             env={**os.environ, **dict(spec.env)}).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(spec.name, f"'-accel help' failed: {exc}") from exc
    names = [ln.strip() for ln in out.splitlines()[1:] if ln.strip()]
    return tuple(names)


async def _discover(spec: BuildSpec) -> QemuBuild:
    accels = _accelerators(spec)
    build = QemuBuild(spec=spec, accelerators=accels)
    want_kvm = "kvm" in accels and kvm_host_problem() is None
    with tempfile.TemporaryDirectory(prefix="mharness-discover-") as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        qmp = QMPClient(f"discover-{spec.name}")
        await qmp.start_server(sock)
        argv = [*build.base_argv(), "-M", "none", "-nodefaults", "-display", "none",
                "-qmp", f"unix:{sock}"]
        # Try KVM first and fall back to TCG in the same launch; query-kvm then
        # says which one QEMU actually took.
        if want_kvm:
            argv += ["-accel", "kvm", "-accel", "tcg"]
        elif "tcg" in accels:
            argv += ["-accel", "tcg"]
        proc = QemuProcess(argv, Path(tmp) / "stderr", env=dict(spec.env), name="discover")
        try:
            await _accept_or_exit(qmp, proc)
            await _fill(build, qmp)
            await qmp.execute("quit")
        except BuildError:
            raise
        except Exception as exc:  # any protocol or process failure
            tail = proc.stderr_tail()
            raise BuildError(spec.name, f"discovery failed: {exc}; {proc.describe_exit()}"
                             + (f"\nQEMU stderr:\n{tail}" if tail else "")) from exc
        finally:
            try:
                await qmp.disconnect()
            except (EOFError, ConnectionError, OSError):
                pass  # normal after 'quit'
            if proc.wait(3.0) is None:
                proc.kill()
    build.arch = build.arch or _arch_from_name(spec.binary) or ""
    for accel in accels:
        build.accel_problems.setdefault(accel, None if accel == "tcg" else "not probed")
    return build


async def _accept_or_exit(qmp: QMPClient, proc: QemuProcess, timeout: float = DISCOVERY_TIMEOUT) -> None:
    """Wait for QEMU to connect to our QMP socket, failing fast if it exits."""
    outcome = await accept_or_exit(qmp.accept(), proc, timeout)
    if outcome == "exited":
        raise BuildError(proc.name, f"QEMU exited before QMP: {proc.describe_exit()}\n"
                         f"{proc.stderr_tail()}")
    if outcome == "timeout":
        raise BuildError(proc.name, f"QEMU did not connect to QMP in {timeout:.0f} s")


def _arch_from_name(binary: str) -> str | None:
    m = _ARCH_FROM_NAME.search(os.path.basename(binary))
    return m.group(1) if m else None


async def _fill(build: QemuBuild, qmp: QMPClient) -> None:
    ver = await qmp.execute("query-version")
    q = ver["qemu"]
    build.version = (q["major"], q["minor"], q["micro"])
    build.package = ver.get("package", "").strip()

    schema = await qmp.execute("query-qmp-schema")
    build.commands = frozenset(e["name"] for e in schema if e.get("meta-type") == "command")

    # The arch comes from the binary's name when it has the usual form: some
    # builds (the e2k fork) abort on query-target because their target is
    # missing from the QAPI enum.
    build.arch = _arch_from_name(build.spec.binary) or ""
    if not build.arch and "query-target" in build.commands:
        build.arch = (await qmp.execute("query-target"))["arch"]

    for m in await qmp.execute("query-machines"):
        build.machines[m["name"]] = MachineType(
            name=m["name"], alias=m.get("alias"), is_default=bool(m.get("is-default")),
            deprecated=bool(m.get("deprecated")))

    build.capabilities = tuple(c["capability"] for c in await qmp.execute("query-migrate-capabilities"))
    build.parameters = dict(await qmp.execute("query-migrate-parameters"))

    if "kvm" in build.accelerators:
        host = kvm_host_problem()
        if host:
            build.accel_problems["kvm"] = host
        else:
            kvm = await qmp.execute("query-kvm")
            build.accel_problems["kvm"] = None if kvm.get("enabled") else \
                "KVM present but QEMU could not enable it (see 'mharness doctor')"
    if "tcg" in build.accelerators:
        build.accel_problems["tcg"] = None
