"""A remote host over SSH (paramiko), with strict host keys.

Host keys: the inventory's ``known-hosts`` file (default ``~/.ssh/known_hosts``)
must already hold the host's key.  An unknown key or a changed one is refused
with :class:`HostKeyError` naming the host; only ``trust-on-first-use: true``
accepts an unknown key (and records it in that file).  A changed key is
refused even then.

One SSH connection per host spec, reused by every cell of the process
(:func:`connect`); closing it (or the harness dying) ends every remote
process started through it, since each runs under the watchdog of
harness.hosts.remote_scripts tied to its channel.

Commands are argv lists joined with :func:`shlex.join`: the remote shell
sees each item as one word, whatever it contains.
"""
from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import paramiko

from harness.hosts.base import HASH_CHUNK, ClockReading, HostError, HostKeyError, RunResult
from harness.hosts.inventory import HostSpec
from harness.hosts.local import file_sha256
from harness.hosts.netns import connect_in_netns
from harness.hosts.remote_scripts import AGENT, CHUNK_HASHES, FACTS, STRIDED, SWEEP, WATCHDOG
from harness.qemu.process import describe_exit_status

log = logging.getLogger(__name__)

#: One id per harness process: the owner marker of every remote process it starts.
RUN_ID = f"mh-{os.getpid()}-{uuid.uuid4().hex[:8]}"

START_TIMEOUT = 30.0
#: Where guest RAM files go on a remote host (tmpfs: see SshHost.ram_dir).
RAM_ROOT = "/dev/shm/mharness-runs"


