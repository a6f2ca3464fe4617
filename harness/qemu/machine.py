"""A running QEMU: its process, its QMP session, its serial port and its log.

The harness listens and QEMU connects (QMP and serial are client chardevs on
unix sockets the harness created), so there is no polling for a socket to
appear and no serial byte written before anyone listens is lost.

Every QMP command, reply, error and event goes to a JSON-lines transcript in
the cell's log folder; serial output is logged with host timestamps.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from qemu.qmp import EventListener, ExecInterruptedError, ExecuteError, QMPClient, StateError

from harness.errors import QemuError
from harness.qemu.process import QemuProcess, accept_or_exit, wait_exited

if TYPE_CHECKING:
    from harness.hosts.base import Host, HostProcess

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0

Event = dict[str, Any]


class SerialLog:
    """Receives serial bytes, stamps them with host time, logs and forwards them."""

    def __init__(self, path: Path, t0: float, sink: Callable[[bytes, float], None] | None) -> None:
        self._file = open(path, "w", encoding="ascii")
        self._t0 = t0
        self._sink = sink
        self.nbytes = 0

    def feed(self, data: bytes, t: float) -> None:
        self.nbytes += len(data)
        printable = all(32 <= b < 127 or b in (10, 13) for b in data)
        shown = data.decode("ascii").rstrip("\r\n") if printable else data.hex()
        kind = "txt" if printable else "hex"
        self._file.write(f"{t - self._t0:12.6f} {kind} {shown}\n")
        if self._sink:
            self._sink(data, t)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class Machine:
    """One QEMU process driven over QMP.

    Use as ``async with Machine(...) as m:``; leaving the block always ends the
    process (QMP ``quit``, then SIGKILL by PID if it does not go).
    """

    def __init__(self, role: str, argv: list[str], env: dict[str, str], *,
                 qmp_path: Path, serial_path: Path, logdir: Path, t0: float,
                 serial_sink: Callable[[bytes, float], None] | None = None,
                 host: "Host | None" = None) -> None:
        self.role = role
        #: Where QEMU runs (None or a local host: here).  On a remote host QEMU
        #: connects to ports on the host's loopback that the SSH connection
        #: forwards to the same local sockets (harness.hosts.ssh.listen_remote).
        self.host = host
        self._forwarded: list[int] = []
        self.argv = argv
        self.env = env
        self.qmp_path = qmp_path
        self.serial_path = serial_path
        self.logdir = logdir
        self.t0 = t0
        self.proc: "QemuProcess | HostProcess | None" = None
        self.qmp = QMPClient(role)
        self.events: list[tuple[float, Event]] = []
        #: Called with each event's arrival time and the event, as it
        #: arrives (before any waiter wakes): for readings that must be taken
        #: at that moment (harness.migration.driver, the CPU-wait readings).
        self.event_hooks: list[Callable[[float, Event], None]] = []
        self._event_cond = asyncio.Condition()
        self._tasks: list[asyncio.Task[Any]] = []
        self._serial_server: asyncio.AbstractServer | None = None
        self._serial_connected = asyncio.Event()
        self._transcript = open(logdir / f"{role}.qmp.jsonl", "w", encoding="utf-8")
        self.serial = SerialLog(logdir / f"{role}.serial.log", t0, serial_sink)
        (logdir / f"{role}.argv").write_text(" ".join(argv) + "\n")

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> "Machine":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on QMP and serial sockets, start QEMU, wait for it to connect."""
        self._serial_server = await asyncio.start_unix_server(self._on_serial, str(self.serial_path))
        await self.qmp.start_server(str(self.qmp_path))
        if self.host is not None and not self.host.is_local:
            self.proc = self._start_remote()
        else:
            self.proc = QemuProcess(self.argv, self.logdir / f"{self.role}.stderr",
                                    env=self.env, name=self.role)
        try:
            outcome = await accept_or_exit(self.qmp.accept(), self.proc, ACCEPT_TIMEOUT)
        except Exception as exc:  # qemu.qmp ConnectError/EOFError: QEMU died mid-handshake
            # QEMU can connect to the QMP socket and then abort before the
            # greeting completes (seen: 7.2 asserting in kvm_dirty_ring_reap_one
            # at start with a dirty ring).  Say that QEMU died, with its stderr,
            # rather than surfacing the QMP library's connection error.
            if await wait_exited(self.proc, 2.0) is None:
                raise QemuError(f"{self.role} QEMU (pid {self.proc.pid}) broke off the QMP "
                                f"handshake: {exc!r}") from exc
            raise self._exited_at_start_up() from exc
        if outcome == "exited":
            raise self._exited_at_start_up()
        if outcome == "timeout":
            raise QemuError(f"{self.role} QEMU did not connect to QMP in {ACCEPT_TIMEOUT:.0f} s")
        log.info("%s QEMU pid %d connected to QMP (%s)", self.role, self.proc.pid, self.qmp_path)
        self._log({"dir": "connect", "pid": self.proc.pid})
        listener = EventListener()
        self.qmp.register_listener(listener)
        self._tasks.append(asyncio.ensure_future(self._pump_events(listener)))
        self._tasks.append(asyncio.ensure_future(self._notice_exit()))

    def _exited_at_start_up(self) -> QemuError:
        assert self.proc is not None
        log.info("%s QEMU pid %d exited at start-up: %s", self.role, self.proc.pid,
                 self.proc.describe_exit())
        return QemuError(f"{self.role} QEMU exited at start-up "
                         f"({self.proc.describe_exit()}): {self.proc.stderr_tail(5)}")

    def _start_remote(self) -> "HostProcess":
        from harness.hosts.qemu_args import remote_chardevs
        host = self.host
        assert host is not None
        qmp_port = host.listen_remote(str(self.qmp_path))  # type: ignore[attr-defined]
        self._forwarded.append(qmp_port)
        serial_port = host.listen_remote(str(self.serial_path))  # type: ignore[attr-defined]
        self._forwarded.append(serial_port)
        argv = remote_chardevs(self.argv, self.qmp_path, self.serial_path, qmp_port,
                               serial_port)
        return host.start(argv, self.logdir / f"{self.role}.stderr", env=self.env,
                          name=self.role)

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for QEMU to exit on its own (a destination
        after a failed load); its exit status, or None while it still runs."""
        if self.proc is None:
            return None
        return await wait_exited(self.proc, timeout)

    async def close(self) -> None:
        """End the process (politely if it answers, by PID if not) and free
        everything; the freeing happens even when the polite part is cut
        short (a cancelled cell)."""
        try:
            await self._quit()
        finally:
            self._release()

    async def _quit(self) -> None:
        """QMP ``quit`` and a moment to go; SIGKILL by PID if it does not."""
        if self.proc is not None and self.proc.running:
            log.debug("%s QEMU pid %d: QMP quit", self.role, self.proc.pid)
            try:
                await asyncio.wait_for(self.qmp.execute("quit"), 2.0)
            except BaseException:  # noqa: BLE001 - any failure here means: kill it
                pass
            if await wait_exited(self.proc, 2.0) is None:
                log.info("%s QEMU pid %d did not quit in 2 s: killing it", self.role,
                         self.proc.pid)
                self.proc.kill()
        try:
            await asyncio.wait_for(self.qmp.disconnect(), 2.0)
        except BaseException:  # noqa: BLE001 - EOFError after quit is the normal end
            pass

    def _release(self) -> None:
        """The process ended by PID (a no-op once it has gone), the tasks,
        sockets, port forwards and logs freed."""
        for task in self._tasks:
            task.cancel()
        if self._serial_server is not None:
            self._serial_server.close()
        if self.proc is not None:
            self.proc.kill()
            log.info("%s QEMU pid %d torn down: %s", self.role, self.proc.pid,
                     self.proc.describe_exit())
            self._log({"dir": "exit", "how": self.proc.describe_exit()})
        for port in self._forwarded:
            self.host.unlisten_remote(port)  # type: ignore[union-attr]
        self._forwarded.clear()
        self.serial.close()
        if not self._transcript.closed:
            self._transcript.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.running

    @property
    def local_pid(self) -> int | None:
        """The QEMU's PID when it runs on this machine (its /proc is readable
        here); None on a remote host or before it started."""
        if self.proc is None or (self.host is not None and not self.host.is_local):
            return None
        return self.proc.pid

    def exit_reason(self) -> str:
        """How the process ended plus its stderr tail: for failed-cell messages."""
        if self.proc is None:
            return "never started"
        tail = self.proc.stderr_tail(8)
        return self.proc.describe_exit() + (f"; stderr: {tail}" if tail else "")

    # -- QMP ---------------------------------------------------------------
    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = COMMAND_TIMEOUT) -> Any:
        """Run one QMP command; ``ExecuteError`` propagates (it is an answer, not a crash)."""
        self._log({"dir": ">", "cmd": cmd, "args": args})
        try:
            reply = await asyncio.wait_for(self.qmp.execute(cmd, args), timeout)
        except ExecuteError as exc:
            self._log({"dir": "<", "cmd": cmd, "error": {"class": exc.error_class, "desc": str(exc)}})
            raise
        except (asyncio.TimeoutError, EOFError, ConnectionError, StateError,
                ExecInterruptedError) as exc:
            self._log({"dir": "<", "cmd": cmd, "failure": repr(exc)})
            if not self.alive:
                raise QemuError(f"{self.role} QEMU died during '{cmd}': {self.exit_reason()}") from exc
            raise QemuError(f"{self.role} QEMU did not answer '{cmd}' ({exc!r})") from exc
        self._log({"dir": "<", "cmd": cmd, "return": reply})
        return reply

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a file descriptor over the QMP socket (SCM_RIGHTS) and name
        it with ``getfd`` (qapi/misc.json), for ``fd:NAME`` URIs."""
        self._log({"dir": ">", "fd": fd, "scm_rights_for": name})
        self.qmp.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": name})

    async def hmp(self, command_line: str) -> str:
        return str(await self.execute("human-monitor-command", {"command-line": command_line}))

    async def status(self) -> str:
        return str((await self.execute("query-status"))["status"])

    # -- events ------------------------------------------------------------
    async def _pump_events(self, listener: EventListener) -> None:
        async for event in listener:
            t = time.monotonic()
            self._log({"dir": "event", "event": event})
            for hook in list(self.event_hooks):
                hook(t, dict(event))
            async with self._event_cond:
                self.events.append((t, dict(event)))
                self._event_cond.notify_all()

    async def _notice_exit(self) -> None:
        """Wake every :meth:`wait_event` the moment QEMU ends, so none waits
        out its timeout on a dead QEMU."""
        assert self.proc is not None
        await wait_exited(self.proc, None)
        async with self._event_cond:
            self._event_cond.notify_all()

    async def wait_event(self, match: Callable[[Event], bool], timeout: float,
                         since: int = 0) -> tuple[float, Event] | None:
        """First event at index >= ``since`` that matches; None on timeout.

        Also returns early (None) if the process dies, so callers never wait out
        a timeout on a dead QEMU.
        """
        deadline = time.monotonic() + timeout
        async with self._event_cond:
            while True:
                for t, ev in self.events[since:]:
                    if match(ev):
                        return t, ev
                since = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    return None
                try:
                    # Woken by each event and by QEMU's end (_notice_exit).
                    await asyncio.wait_for(self._event_cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    def migration_states(self) -> list[str]:
        """The MIGRATION event states seen so far, in order."""
        return [ev["data"]["status"] for _, ev in self.events if ev.get("event") == "MIGRATION"]

    # -- serial ------------------------------------------------------------
    async def _on_serial(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._serial_connected.set()
        try:
            while data := await reader.read(65536):
                self.serial.feed(data, time.monotonic())
        except asyncio.CancelledError:
            # Teardown (an interrupted cell: asyncio.run cancels what is left).
            # Ending normally, not cancelled: Python 3.11's start_unix_server
            # asks a cancelled connection task for its exception and prints
            # the CancelledError as an error (asyncio/streams.py, callback in
            # StreamReaderProtocol.connection_made; 3.12 checks cancelled()).
            pass
        finally:
            writer.close()

    # -- transcript --------------------------------------------------------
    def _log(self, entry: dict[str, Any]) -> None:
        if self._transcript.closed:
            return
        entry = {"t": round(time.monotonic() - self.t0, 6), **entry}
        text = json.dumps(entry, default=str)
        if len(text) > 4000 and "return" in entry:  # e.g. query-qmp-schema
            entry["return"] = f"<{len(text)} characters, not logged>"
            text = json.dumps(entry, default=str)
        self._transcript.write(text + "\n")
        self._transcript.flush()
