"""The one way the harness waits for a condition it cannot be told about.

Most waits are on QMP events or serial bytes that arrive by themselves; some
things can only be looked at (a guest's progress counter, QEMU's run state
after an event, a process exiting).  Those go through :func:`poll_until` (or
its synchronous twin), so the interval, the deadline and the error that names
how far things got are decided in one place.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")

#: Default interval between looks: short against a cell's phases (tenths of a
#: second), long enough that polling costs no measurable CPU.
INTERVAL = 0.01


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; ``last`` is the final value seen."""

    def __init__(self, what: str, timeout: float, last: object = None) -> None:
        self.what, self.timeout, self.last = what, timeout, last
        super().__init__(f"{what}: not reached within {timeout:.1f} s (last seen: {last!r})")


async def poll_until(probe: Callable[[], T | Awaitable[T]], done: Callable[[T], bool], *,
                     timeout: float, interval: float = INTERVAL, what: str = "condition",
                     abort: Callable[[], str | None] | None = None) -> T:
    """Call ``probe`` (sync or async) until ``done(value)``; return that value.

    ``abort`` is asked before each look and may return a reason to give up at
    once (e.g. "QEMU died"); that raises :class:`WaitAborted`.  Past
    ``timeout`` seconds :class:`WaitTimeout` is raised with the last value, so
    callers can say how far things got.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if done(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        if abort is not None:
            reason = abort()
            if reason:
                raise WaitAborted(what, reason, value)
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, value)
        await asyncio.sleep(interval)


def poll_until_sync(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float,
                    interval: float = INTERVAL, what: str = "condition") -> T:
    """:func:`poll_until` for synchronous code (the runner, teardown helpers)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, value)
        time.sleep(interval)


class WaitAborted(RuntimeError):
    """``abort`` gave a reason to stop waiting (e.g. the QEMU died)."""

    def __init__(self, what: str, reason: str, last: object = None) -> None:
        self.what, self.reason, self.last = what, reason, last
        super().__init__(f"{what}: {reason}")
