"""Starting QEMU processes so that none can outlive the harness.

Three layers, each covering what the one before cannot:

1. every QEMU is started in its own process group with ``PR_SET_PDEATHSIG``
   = SIGKILL, so the kernel kills it if the harness process dies for any reason
   (SIGKILL of the runner, a segfault, an OOM kill).  The signal fires when the
   *thread* that forked the child exits (prctl(2)), so QEMUs are started from
   a thread that lives as long as they should: the main thread (the runner's,
   or a worker's: ``harness.run.pool``);
2. every started process is recorded in a module-level registry by PID; an
   ``atexit`` hook and the SIGTERM/SIGHUP handlers installed by
   :func:`install_signal_handlers` kill what is still registered;
3. the owner of a process (a machine, a cell) ends it explicitly in a
   ``finally``: first politely (QMP ``quit`` is the owner's business), then
   :meth:`QemuProcess.kill` by PID.

Processes are only ever signalled by the PID this module started, and only
while it has not been reaped, so a recycled PID is never hit.
"""
from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Literal, Mapping, Sequence

from harness.waiting import WaitTimeout, poll_until

if TYPE_CHECKING:
    from harness.hosts.base import HostProcess

log = logging.getLogger(__name__)

#: How often a process that cannot be watched by a pidfd (one on a remote
#: host, or where pidfd_open is refused) is looked at for its end.
EXIT_POLL_INTERVAL = 0.05

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

_registry: dict[int, "QemuProcess"] = {}
_registry_lock = threading.Lock()


def die_with_parent(parent_pid: int) -> None:
    """In a fresh child (between fork and exec for QEMU, or a forked runner
    worker): its own process group, and SIGKILL when the parent dies.  No
    allocation-heavy work here."""
    os.setpgid(0, 0)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork() and prctl(): then nobody will
    # ever send the death signal, so leave now.
    if os.getppid() != parent_pid:
        os._exit(1)


class QemuProcess:
    """One started process, killable only by its own PID while not yet reaped."""

    def __init__(self, argv: Sequence[str], stderr_path: Path,
                 env: Mapping[str, str] | None = None, name: str = "qemu") -> None:
        self.argv = list(argv)
        self.name = name
        self.stderr_path = stderr_path
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        parent = os.getpid()
        self._stderr = open(stderr_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=self._stderr,
                stderr=self._stderr, env=full_env, close_fds=True,
                preexec_fn=lambda: die_with_parent(parent),
            )
        except BaseException:
            self._stderr.close()
            raise
        self.pid = self.popen.pid
        self.started = time.monotonic()
        with _registry_lock:
            _registry[self.pid] = self
        log.debug("started %s, pid %d: %s (%d arguments)", name, self.pid, self.argv[0],
                  len(self.argv) - 1)

    def poll(self) -> int | None:
        """The exit status if the process has ended (negative: killed by signal)."""
        code = self.popen.poll()
        if code is not None:
            self._forget()
        return code

    @property
    def running(self) -> bool:
        return self.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit status or None if still running."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._forget()
        return code

    def kill(self, grace: float = 0.0) -> int | None:
        """End the process: SIGTERM and ``grace`` seconds if asked, then SIGKILL.

        Signals go to this PID only (Popen refuses to signal a reaped child).
        """
        if self.poll() is not None:
            return self.popen.returncode
        if grace > 0:
            log.debug("%s pid %d: SIGTERM, %.1f s to exit", self.name, self.pid, grace)
            self.popen.send_signal(signal.SIGTERM)
            if self.wait(grace) is not None:
                return self.popen.returncode
        log.debug("%s pid %d: SIGKILL", self.name, self.pid)
        self.popen.kill()
        code = self.wait(10.0)
        return code

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines QEMU wrote to stderr, for error messages."""
        try:
            if not self._stderr.closed:
                self._stderr.flush()
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe_exit(self) -> str:
        """Human description of how the process ended ("exit 1", "signal SIGABRT")."""
        return describe_exit_status(self.popen.returncode)

    def _forget(self) -> None:
        with _registry_lock:
            known = _registry.pop(self.pid, None) is not None
        if known:
            log.debug("%s pid %d ended: %s", self.name, self.pid, self.describe_exit())
        if not self._stderr.closed:
            self._stderr.close()


def describe_exit_status(code: int | None) -> str:
    """An exit status as ``subprocess`` and ``multiprocessing`` give it
    (negative: the signal that killed the process; None: still running),
    in words: "exit status 1", "killed by signal SIGABRT"."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


