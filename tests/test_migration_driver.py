"""Unit tests of the migration driver and its waits against a scripted QMP peer
(no QEMU): the retry of a busy ``migrate``, cancel, postcopy steps, settling,
late figures, guest progress."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
from qemu.qmp import ExecuteError
from qemu.qmp.message import Message
from qemu.qmp.models import ErrorResponse

from harness.migration import driver, waits
from harness.waiting import WaitAborted, WaitTimeout


def _error(desc: str) -> ExecuteError:
    raw = Message({"error": {"class": "GenericError", "desc": desc}, "id": 1})
    return ExecuteError(ErrorResponse(raw), Message({"execute": "x"}), raw)


class FakeMachine:
    """What the driver uses of :class:`harness.qemu.machine.Machine`; each
    command's answer comes from ``handlers`` (a value, or a callable that
    may raise), and handlers may append events."""

    def __init__(self, handlers: dict[str, Any], role: str = "src") -> None:
        self.role = role
        self.handlers = handlers
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.commands: list[str] = []
        self.alive = True
        self.local_pid: int | None = None   # no process to read run-queue waits of
        self.event_hooks: list[Callable[[float, dict[str, Any]], None]] = []

    def emit(self, status: str, event: str = "MIGRATION") -> None:
        data = {"status": status} if event == "MIGRATION" else {}
        self.events.append((float(len(self.events)), {"event": event, "data": data}))

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.commands.append(cmd)
        answer = self.handlers[cmd]
        return answer(args) if callable(answer) else answer

    async def status(self) -> str:
        return str((await self.execute("query-status"))["status"])

    async def wait_event(self, match: Callable[[dict[str, Any]], bool], timeout: float,
                         since: int = 0) -> tuple[float, dict[str, Any]] | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for t, ev in self.events[since:]:
                if match(ev):
                    return t, ev
            if asyncio.get_running_loop().time() >= deadline or not self.alive:
                return None
            await asyncio.sleep(0.001)

    def exit_reason(self) -> str:
        return "killed"

    def migration_states(self) -> list[str]:
        return [ev["data"]["status"] for _, ev in self.events if ev.get("event") == "MIGRATION"]


def _sequence(*answers: Any) -> Callable[[Any], Any]:
    """Answers in turn, the last one repeated."""
    it = list(answers)

    def answer(_args: Any) -> Any:
        value = it.pop(0) if len(it) > 1 else it[0]
        if isinstance(value, Exception):
            raise value
        return value
    return answer


def test_start_retries_a_busy_migrate_only_when_asked() -> None:
    busy = _error("duplicate yank instance")
    m = FakeMachine({"migrate": _sequence(busy, None),
                     "query-migrate": _sequence({"status": "setup"}, {"status": "cancelled"})})
    refusals: list[dict[str, Any]] = []
    since = asyncio.run(driver.start(m, "unix:/x", refusals=refusals))  # type: ignore[arg-type]
    assert since == 0 and m.commands.count("migrate") == 2
    assert refusals and refusals[0]["state_after"] == "setup"
    m = FakeMachine({"migrate": _sequence(busy, None)})
    with pytest.raises(ExecuteError):
        asyncio.run(driver.start(m, "unix:/x"))  # type: ignore[arg-type]
    other = FakeMachine({"migrate": _sequence(_error("unknown migration protocol"), None)})
    with pytest.raises(ExecuteError):
        asyncio.run(driver.start(other, "bogus:1", refusals=[]))  # type: ignore[arg-type]


def test_start_sends_resume() -> None:
    seen: list[Any] = []
    m = FakeMachine({"migrate": lambda args: seen.append(args)})
    asyncio.run(driver.start(m, "tcp:h:1", resume=True))  # type: ignore[arg-type]
    assert seen == [{"uri": "tcp:h:1", "resume": True}]


def test_cancel_sees_a_state_reached_before_it() -> None:
    m = FakeMachine({"migrate_cancel": None})
    m.emit("setup")
    m.emit("completed")  # the migration ended while the cancel was on its way
    assert asyncio.run(driver.cancel(m, since=0, timeout=0.05)) == "completed"  # type: ignore[arg-type]
    assert asyncio.run(driver.cancel(m, timeout=0.05)) is None  # type: ignore[arg-type]
    refused = FakeMachine({"migrate_cancel": _sequence(_error("no"), None)})
    assert asyncio.run(driver.cancel(refused)) is None  # type: ignore[arg-type]


def test_postcopy_starts_only_when_due() -> None:
    active = {"status": "active", "ram": {"dirty-sync-count": 1}}
    due = {"status": "active", "ram": {"dirty-sync-count": 2}}
    assert not driver.postcopy_due(active) and driver.postcopy_due(due)
    m = FakeMachine({"query-migrate": _sequence(active, due), "migrate-start-postcopy": None})
    info, t = asyncio.run(driver.start_postcopy_when_due(m, 2, 5.0))  # type: ignore[arg-type]
    assert info == due and t is not None and "migrate-start-postcopy" in m.commands
    failed = FakeMachine({"query-migrate": {"status": "failed"}})
    info, t = asyncio.run(driver.start_postcopy_when_due(failed, 2, 5.0))  # type: ignore[arg-type]
    assert t is None and "migrate-start-postcopy" not in failed.commands


def test_resume_in_postcopy_conts_on_postcopy_active_only() -> None:
    dst = FakeMachine({"cont": None}, role="dst")
    dst.emit("active")
    dst.emit("postcopy-active")
    resumed = asyncio.run(driver.resume_in_postcopy(dst, 0, 1.0))  # type: ignore[arg-type]
    assert resumed is not None and resumed.cont_since == 2 and dst.commands == ["cont"]
    dst.emit("RESUME", event="RESUME")
    assert asyncio.run(waits.wait_resumed(dst, resumed.cont_since, 0.1)) is not None  # type: ignore[arg-type]
    failed = FakeMachine({"cont": None}, role="dst")
    failed.emit("failed")
    assert asyncio.run(driver.resume_in_postcopy(failed, 0, 1.0)) is None  # type: ignore[arg-type]
    assert failed.commands == []


def test_a_cont_still_in_flight_when_the_source_completes_is_recorded() -> None:
    """The flake hunt's race: the source reports ``completed`` while the
    destination's ``cont`` reply is still on the way.  The run must still
    record that the destination was resumed, so the flow stops it."""
    src = FakeMachine({"migrate": None, "query-migrate": {"status": "completed",
                                                           "total-time": 5, "downtime": 1}})
    dst = FakeMachine({}, role="dst")

    async def slow_cont(cmd: str, args: dict[str, Any] | None = None) -> Any:
        dst.commands.append(cmd)
        if cmd == "cont":
            src.emit("completed")        # the source finishes meanwhile
            await asyncio.sleep(0.2)     # the reply comes late (a loaded host)
            return None
        return {}

    dst.execute = slow_cont  # type: ignore[method-assign]

    async def scenario() -> driver.MigrationRun:
        run = asyncio.ensure_future(driver.run_migration(
            src, dst, "unix:/x", {"postcopy-ram": True}, 5.0, 0.0))  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        src.emit("setup")
        src.emit("active")
        src.emit("postcopy-active")
        dst.emit("active")
        dst.emit("postcopy-active")      # the resume task sends 'cont' on this
        await asyncio.sleep(0.05)
        dst.emit("completed")
        return await run

    run = asyncio.run(scenario())
    assert run.status == "completed"
    assert dst.commands.count("cont") == 1
    assert run.t_dst_resumed is not None, "a destination sent 'cont' must be recorded as resumed"


def test_a_saved_stream_past_its_cap_ends_the_wait_with_the_migration_going() -> None:
    """A stream to a file keeps every pass: past ``stream_cap`` bytes sent the
    driver stops waiting long before the timeout and says how far it got."""
    sent = iter(range(0, 10 << 30, 64 << 20))

    def active(_args: Any) -> dict[str, Any]:
        return {"status": "active", "ram": {"transferred": next(sent)}}

    src = FakeMachine({"migrate": None, "query-migrate": active})
    dst = FakeMachine({}, role="dst")

    async def scenario() -> driver.MigrationRun:
        run = asyncio.ensure_future(driver.run_migration(
            src, dst, "exec:cat > /x", {}, 30.0, 0.0,  # type: ignore[arg-type]
            restore_uri="exec:cat /x", stream_cap=256 << 20))
        src.emit("setup")
        src.emit("active")
        return await asyncio.wait_for(run, 10.0)

    run = asyncio.run(scenario())
    assert run.stream_capped is not None and run.stream_capped > 256 << 20
    assert run.status == "active", "the caller cancels, as after a timeout"
    assert "migrate-incoming" not in dst.commands, "nothing was restored"


def test_a_migration_that_completes_under_its_cap_is_not_capped() -> None:
    src = FakeMachine({"migrate": None, "query-migrate": {"status": "completed",
                                                           "ram": {"transferred": 1 << 30}}})
    dst = FakeMachine({"migrate-incoming": None}, role="dst")

    async def scenario() -> driver.MigrationRun:
        run = asyncio.ensure_future(driver.run_migration(
            src, dst, "exec:cat > /x", {}, 5.0, 0.0,  # type: ignore[arg-type]
            restore_uri="exec:cat /x", stream_cap=256 << 20))
        src.emit("setup")
        src.emit("completed")
        dst.emit("completed")
        return await run

    run = asyncio.run(scenario())
    assert run.status == "completed" and run.stream_capped is None


def test_settled_status_returns_the_state_it_was_left_in() -> None:
    m = FakeMachine({"query-status": _sequence({"status": "inmigrate"}, {"status": "paused"})})
    assert asyncio.run(waits.settled_status(m, 1.0)) == "paused"  # type: ignore[arg-type]
    stuck = FakeMachine({"query-status": {"status": "inmigrate"}})
    assert asyncio.run(waits.settled_status(stuck, 0.05)) == "inmigrate"  # type: ignore[arg-type]


def test_final_info_waits_for_late_figures() -> None:
    early = {"status": "completed", "total-time": 0}
    full = {"status": "completed", "total-time": 812, "downtime": 31}
    m = FakeMachine({"query-migrate": _sequence(early, early, full)})
    assert asyncio.run(waits.final_info(m)) == full  # type: ignore[arg-type]
    never = FakeMachine({"query-migrate": early})
    assert asyncio.run(waits.final_info(never)) == early  # type: ignore[arg-type]


def test_wait_progress_stops_at_once_on_a_dead_qemu() -> None:
    m = FakeMachine({})
    count = iter(range(100))
    assert asyncio.run(waits.wait_progress(m, lambda: next(count), 3, 1.0, "beats")) == 3  # type: ignore[arg-type]
    m.alive = False
    with pytest.raises(WaitAborted, match="died"):
        asyncio.run(waits.wait_progress(m, lambda: 0, 3, 5.0, "beats"))  # type: ignore[arg-type]
    m.alive = True
    with pytest.raises(WaitTimeout):
        asyncio.run(waits.wait_progress(m, lambda: 0, 3, 0.03, "beats"))  # type: ignore[arg-type]


def _stamped(m: FakeMachine, status: str, seconds: int, microseconds: int) -> None:
    m.emit(status)
    m.events[-1][1]["timestamp"] = {"seconds": seconds, "microseconds": microseconds}


def test_pre_switchover_hold_is_read_off_qemus_timestamps() -> None:
    m = FakeMachine({})
    _stamped(m, "active", 100, 0)
    _stamped(m, "pre-switchover", 101, 250_000)
    _stamped(m, "device", 102, 500_000)       # migrate-continue woke it: 1.25 s
    _stamped(m, "completed", 103, 0)
    assert driver.pre_switchover_hold(m) == pytest.approx(1.25)  # type: ignore[arg-type]
    assert driver.pre_switchover_hold(m, since=2) == 0.0  # type: ignore[arg-type]
    # Two waits (7.2 postcopy goes on to postcopy-active) add up.
    _stamped(m, "pre-switchover", 104, 0)
    _stamped(m, "postcopy-active", 104, 100_000)
    assert driver.pre_switchover_hold(m) == pytest.approx(1.35)  # type: ignore[arg-type]
    # A wait never left, or an event without a stamp: no figure.
    _stamped(m, "pre-switchover", 105, 0)
    assert driver.pre_switchover_hold(m) is None  # type: ignore[arg-type]
    unstamped = FakeMachine({})
    unstamped.emit("pre-switchover")
    unstamped.emit("device")
    assert driver.pre_switchover_hold(unstamped) is None  # type: ignore[arg-type]


def test_states_and_event_time() -> None:
    m = FakeMachine({})
    for s in ("setup", "active", "completed"):
        m.emit(s)
    assert waits.states_since(m, 1) == ["active", "completed"]  # type: ignore[arg-type]
    assert waits.event_time(m, "completed") == 2.0  # type: ignore[arg-type]
    assert asyncio.run(waits.wait_state(m, waits.TERMINAL, 0, 0.01)) == "completed"  # type: ignore[arg-type]
    assert asyncio.run(waits.wait_state(m, ("failed",), 0, 0.01)) is None  # type: ignore[arg-type]


def test_driver_keeps_the_names_the_flow_imports() -> None:
    for name in ("run_migration", "MigrationRun", "TERMINAL", "POSTCOPY_AFTER_SYNCS", "cancel",
                 "settled_status", "configure", "BASE_CAPABILITIES", "final_info",
                 "is_migration"):
        assert hasattr(driver, name), name
    assert "source_held_s" in driver.MigrationRun.__dataclass_fields__
