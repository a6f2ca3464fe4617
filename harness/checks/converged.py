"""Did the migration get there: the ``converged`` and ``cancel-retry`` verdicts.

``converged`` judges how the source's migration ended
(harness.migration.driver.run_migration's :class:`MigrationRun`):

- still going when the cell's timeout ran out (not converging: QEMU's
  estimate never fell under ``downtime-limit``), or when a saved stream
  outgrew its cap (harness.migration.transports.stream_cap): failed, with
  the ``query-migrate`` figures that show why;
- ended ``failed``/``cancelled``, or the destination never reached
  ``completed``: failed, with QEMU's error and, when the destination QEMU
  exited, its own reason (e.g. a refused UUID or TLS peer);
- ``completed``: passed.

A refused migration is a failed check rather than a cell error so that a
cell can declare it expected (``expect-fail: [converged]``).

``cancel-retry`` judges the first attempt of a cancel-retry cell: cancelled
while RAM was on its way, it must end ``cancelled`` with the source running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.migration.driver import TERMINAL, MigrationRun
from harness.migration.transports import STREAM_CAP_RAM_SIZES
from harness.results import CheckResult


def migration_figures(info: dict[str, Any]) -> dict[str, Any]:
    """The figures of a ``query-migrate`` answer that reports and checks quote."""
    ram = info.get("ram", {})
    return {
        "status": info.get("status"),
        "total_time_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_time_ms": info.get("setup-time"),
        "expected_downtime_ms": info.get("expected-downtime"),
        "ram_transferred": ram.get("transferred"),
        "ram_total": ram.get("total"),
        "ram_duplicate_pages": ram.get("duplicate"),
        "ram_normal_pages": ram.get("normal"),
        "dirty_sync_count": ram.get("dirty-sync-count"),
        "mbps": ram.get("mbps"),
    }


def ran_out_of_time(run: MigrationRun) -> bool:
    """The source was still migrating when the cell's timeout ran out (the
    driver leaves ``status`` at the state it was still in)."""
    return run.status not in TERMINAL and run.status != "destination-failed"


def check_converged(run: MigrationRun, timeout_s: float,
                    destination_exit: str | None = None) -> CheckResult:
    """``converged`` from how the migration ended.  ``destination_exit`` is
    how the destination QEMU ended when it is gone (None while it runs)."""
    if ran_out_of_time(run):
        ram = run.info.get("ram", {})
        given_up = (f"did not complete within {timeout_s:.0f} s" if run.stream_capped is None
                    else f"gave up after {run.stream_capped >> 20} MiB of saved stream (more "
                         f"than {STREAM_CAP_RAM_SIZES}x the guest's RAM; a stream to a file "
                         f"keeps every pass)")
        return CheckResult(
            "converged", False,
            f"{given_up}: state {run.status}, "
            f"{ram.get('transferred', 0) >> 20} MiB sent, {ram.get('remaining', 0) >> 20} MiB "
            f"remaining, dirtying {ram.get('dirty-pages-rate', 0)} pages/s, expected downtime "
            f"{run.info.get('expected-downtime', '?')} ms", migration_figures(run.info))
    figures = {"source_states": run.source_states}
    if not run.completed:
        reason = f"migration {run.status}: {run.error}" + (
            "" if destination_exit is None else f"; destination {destination_exit}")
        return CheckResult("converged", False, reason, figures)
    return CheckResult("converged", True, "migration completed", figures)


@dataclass(frozen=True)
class CancelEvidence:
    """The first attempt of a cancel-retry cell, as the flow saw it."""

    #: The source's migration state when ``migrate_cancel`` was sent.
    status_at_cancel: str | None
    #: RAM bytes sent by then.
    bytes_sent: int
    #: The terminal state the cancel led to (None: refused, or no event came).
    outcome: str | None
    #: The source's run state afterwards.
    source_status: str
    #: Whether the cell had the return-path capability (explains a 'failed').
    return_path: bool = False


def check_cancel_retry(ev: CancelEvidence) -> CheckResult:
    """Cancelled while ``active``, ended ``cancelled``, and the source ran on
    (QEMU puts it back to running: migration/migration.c, migrate_fd_cleanup)."""
    figures = {"status_at_cancel": ev.status_at_cancel, "bytes_sent_before_cancel": ev.bytes_sent,
               "outcome": ev.outcome, "source_status": ev.source_status}
    ok = (ev.outcome == "cancelled" and ev.source_status == "running"
          and ev.status_at_cancel == "active")
    if ok:
        return CheckResult("cancel-retry", True,
                           f"cancelled after {ev.bytes_sent >> 20} MiB; the source ran on", figures)
    why = ""
    if ev.outcome == "failed" and ev.return_path:
        # Seen on 10.0: migration_cancel (migration/migration.c) shuts the
        # return path down before it sets 'cancelling'; on a shared socket
        # that fails the outgoing stream first, and the migration ends failed.
        why = (" (with return-path QEMU shuts the return path down before entering "
               "'cancelling', so the stream can fail first)")
    return CheckResult("cancel-retry", False,
                       f"first attempt: state {ev.status_at_cancel} at cancel, ended "
                       f"{ev.outcome}, source {ev.source_status}{why}", figures)