async def wait_exited(proc: "QemuProcess | HostProcess", timeout: float | None) -> int | None:
    """``proc``'s exit status once it has ended; None while it still runs
    after ``timeout`` seconds (None: wait as long as it runs).  The event
    loop runs on meanwhile.

    A local process is watched, not polled, and blocks no thread: its pidfd
    becomes readable when it exits (pidfd_open(2), Linux 5.3) and the event
    loop waits on that.  A remote process (harness.hosts), or a kernel that
    refuses pidfd_open, is looked at every ``EXIT_POLL_INTERVAL`` through
    :func:`harness.waiting.poll_until`."""
    code = proc.poll()
    if code is not None:
        return code
    if isinstance(proc, QemuProcess):
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            return proc.poll()  # reaped between the poll and here
        except OSError as exc:
            log.debug("pidfd_open(%d) refused (%s): polling for its end", proc.pid, exc)
        else:
            try:
                await asyncio.wait_for(_readable(fd), timeout)
            except asyncio.TimeoutError:
                return None
            finally:
                os.close(fd)
            return proc.poll()
    try:
        return await poll_until(proc.poll, lambda c: c is not None,
                                timeout=math.inf if timeout is None else timeout,
                                interval=EXIT_POLL_INTERVAL, what=f"{proc.name} to exit")
    except WaitTimeout:
        return None


async def _readable(fd: int) -> None:
    """Return once ``fd`` is readable (for a pidfd: its process has ended)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def accept_or_exit(accept: Awaitable[None], proc: "QemuProcess | HostProcess",
                         timeout: float) -> Literal["accepted", "exited", "timeout"]:
    """Wait for QEMU to connect to the harness's QMP socket (``accept``) and
    for ``proc`` to end, together, whichever comes first: ``accepted`` (an
    exception ``accept`` raised, e.g. QEMU dropping the handshake, is raised
    here), ``exited`` (the process ended before it connected) or ``timeout``
    (neither within ``timeout`` seconds).  What is still pending is cancelled."""
    accepting = asyncio.ensure_future(accept)
    ending = asyncio.ensure_future(wait_exited(proc, timeout))
    try:
        await asyncio.wait((accepting, ending), timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (accepting, ending):
            task.cancel()
        await asyncio.gather(accepting, ending, return_exceptions=True)
    if accepting.done() and not accepting.cancelled():
        accepting.result()
        return "accepted"
    return "exited" if proc.poll() is not None else "timeout"


def live_processes() -> list[QemuProcess]:
    """Processes started by this harness process and not yet reaped."""
    with _registry_lock:
        procs = list(_registry.values())
    return [p for p in procs if p.running]


def kill_all() -> None:
    """Kill every process still registered.  Safe to call more than once."""
    for proc in live_processes():
        log.info("%s pid %d still running: killing it", proc.name, proc.pid)
        try:
            proc.kill()
        except OSError:
            pass


atexit.register(kill_all)


def forget_inherited() -> None:
    """In a forked child that is not QEMU (a runner worker): forget what the
    parent started.  Those processes are the parent's children: this process
    can neither reap them nor know when their PIDs are reused, so it must never
    signal them (its own ``kill_all`` would otherwise try)."""
    global _registry_lock
    # The lock may have been held by another of the parent's threads at fork
    # time, and that thread does not exist here: a fresh lock, not acquire().
    _registry_lock = threading.Lock()
    _registry.clear()


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so ``finally`` blocks run.

    A BaseException (like KeyboardInterrupt) so ordinary ``except Exception``
    handlers in cell code do not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Interrupted` (Ctrl-C already raises).

    Only the main thread can install handlers; elsewhere this is a no-op and
    the atexit hook plus the death signal remain.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
