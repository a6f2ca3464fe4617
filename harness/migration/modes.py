"""How a cell migrates (its *mode*) and which fault a negative-control cell injects.

Capabilities say what QEMU may do; the mode says what the harness does with
it, and is a matrix dimension of its own (``mode:`` on a cell or a product):

* ``precopy`` (the default, written as no mode at all): migrate and wait.
  With ``postcopy-ram`` on, the driver switches to postcopy after
  ``POSTCOPY_AFTER_SYNCS`` dirty-bitmap syncs (harness.migration.driver).
* ``postcopy-after-N``: switch to postcopy after N syncs instead, N in 1..9
  (N=1: as soon as the first pass began; later: after more precopy passes, so
  fewer pages are left to fault in).  Needs ``postcopy-ram``.
* ``cancel-retry``: start the migration, cancel it once the first pass is under
  way, prove the source runs on (``migrate_cancel`` must leave it running:
  migration/migration.c, migrate_fd_cancel), then migrate it again to a fresh
  destination and judge that second migration like any other.

A *fault* makes a cell a negative control of one behaviour: the harness
deliberately breaks something on one side, and the cell declares with
``expect-fail`` which checks must then fail.  Each fault says what it breaks.
"""
from __future__ import annotations

import re
import uuid
from typing import Any

#: The default mode, spelled out.
PRECOPY = "precopy"
CANCEL_RETRY = "cancel-retry"
_POSTCOPY_AFTER_RE = re.compile(r"postcopy-after-([1-9])\Z")

#: Modes and what they do, for error messages and ``mharness list``.
MODES: dict[str, str] = {
    PRECOPY: "migrate and wait (postcopy-ram: switch after the driver's default syncs)",
    "postcopy-after-N": "switch to postcopy after N dirty-bitmap syncs (N = 1..9)",
    CANCEL_RETRY: "cancel during the first pass, check the source runs on, migrate again",
}

#: fault -> what it breaks.
FAULTS: dict[str, str] = {
    "dst-uuid-differs": (
        "the destination gets another -uuid than the source: with validate-uuid "
        "the destination must refuse the stream (migration/savevm.c, "
        "vmstate_uuid_post_load)"),
    "dst-no-switchover-ack": (
        "the destination leaves switchover-ack off while the source turns it on: the "
        "source must not switch over without the destination's ack "
        "(migration/migration.c, migration_can_switchover)"),
}


def mode_problem(mode: str) -> str | None:
    """Why ``mode`` is not a mode, or None."""
    if mode in (PRECOPY, CANCEL_RETRY) or _POSTCOPY_AFTER_RE.match(mode):
        return None
    return f"unknown mode '{mode}' (modes: {', '.join(MODES)})"


def postcopy_after(mode: str) -> int | None:
    """N of ``postcopy-after-N``; None for other modes."""
    m = _POSTCOPY_AFTER_RE.match(mode)
    return int(m.group(1)) if m else None


def mode_needs(mode: str, caps: dict[str, Any]) -> str | None:
    """What the capabilities lack for ``mode``, or None."""
    if postcopy_after(mode) is not None and not caps.get("postcopy-ram"):
        return f"mode '{mode}' needs capability postcopy-ram in the cell's capset"
    return None


def fault_problem(fault: str) -> str | None:
    if fault in FAULTS:
        return None
    return f"unknown fault '{fault}' (faults: {', '.join(FAULTS)})"


def cell_uuid(seed: int, role: str, fault: str) -> str:
    """The ``-uuid`` a side gets when validate-uuid is on: the same for both
    sides (derived from the cell's seed), unless the fault makes them differ.
    Without ``-uuid`` on the destination QEMU skips the comparison with only a
    warning (vmstate_uuid_post_load: "local uuid isn't set"), so the check
    would prove nothing."""
    name = f"mharness-{seed}" + ("-other" if role == "dst" and fault == "dst-uuid-differs"
                                 else "")
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


#: Trace events (log backend: printed on QEMU's stderr, which the harness
#: keeps) that show the switchover-ack handshake (migration/trace-events,
#: 8.1+): the destination counting the devices that must approve first
#: (migration/savevm.c, qemu_loadvm_state_switchover_ack_needed; with none
#: pending it acks at once), and the source's return-path thread receiving the
#: ack (migration/migration.c, source_return_path_thread).
ACK_TRACE_SRC = "source_return_path_thread_switchover_acked"
ACK_TRACE_DST = "loadvm_state_switchover_ack_needed"


def side_args(caps: dict[str, Any], role: str, seed: int, fault: str) -> list[str]:
    """Command-line additions one side needs for the cell's capabilities."""
    args: list[str] = []
    if caps.get("validate-uuid"):
        args += ["-uuid", cell_uuid(seed, role, fault)]
    if caps.get("switchover-ack"):
        args += ["-trace", ACK_TRACE_SRC if role == "src" else ACK_TRACE_DST]
    return args


def side_caps(caps: dict[str, bool], role: str, fault: str) -> dict[str, bool]:
    """The capabilities one side gets: the cell's, unless its fault changes them."""
    if role == "dst" and fault == "dst-no-switchover-ack" and caps.get("switchover-ack"):
        return {**caps, "switchover-ack": False}
    return caps
