"""What a running cell tells the runner while it runs, for the live display.

One channel, the cell's ``progress`` callback, carries two kinds of update:

- a ``str``: the name of the phase the cell enters (``launch``, ``migrate``...);
- a :class:`MigrationProgress`: one ``query-migrate`` sample of the
  migration under way (the driver samples every ``SAMPLE_PERIOD``).

Serial runs hand them to the runner directly; a ``-j N`` worker forwards them
over its pipe (harness.run.pool), through a :class:`Throttle` so the pipe
carries a few small messages a second at most.  The runner keeps the latest
per running cell in ``RunState.progress`` (:class:`CellProgress`).

Plain data only (picklable, no harness imports): the migration code, the
runner and the reports all import it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

#: At most one migration update per cell in this many seconds reaches the
#: runner: the live display redraws 4 times a second, faster is not seen.
MIN_INTERVAL = 0.25


@dataclass(frozen=True)
class MigrationProgress:
    """A migration's state at one ``query-migrate`` sample (source side).

    Field meanings are QEMU's (qapi/migration.json ``MigrationStats``, 7.2 and
    10.0): ``remaining`` is RAM not yet sent in this pass, ``transferred`` all
    bytes sent, ``iteration`` the ``dirty-sync-count`` (dirty-bitmap syncs:
    one per precopy pass), ``dirty_rate`` the ``dirty-pages-rate`` in pages
    per second, measured over the last sync period (migration/ram.c
    migration_update_rates)."""

    status: str = ""
    remaining: int | None = None
    transferred: int | None = None
    iteration: int | None = None
    dirty_rate: int | None = None

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> "MigrationProgress":
        """From one of the driver's samples (``MigrationRun.samples``)."""
        return cls(status=str(sample.get("status") or ""), remaining=sample.get("remaining"),
                   transferred=sample.get("transferred"), iteration=sample.get("syncs"),
                   dirty_rate=sample.get("dirty_rate"))


#: What the ``progress`` callback is told: a phase name, or a sample.
ProgressUpdate = str | MigrationProgress
ProgressFn = Callable[[ProgressUpdate], None]


@dataclass
class CellProgress:
    """A running cell as the runner last heard of it."""

    phase: str = "start"
    #: Host monotonic time the cell started.
    started: float = field(default_factory=time.monotonic)
    #: The latest sample of its migration; None outside the phase that
    #: migrates (a new phase clears it: the figures would be stale).
    migration: MigrationProgress | None = None

    def update(self, update: ProgressUpdate) -> None:
        if isinstance(update, MigrationProgress):
            self.migration = update
        else:
            self.phase, self.migration = update, None


class Throttle:
    """A ``progress`` callback that passes every phase on, and a migration
    update only when ``interval`` has passed since the last one passed on, or
    when the migration's status changed (a handful per migration), so the
    final state is never the one dropped."""

    def __init__(self, send: ProgressFn, interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send, self._interval, self._clock = send, interval, clock
        self._last: float | None = None
        self._status = ""

    def __call__(self, update: ProgressUpdate) -> None:
        if isinstance(update, MigrationProgress):
            now = self._clock()
            if (self._last is not None and now - self._last < self._interval
                    and update.status == self._status):
                return
            self._last, self._status = now, update.status
        else:
            # The next migration (a retry) starts afresh.
            self._last, self._status = None, ""
        self._send(update)