class _TofuPolicy(paramiko.MissingHostKeyPolicy):
    """Accept an unknown key and record it (``trust-on-first-use: true`` only)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        log.warning("%s: unknown host key %s %s accepted (trust-on-first-use), saved to %s",
                    hostname, key.get_name(), key.fingerprint, self.path)
        client.get_host_keys().add(hostname, key.get_name(), key)
        client.save_host_keys(self.path)


class _Agent:
    """One helper process on the host (harness.hosts.remote_scripts.AGENT)
    on its own exec channel: a request is a JSON line out and a JSON line
    back, one at a time.  Broken (the channel closed, a timeout, a bad
    reply): :attr:`broken` is set and the pool drops it."""

    def __init__(self, host: "SshHost") -> None:
        self.host = host
        self.chan = host._exec(["python3", "-c", AGENT])
        self.replies = self.chan.makefile("rb")
        self.broken = False

    def call(self, request: dict, timeout: float, what: str) -> dict:
        try:
            self.chan.settimeout(timeout)
            self.chan.sendall(json.dumps(request).encode() + b"\n")
            line = self.replies.readline()
        except socket.timeout as exc:
            self.close()
            raise HostError(self.host.name, f"{what} did not finish in {timeout:.0f} s") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise HostError(self.host.name, f"{what}: {exc}") from exc
        if not line:
            self.close()
            err = b""
            if self.chan.recv_stderr_ready():
                err = self.chan.recv_stderr(4096)
            raise HostError(self.host.name, f"{what}: the host's helper ended "
                            f"({err.decode(errors='replace').strip() or 'no message'})")
        return json.loads(line)

    def close(self) -> None:
        self.broken = True
        try:
            self.chan.close()
        except (paramiko.SSHException, OSError, EOFError):
            pass


class SshHost:
    """A host reached over SSH.  Use :func:`connect` to share connections.

    Commands and the small programs of harness.hosts.remote_scripts go to a
    long-lived helper on the host (:class:`_Agent`: one per call in flight,
    kept for the next), not to a new exec channel each: at load on 2 cores an
    exec channel cost 0.4 s and a ``python3`` start 0.6-1.0 s, paid 14-18
    times a cell (benchmarks/README.md, ``remote_cell.py``).  QEMU itself
    still starts on its own channel, under the session watchdog.
    """

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._forwards: dict[int, str] = {}
        self._swept = False
        self._agents: list[_Agent] = []
        #: A watchdog already started on the host, waiting for its spec: a
        #: QEMU start then costs no Python start-up (see :meth:`start`).
        self._standby: paramiko.Channel | None = None

    @property
    def is_local(self) -> bool:
        return False

    # -- connection --------------------------------------------------------
    def _target(self) -> str:
        return f"{self.spec.user}@{self.spec.addr}:{self.spec.port}"

    def transport(self) -> paramiko.Transport:
        with self._lock:
            if self._client is not None:
                t = self._client.get_transport()
                if t is not None and t.is_active():
                    return t
                self._client.close()
                self._client = self._sftp = None
                for agent in self._agents:
                    agent.broken = True
                self._agents = []
                self._standby = None
            self._client = self._connect()
            t = self._client.get_transport()
            assert t is not None
            t.set_keepalive(5)
        if not self._swept:
            self._swept = True
            self.sweep()
        return t

    def _connect(self) -> paramiko.SSHClient:
        spec = self.spec
        client = paramiko.SSHClient()
        known = spec.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        if os.path.exists(known):
            client.load_host_keys(known)
        client.set_missing_host_key_policy(
            _TofuPolicy(known) if spec.trust_on_first_use else paramiko.RejectPolicy())
        t0 = time.monotonic()
        try:
            sock = (connect_in_netns(spec.netns, spec.addr, spec.port, spec.connect_timeout)
                    if spec.netns else
                    socket.create_connection((spec.addr, spec.port), spec.connect_timeout))
        except OSError as exc:
            raise HostError(self.name, f"cannot reach {self._target()} within "
                            f"{spec.connect_timeout:.0f} s: {exc}") from exc
        try:
            client.connect(spec.addr, port=spec.port, username=spec.user,
                           key_filename=spec.key or None, look_for_keys=not spec.key,
                           allow_agent=False, sock=sock, timeout=spec.connect_timeout,
                           banner_timeout=spec.connect_timeout, auth_timeout=spec.connect_timeout)
        except paramiko.BadHostKeyException as exc:
            client.close()  # stops the transport thread before its socket goes
            sock.close()
            raise HostKeyError(self.name, f"host key of {self._target()} CHANGED: got "
                               f"{exc.key.get_name()} {exc.key.fingerprint}, {known} has "
                               f"{exc.expected_key.fingerprint}; refused (remove the old key "
                               f"from {known} only if you know why it changed)") from exc
        except paramiko.SSHException as exc:
            client.close()
            sock.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(self.name, f"host key of {self._target()} is unknown: not in "
                                   f"{known}; refused (add it with ssh-keyscan after checking "
                                   "its fingerprint, or set trust-on-first-use: true)") from exc
            raise HostError(self.name, f"SSH to {self._target()} failed: {exc}") from exc
        except OSError as exc:
            client.close()
            sock.close()
            raise HostError(self.name, f"SSH to {self._target()} failed: {exc}") from exc
        log.info("%s: connected to %s in %.2f s", self.name, self._target(),
                 time.monotonic() - t0)
        return client

    def close(self) -> None:
        with self._lock:
            agents, self._agents = self._agents, []
            self._standby = None
            if self._client is not None:
                self._client.close()
            self._client = self._sftp = None
        for agent in agents:
            agent.close()

    def sftp(self) -> paramiko.SFTPClient:
        t = self.transport()
        with self._lock:
            if self._sftp is None:
                self._sftp = paramiko.SFTPClient.from_transport(t)
            return self._sftp

    # -- commands ----------------------------------------------------------
    def _exec(self, argv: Sequence[str]) -> paramiko.Channel:
        command = shlex.join(list(argv))
        try:
            chan = self.transport().open_session()
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.name, f"cannot run {argv[0]}: {exc}") from exc
        return chan

    def _ask(self, request: dict, timeout: float, what: str) -> dict:
        """One request to an idle helper (a new one when all are busy)."""
        self.transport()  # reconnects, and drops the old connection's helpers, if it died
        with self._lock:
            agent = self._agents.pop() if self._agents else None
        if agent is None:
            agent = _Agent(self)
        reply = agent.call(request, timeout, what)
        if not agent.broken:
            with self._lock:
                self._agents.append(agent)
        return reply

    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            input: bytes | None = None) -> RunResult:
        """``argv`` on the host, run directly (no shell), by a helper."""
        reply = self._ask({"op": "run", "argv": list(argv), "timeout": timeout,
                           "input": base64.b64encode(input or b"").decode()},
                          timeout + 10.0, argv[0])
        if reply.get("timeout"):
            raise HostError(self.name, f"{argv[0]} did not finish in {timeout:.0f} s")
        return RunResult(tuple(argv), int(reply["code"]), base64.b64decode(reply["out"]),
                         base64.b64decode(reply["err"]))

    def run_exec(self, argv: Sequence[str], *, timeout: float = 60.0,
                 input: bytes | None = None) -> RunResult:
        """``argv`` on its own exec channel through the login shell (each
        item one word: :func:`shlex.join`): what :meth:`run` cost before
        the helper, kept for the benchmark's side-by-side figure."""
        chan = self._exec(argv)
        chan.settimeout(timeout)
        err: list[bytes] = []

        def read_stderr() -> None:
            try:
                err.append(chan.makefile_stderr("rb").read())
            except (socket.timeout, OSError, paramiko.SSHException):
                pass

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            out = chan.makefile("rb").read()
            reader.join(timeout)
            code = chan.recv_exit_status()
        except socket.timeout as exc:
            raise HostError(self.name, f"{argv[0]} did not finish in {timeout:.0f} s") from exc
        except (paramiko.SSHException, OSError) as exc:
            raise HostError(self.name, f"{argv[0]}: {exc}") from exc
        finally:
            chan.close()
        return RunResult(tuple(argv), code, out, b"".join(err))

    def python(self, program: str, *args: str, timeout: float = 120.0) -> bytes:
        """Run one of harness.hosts.remote_scripts with ``args`` as its argv,
        inside a helper (no Python start-up per call)."""
        reply = self._ask({"op": "py", "program": program, "args": list(args)}, timeout,
                          "a harness script")
        result = RunResult(("python3", "-c", "<harness script>", *args), int(reply["code"]),
                           base64.b64decode(reply["out"]), base64.b64decode(reply["err"]))
        return result.check(self.name).stdout

    def start(self, argv: Sequence[str], stderr_path: Path, *,
              env: Mapping[str, str] | None = None, name: str = "qemu") -> "RemoteProcess":
        spec = {"argv": list(argv), "env": dict(env or {}), "marker": RUN_ID,
                "owners": self.owners_dir()}
        chan = self._take_standby()
        try:
            chan.sendall(json.dumps(spec).encode() + b"\n")
        except (paramiko.SSHException, OSError, EOFError):
            chan.close()
            chan = self._exec(["python3", "-c", WATCHDOG, json.dumps(spec)])
        return RemoteProcess(self, chan, list(argv), stderr_path, name)

    def prime(self) -> None:
        """Start a standby watchdog unless one is waiting (at connect, so the
        first QEMU starts at once too, and behind each one taken)."""
        with self._lock:
            if self._standby is not None and not self._standby.closed:
                return
        try:
            chan = self._exec(["python3", "-c", WATCHDOG])
        except HostError:
            return
        with self._lock:
            if self._standby is None or self._standby.closed:
                self._standby, chan = chan, None
        if chan is not None:
            chan.close()

    def _take_standby(self) -> paramiko.Channel:
        """The waiting watchdog (or a new one), and a new standby started
        behind it for the next QEMU: its Python starts on the host while this
        one runs (an exec request is one round trip here)."""
        self.transport()
        with self._lock:
            chan, self._standby = self._standby, None
        if chan is None or chan.closed or chan.exit_status_ready():
            chan = self._exec(["python3", "-c", WATCHDOG])
        self.prime()
        return chan

    def sweep(self) -> list[int]:
        """Kill what earlier harness runs left on this host (by owner file, never by name)."""
        killed = json.loads(self.python(SWEEP, self.owners_dir()) or b"[]")
        if killed:
            log.warning("%s: killed %d leftover process(es) of earlier runs: %s", self.name,
                        len(killed), killed)
        return killed

    # -- files -------------------------------------------------------------
    def owners_dir(self) -> str:
        return posixpath.join(self.spec.workdir, "owners")

    def workdir(self, *parts: str) -> str:
        path = posixpath.join(self.spec.workdir, "runs", RUN_ID, *parts)
        self.run(["mkdir", "-p", "-m", "700", path]).check(self.name)
        return path

    def ram_dir(self, *parts: str) -> str:
        """A private folder for guest RAM files on the host's tmpfs, as local
        cells have theirs (harness.run.rundir): postcopy registers guest RAM
        with userfaultfd, which a file on a disk filesystem refuses (EINVAL
        from UFFDIO_REGISTER: missing-page faults are for anonymous memory,
        shmem and hugetlbfs only)."""
        path = posixpath.join(RAM_ROOT, RUN_ID, *parts)
        self.run(["mkdir", "-p", "-m", "700", path]).check(self.name)
        return path

    def put_file(self, local: Path, remote: str) -> None:
        tmp = f"{remote}.part-{uuid.uuid4().hex[:6]}"
        self.sftp().put(str(local), tmp)
        self.sftp().posix_rename(tmp, remote)

    def cached_copy(self, local: Path) -> str:
        digest = file_sha256(local)
        cache = posixpath.join(self.spec.workdir, "cache")
        remote = posixpath.join(cache, f"{digest[:32]}-{local.name}")
        try:
            self.sftp().stat(remote)
            log.debug("%s: %s cached as %s", self.name, local.name, remote)
            return remote
        except FileNotFoundError:
            pass
        self.run(["mkdir", "-p", "-m", "700", cache]).check(self.name)
        self.put_file(local, remote)
        log.info("%s: copied %s to %s", self.name, local, remote)
        return remote

    def read_file(self, path: str) -> bytes:
        with self.sftp().open(path, "rb") as f:
            return f.read()

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        with self.sftp().open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def chunk_hashes(self, path: str, chunk: int = HASH_CHUNK,
                     mask: tuple[int, int] | None = None) -> list[str]:
        return json.loads(self.python(CHUNK_HASHES, path, str(chunk),
                                      *map(str, mask or ())))

    def read_strided(self, path: str, offset: int, count: int, stride: int) -> bytes:
        return self.python(STRIDED, path, str(offset), str(count), str(stride))

    def remove_tree(self, path: str) -> None:
        """Only inside this run's own folder on the host (never a path a
        matrix value could point elsewhere)."""
        mine = (posixpath.join(self.spec.workdir, "runs", RUN_ID) + "/",
                posixpath.join(RAM_ROOT, RUN_ID) + "/")
        if not posixpath.normpath(path).startswith(mine):
            raise HostError(self.name, f"refusing to remove {path}: not under {' or '.join(mine)}")
        self.run(["rm", "-rf", "--", path]).check(self.name)

    # -- facts -------------------------------------------------------------
    def facts(self) -> dict:
        return json.loads(self.python(FACTS))

    def free_memory(self) -> int:
        return int(self.facts().get("mem_available", 0))

    def kvm_usable(self) -> str | None:
        return self.facts().get("kvm")

    def clock(self) -> ClockReading:
        """Offset of the host's clock from ours: best (shortest round trip) of 3."""
        best: ClockReading | None = None
        for _ in range(3):
            before = time.time()
            remote = float(self.facts()["time"])
            after = time.time()
            reading = ClockReading(remote - (before + after) / 2, (after - before) / 2)
            if best is None or reading.uncertainty < best.uncertainty:
                best = reading
        assert best is not None
        return best

    # -- forwarding --------------------------------------------------------
    def listen_remote(self, local_unix: str) -> int:
        """A port on the host's loopback; each connection a process makes to
        it reaches the local unix socket ``local_unix`` (through the SSH
        connection: ``tcpip-forward``, RFC 4254 7.1).  The harness keeps
        listening and QEMU connects, as for a local machine."""
        t = self.transport()
        port = t.request_port_forward("127.0.0.1", 0, handler=self._on_forward)
        with self._lock:
            self._forwards[port] = local_unix
        log.debug("%s: 127.0.0.1:%d on the host -> %s", self.name, port, local_unix)
        return port

    def unlisten_remote(self, port: int) -> None:
        with self._lock:
            self._forwards.pop(port, None)
        t = self._client.get_transport() if self._client else None
        if t is not None and t.is_active():
            try:
                t.cancel_port_forward("127.0.0.1", port)
            except (paramiko.SSHException, EOFError, OSError):
                pass

    def _on_forward(self, chan: paramiko.Channel, origin: tuple[str, int],
                    server: tuple[str, int]) -> None:
        with self._lock:
            target = self._forwards.get(server[1])
        if target is None:
            chan.close()
            return
        threading.Thread(target=_bridge, args=(chan, target), daemon=True,
                         name=f"fwd-{self.name}-{server[1]}").start()


