"""Building the Linux guest from Debian packages and the agent's source.

The recipe ``linux-x86_64`` (harness.guest.images) calls :func:`build_bundle`,
which makes, in a scratch folder:

- the kernel: Debian's ``linux-image-amd64`` (followed to the versioned
  package it depends on), fetched with ``apt-get download`` and unpacked with
  ``dpkg -x``; its ``vmlinuz`` and ``config``, and the virtio modules listed in
  ``images/linux/modules.txt`` with their dependencies (read from each
  module's ``.modinfo``, since Debian's package ships no ``modules.dep``: that
  is made by ``depmod`` at install time);
- the initramfs: Debian's ``busybox-static`` (fetched the same way), the
  ``init`` script, the modules and the agent, as a gzip-compressed ``newc``
  cpio archive written here in Python (device nodes need no root this way);
- the agent: ``images/linux/agent/*.c`` built with the host's Debian gcc,
  ``-static -O2``.

Then it boots the result once under TCG to copy the kernel's own symbol map
out (harness.guest.linux_kallsyms: ``/proc/kallsyms``, since Debian ships no
real System.map).

The result is one uncompressed tar ("bundle"): ``vmlinuz``, ``initrd.img``,
``config``, ``symbols.gz`` (the kernel image's symbols as offsets from
``_text``; absent where no QEMU was at hand) and ``manifest.json`` (package
versions, kernel release, modules in load order, the symbol capture).  Zero
padding after it is tar's own end-of-archive marker, so the image cache's
padding leaves it valid.  harness.guest.linux unpacks it next to
the cached image.

The cache key must change whenever the guest would: :func:`key_text` gives the
package versions apt would fetch now, the host gcc and libc6-dev (the agent
links libc statically) and dpkg.  Asking apt takes seconds on a loaded
machine, so the answer is remembered (in memory and in a small JSON file)
per fingerprint of the files it follows from (:func:`state_fingerprint`).

This module imports nothing from harness.guest.images (which imports it), so
its errors are its own :class:`LinuxBuildError`.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.fileio import write_atomic
from harness.guest import linux_kallsyms

__all__ = ["LinuxBuildError", "DebPackage", "INPUTS", "AGENT_SOURCES", "SYMBOLS_MEMBER",
           "key_text", "state_fingerprint",
           "resolve_packages", "build_bundle", "NewcArchive", "module_order"]

log = logging.getLogger(__name__)

#: The agent's sources (images/linux/agent/), in the order they are compiled.
AGENT_SOURCES = ("agent.h", "main.c", "channel.c", "memory.c", "disk.c", "net.c",
                 "heartbeat.c", "util.c")
#: The recipe's inputs, relative to images/; build_bundle gets them in this order.
INPUTS = ("linux/packages.txt", "linux/modules.txt", "linux/init") + tuple(
    f"linux/agent/{name}" for name in AGENT_SOURCES)

#: Busybox applets the init script and a person at the console use; linked in
#: /bin so the script needs no ``busybox --install`` at boot.
APPLETS = ("sh", "mount", "insmod", "ip", "cat", "echo", "sleep", "ls", "dmesg", "reboot",
           "poweroff", "sync", "ps", "free", "mkdir", "hexdump", "dd")

_TIMEOUT = 600.0
#: The bundle member with the kernel's symbol map (harness.guest.linux_symbols).
SYMBOLS_MEMBER = "symbols.gz"


class LinuxBuildError(HarnessError):
    """The Linux guest cannot be built: a package, tool or build step failed."""


@dataclass(frozen=True)
class DebPackage:
    role: str          # kernel, busybox
    name: str          # the package actually fetched (metapackages followed)
    version: str


def _run(argv: list[str], cwd: Path | None = None, what: str = "") -> str:
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                             timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LinuxBuildError(f"{what or argv[0]}: cannot run {' '.join(argv)}: {e}") from e
    if res.returncode != 0:
        raise LinuxBuildError(f"{what or argv[0]} failed (exit {res.returncode}): "
                              f"{' '.join(argv)}\n{(res.stderr or res.stdout).strip()[-2000:]}")
    return res.stdout


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LinuxBuildError(f"'{tool}' not found: install the Debian package {package} "
                              f"(scripts/setup.sh does)")
    return path


def _parse_packages(text: str) -> list[tuple[str, str, str]]:
    """(role, package, follow-prefix) lines of packages.txt."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise LinuxBuildError(f"packages.txt:{n}: expected 'role package [follow]', "
                                  f"got {line!r}")
        rows.append((parts[0], parts[1], parts[2] if len(parts) == 3 else ""))
    return rows


def _candidates(packages: list[str]) -> dict[str, tuple[str, str]]:
    """package -> (version, Depends) of the version apt would fetch now, for
    several packages in one ``apt-cache`` run (each run parses apt's lists)."""
    out = _run([_need("apt-cache", "apt"), "show", "--no-all-versions", *packages],
               what=f"apt-cache show {' '.join(packages)}")
    found: dict[str, tuple[str, str]] = {}
    for record in out.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", record, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], (fields["Version"], fields.get("Depends", "")))
    for package in packages:
        if package not in found:
            raise LinuxBuildError(f"apt knows no candidate for '{package}': run apt-get update")
    return found


def resolve_packages(packages_txt: str) -> list[DebPackage]:
    """The exact packages and versions to fetch, metapackages followed (two
    apt-cache runs: the packages named, then what they were followed to)."""
    rows = _parse_packages(packages_txt)
    first = _candidates([name for _, name, _ in rows]) if rows else {}
    chosen: list[tuple[str, str, str]] = []      # role, name, version ("": look up)
    follow_up = []
    for role, name, follow in rows:
        version, depends = first[name]
        if follow:
            deps = [d.strip().split()[0] for d in depends.split(",") if d.strip()]
            real = [d for d in deps if d.startswith(follow)]
            if len(real) != 1:
                raise LinuxBuildError(f"{name} {version} depends on {deps}: expected exactly "
                                      f"one package starting with '{follow}'")
            name, version = real[0], ""
            follow_up.append(name)
        chosen.append((role, name, version))
    second = _candidates(follow_up) if follow_up else {}
    return [DebPackage(role, name, version or second[name][0])
            for role, name, version in chosen]