def _bridge(chan: paramiko.Channel, unix_path: str) -> None:
    """Copy bytes both ways between an SSH channel and a local unix socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(unix_path)
    except OSError as exc:
        log.warning("forward to %s refused: %s", unix_path, exc)
        chan.close()
        sock.close()
        return
    try:
        while True:
            ready, _, _ = select.select([chan, sock], [], [])
            if chan in ready:
                data = chan.recv(1 << 16)
                if not data:
                    break
                sock.sendall(data)
            if sock in ready:
                data = sock.recv(1 << 16)
                if not data:
                    break
                chan.sendall(data)
    except OSError:
        pass
    finally:
        sock.close()
        chan.close()


class RemoteProcess:
    """A process on an SSH host under the session watchdog.

    Same surface as :class:`harness.qemu.process.QemuProcess`.  Ending it
    closes the channel's input: the watchdog then kills the process group.
    """

    def __init__(self, host: SshHost, chan: paramiko.Channel, argv: list[str],
                 stderr_path: Path, name: str) -> None:
        self.host = host
        self.argv = argv
        self.name = name
        self.stderr_path = stderr_path
        self._chan = chan
        self._stderr = open(stderr_path, "ab")
        self._started = threading.Event()
        self._ended = threading.Event()
        self.returncode: int | None = None
        self.pid = -1
        self._lost = False
        self._out = threading.Thread(target=self._read_stdout, daemon=True,
                                     name=f"{name}-out")
        self._err = threading.Thread(target=self._read_stderr, daemon=True,
                                     name=f"{name}-err")
        self._out.start()
        self._err.start()
        if not self._started.wait(START_TIMEOUT) or self.pid < 0:
            self.kill()
            raise HostError(host.name, f"{name} did not start: {self.stderr_tail(5)}")
        log.info("%s: started %s, pid %d on the host", host.name, name, self.pid)

    def _read_stdout(self) -> None:
        buf = b""
        try:
            while data := self._chan.recv(4096):
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    word, _, value = line.decode(errors="replace").partition(" ")
                    if word == "pid":
                        self.pid = int(value)
                        self._started.set()
                    elif word == "exit":
                        self.returncode = int(value)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        if self.returncode is None:
            self._lost = True
        self._started.set()
        self._err.join(2.0)
        if not self._stderr.closed:
            self._stderr.close()
        self._ended.set()

    def _read_stderr(self) -> None:
        try:
            while data := self._chan.recv_stderr(4096):
                if not self._stderr.closed:
                    self._stderr.write(data)
                    self._stderr.flush()
        except (OSError, EOFError, ValueError, paramiko.SSHException):
            pass

    def poll(self) -> int | None:
        if not self._ended.is_set():
            return None
        return self.returncode if self.returncode is not None else -9

    @property
    def running(self) -> bool:
        return not self._ended.is_set()

    def wait(self, timeout: float) -> int | None:
        self._ended.wait(timeout)
        return self.poll()

    def kill(self, grace: float = 0.0) -> int | None:
        if self._ended.is_set():
            return self.poll()
        try:
            if grace > 0:
                self._chan.sendall(b"TERM\n")
                if self.wait(grace) is not None:
                    return self.poll()
            self._chan.shutdown_write()  # EOF: the watchdog kills the group
        except (OSError, EOFError, paramiko.SSHException):
            pass
        if self.wait(10.0) is None:
            self._chan.close()
            self.wait(2.0)
        return self.poll()

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe_exit(self) -> str:
        if self._lost:
            return f"SSH session to host '{self.host.name}' lost (the host's watchdog kills it)"
        return describe_exit_status(self.returncode) + f" on host '{self.host.name}'"


_hosts: dict[HostSpec, SshHost] = {}
_hosts_lock = threading.Lock()


def connect(spec: HostSpec) -> SshHost:
    """The process's one SshHost for ``spec`` (connections reused across cells)."""
    with _hosts_lock:
        host = _hosts.get(spec)
        if host is None:
            host = _hosts[spec] = SshHost(spec)
    host.transport()
    host.prime()
    return host


def close_all() -> None:
    with _hosts_lock:
        hosts = list(_hosts.values())
        _hosts.clear()
    for host in hosts:
        host.close()


atexit.register(close_all)