def _dpkg_versions(packages: list[str]) -> dict[str, str]:
    """Installed versions (one dpkg-query run); "not installed" where none."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\n", *packages],
                             capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    found = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return {p: found.get(p, "not installed") for p in packages}


def _first_line(argv: list[str]) -> str:
    return _run(argv).splitlines()[0].strip()


@functools.lru_cache(maxsize=4)
def _key_text(packages_txt: str, fingerprint: str) -> str:
    del fingerprint  # only part of the cache key: what the answer depends on
    lines = [f"deb {p.role} {p.name}={p.version}" for p in resolve_packages(packages_txt)]
    lines.append(f"gcc {_first_line([_need('gcc', 'gcc'), '--version'])}")
    # libc6-dev: the agent links libc statically; dpkg unpacks the packages.
    lines += [f"{p} {v}" for p, v in _dpkg_versions(["libc6-dev", "dpkg"]).items()]
    return "\n".join(lines) + "\n"


#: What apt's candidate versions and the toolchain's versions follow from:
#: its package lists, its configuration (sources, pinning), dpkg's database
#: (installed versions: libc6-dev, dpkg, and a pinned installed package).
APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/var/lib/dpkg/status"))
#: Key texts remembered across processes (newest last), per fingerprint.
KEY_CACHE_ENTRIES = 8


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path} -"
    return f"{path} {st.st_size} {st.st_mtime_ns}"


def state_fingerprint(packages_txt: str, state: tuple[Path, ...] = APT_STATE) -> str:
    """A hash of everything :func:`key_text`'s answer follows from, made of
    file sizes and mtimes only (no apt run): the recipe's package list, the
    files under ``state`` (apt update rewrites its lists, an install or
    upgrade dpkg's status, a pin /etc/apt) and the binaries of apt-cache,
    gcc and dpkg-query."""
    h = hashlib.sha256(packages_txt.encode())
    for root in state:
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.name != "lock" and "partial" not in f.parts and not f.is_dir():
                h.update(_stamp(f).encode() + b"\n")
    for tool in ("apt-cache", "gcc", "dpkg-query"):
        found = shutil.which(tool)
        h.update(_stamp(Path(os.path.realpath(found)) if found else Path(tool)).encode())
    h.update(os.environ.get("APT_CONFIG", "").encode())
    return h.hexdigest()[:32]


def key_text(packages_txt: str, cache: Path | None = None) -> str:
    """What the image key needs beyond the recipe files: package versions and
    the toolchain.

    Asking apt-cache, gcc and dpkg costs 1.5-3 s on a loaded machine, once
    per process before; now the answer is remembered per
    :func:`state_fingerprint` in memory and, given ``cache`` (a JSON file),
    across processes.  Any change apt or dpkg makes to the files the answer
    follows from changes the fingerprint, so a remembered answer is never
    stale: it is asked again."""
    fingerprint = state_fingerprint(packages_txt)
    if cache is None:
        return _key_text(packages_txt, fingerprint)
    try:
        known = json.loads(cache.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(fingerprint), str):
        return known[fingerprint]
    text = _key_text(packages_txt, fingerprint)
    known.pop(fingerprint, None)
    known[fingerprint] = text
    keep = dict(list(known.items())[-KEY_CACHE_ENTRIES:])
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(keep, indent=1))
    except OSError as e:
        log.warning("cannot remember the Linux image key in %s: %s", cache, e)
    return text


# --- building -------------------------------------------------------------------

def _download(packages: list[DebPackage], work: Path) -> dict[str, Path]:
    """``apt-get download`` each package into ``work/debs``; role -> .deb."""
    debs = work / "debs"
    debs.mkdir()
    argv = [_need("apt-get", "apt"), "-q", "download"]
    if os.geteuid() == 0:
        # As root apt drops to the _apt user to download, which cannot write
        # into a private folder under root's home.
        argv[1:1] = ["-o", "APT::Sandbox::User=root"]
    _run(argv + [f"{p.name}={p.version}" for p in packages], cwd=debs, what="apt-get download")
    found = {}
    for p in packages:
        hits = sorted(debs.glob(f"{p.name}_*.deb"))
        if len(hits) != 1:
            raise LinuxBuildError(f"apt-get download left {len(hits)} files for {p.name}")
        found[p.role] = hits[0]
    return found


def _unpack(deb: Path, dest: Path) -> Path:
    _run([_need("dpkg", "dpkg"), "-x", str(deb), str(dest)], what=f"dpkg -x {deb.name}")
    return dest


def _modinfo_depends(ko: Path) -> list[str]:
    """A module's dependencies, from the ``depends=`` string of its .modinfo
    section (what depmod reads to write modules.dep)."""
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if m is None:
        return []
    return [d for d in m.group(1).decode().split(",") if d]


def module_order(wanted: list[str], index: dict[str, Path]) -> list[str]:
    """``wanted`` and their dependencies, each after what it depends on.

    ``index`` maps a module name (dashes and underscores alike, as the kernel
    treats them) to its .ko file."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            raise LinuxBuildError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if key not in index:
            raise LinuxBuildError(f"module '{name}' (needed by "
                                  f"{' -> '.join(chain) or 'modules.txt'}) is not in the "
                                  f"kernel package")
        state[key] = "visiting"
        for dep in _modinfo_depends(index[key]):
            visit(dep, chain + (name,))
        state[key] = "done"
        order.append(key)

    for name in wanted:
        visit(name, ())
    return order


def _kernel_parts(root: Path, modules_txt: str) -> tuple[Path, Path, str, list[tuple[str, Path]]]:
    """vmlinuz, config, release and ordered (name, .ko) from an unpacked kernel."""
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        raise LinuxBuildError(f"the kernel package holds {len(vmlinuz)} vmlinuz files")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    config = root / "boot" / f"config-{release}"
    moddir = root / "lib" / "modules" / release
    index = {p.name.removesuffix(".ko").replace("-", "_"): p
             for p in moddir.rglob("*.ko")}
    if not index:
        raise LinuxBuildError(f"no modules under {moddir} (compressed modules are not "
                              f"supported by this build)")
    wanted = [line.split("#", 1)[0].strip() for line in modules_txt.splitlines()]
    order = module_order([w for w in wanted if w], index)
    return vmlinuz[0], config, release, [(name, index[name]) for name in order]


def _compile_agent(sources: list[Path], work: Path) -> bytes:
    out = work / "mhagent"
    gcc = _need("gcc", "gcc")
    c_files = [str(p) for p in sources if p.suffix == ".c"]
    include = {str(p.parent) for p in sources}
    argv = [gcc, "-static", "-O2", "-g0", "-s", "-Wall", "-Wextra", "-std=gnu11", "-pthread",
            *(f"-I{d}" for d in sorted(include)), "-o", str(out), *c_files]
    _run(argv, cwd=work, what="gcc (the guest agent)")
    return out.read_bytes()


class NewcArchive:
    """A cpio archive in the ``newc`` format the kernel unpacks as initramfs
    (Documentation/driver-api/early-userspace/buffer-format.rst).

    Written in Python rather than with cpio(1): device nodes and root
    ownership need no privileges, and every field is fixed (mtime 0), so the
    same inputs give the same bytes."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        if name in self._names:
            raise LinuxBuildError(f"initramfs: '{name}' added twice")
        self._names.add(name)
        raw = name.encode() + b"\x00"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(raw), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(f"{v:08x}".encode() for v in fields))
        self._buf.write(raw)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\x00" * (-self._buf.tell() % 4))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._buf.seek(0, io.SEEK_END)
        self._entry("TRAILER!!!", 0, nlink=1)
        return self._buf.getvalue()


def _initramfs(busybox: bytes, init: bytes, agent: bytes,
               modules: list[tuple[str, Path]]) -> bytes:
    a = NewcArchive()
    for d in ("bin", "sbin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        a.add_dir(d)
    # The kernel opens /dev/console for init before anything is mounted.
    a.add_chardev("dev/console", 5, 1)
    a.add_chardev("dev/null", 1, 3, 0o666)
    a.add_file("bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        a.add_symlink(f"bin/{applet}", "busybox")
    a.add_file("init", init, 0o755)
    a.add_file("sbin/mhagent", agent, 0o755)
    for name, ko in modules:
        a.add_file(f"lib/modules/{name}.ko", ko.read_bytes())
    a.add_file("etc/modules", "".join(f"{name}\n" for name, _ in modules).encode())
    return gzip.compress(a.finish(), compresslevel=6, mtime=0)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def build_bundle(inputs: list[Path], work: Path) -> bytes:
    """The recipe's build step: ``inputs`` are :data:`INPUTS` as files."""
    if len(inputs) != len(INPUTS):
        raise LinuxBuildError(f"expected {len(INPUTS)} inputs, got {len(inputs)}")
    files = dict(zip(INPUTS, inputs))
    agent_dir = files[f"linux/agent/{AGENT_SOURCES[0]}"].parent
    unlisted = sorted({p.name for p in agent_dir.glob("*.[ch]")} - set(AGENT_SOURCES))
    if unlisted:
        raise LinuxBuildError(f"agent sources not in the recipe (add them to "
                              f"harness.guest.linux_build.AGENT_SOURCES): {unlisted}")
    packages_txt = files["linux/packages.txt"].read_text()
    packages = resolve_packages(packages_txt)
    by_role = {p.role: p for p in packages}
    for role in ("kernel", "busybox"):
        if role not in by_role:
            raise LinuxBuildError(f"packages.txt names no '{role}' package")
    agent = _compile_agent([files[f"linux/agent/{n}"] for n in AGENT_SOURCES], work)
    debs = _download(packages, work)
    kroot = _unpack(debs["kernel"], work / "kernel")
    broot = _unpack(debs["busybox"], work / "busybox")
    vmlinuz, config, release, modules = _kernel_parts(kroot, files["linux/modules.txt"].read_text())
    busybox = broot / "bin" / "busybox"
    if not busybox.is_file():
        raise LinuxBuildError(f"{by_role['busybox'].name} holds no bin/busybox")
    initrd = _initramfs(busybox.read_bytes(), files["linux/init"].read_bytes(), agent, modules)
    initrd_file = work / "initrd.img"
    initrd_file.write_bytes(initrd)
    try:
        symbols, symbols_info = linux_kallsyms.capture(vmlinuz, initrd_file, work)
    except linux_kallsyms.KallsymsError as e:
        raise LinuxBuildError(f"kernel symbol map: {e}") from e
    manifest = {
        "packages": {p.role: {"name": p.name, "version": p.version} for p in packages},
        "kernel_release": release,
        "modules": [name for name, _ in modules],
        "agent_bytes": len(agent),
        "key_text": key_text(packages_txt),
        "symbols": symbols_info,
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_member(tar, "vmlinuz", vmlinuz.read_bytes())
        _tar_member(tar, "initrd.img", initrd)
        _tar_member(tar, "config", config.read_bytes())
        if symbols is not None:
            _tar_member(tar, SYMBOLS_MEMBER, symbols)
        _tar_member(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
    # The unpacked kernel is 400 MB: do not leave it to the caller's cleanup.
    shutil.rmtree(kroot, ignore_errors=True)
    log.info("built Linux guest: kernel %s, initrd %d bytes, modules %s", release,
             len(initrd), ", ".join(manifest["modules"]))
    return out.getvalue()
