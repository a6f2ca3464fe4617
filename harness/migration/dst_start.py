"""How the destination QEMU is started: paused (``-S``) or autostarting.

A cell dimension of its own (``dst-start:`` on a cell, a product or a
covering array), because real setups do both and QEMU behaves differently:

* ``paused`` (the default, and no part of a cell's id): the destination gets
  ``-S -incoming defer``.  QEMU leaves it ``paused`` after the last byte lands
  (migration/migration.c, process_incoming_migration_bh: without autostart it
  calls ``runstate_set(RUN_STATE_PAUSED)``), the harness compares RAM while
  nothing moves and then sends ``cont``; in postcopy the harness sends
  ``cont`` at ``postcopy-active``.
* ``autostart``: ``-incoming defer`` without ``-S``, as libvirt and most
  management layers that do not hold the guest run it.  QEMU starts the guest
  itself: after precopy once the stream is loaded, when the source was
  running (process_incoming_migration_bh: 7.2 ``if (!global_state_received()
  || global_state_get_runstate() == RUN_STATE_RUNNING) { if (autostart)
  vm_start(); ...}``; 10.0 ``if (runstate_is_live(migration_get_target_runstate()))
  { if (autostart) { if (migration_block_activate(NULL)) vm_start(); } ...}``),
  and it does so before it reports ``completed``; any other source run state
  is copied as it is (``runstate_set(global_state_get_runstate())``).  In
  postcopy it starts the guest when the source says run, whatever the source's
  state (migration/savevm.c, loadvm_postcopy_handle_run_bh: ``if (autostart)
  ... vm_start()``, 7.2 and 10.0), and on completion leaves it running
  (postcopy_ram_listen_thread only sets the ``completed`` state).

The harness stops an autostarted destination as soon as its ``completed``
arrives, so RAM holds still for the exact comparison (the guest's own writes
to its region since it started are explained and judged by the guest
invariant, as in postcopy), and judges the start itself with the
``autostart`` check (harness.checks.dststart).
"""
from __future__ import annotations

#: The default: ``-S``; the harness sends ``cont``.
PAUSED = "paused"
#: No ``-S``: QEMU starts the guest itself.
AUTOSTART = "autostart"

#: Start modes and what they do, for error messages and documentation.
DST_STARTS: dict[str, str] = {
    PAUSED: "destination started with -S; the harness compares RAM, then sends cont",
    AUTOSTART: "destination started without -S; QEMU runs the guest itself after switchover",
}


def dst_start_problem(name: str) -> str | None:
    """Why ``name`` is not a destination start mode, or None."""
    if name in DST_STARTS:
        return None
    return f"unknown dst-start '{name}' (dst-start: {', '.join(DST_STARTS)})"


__all__ = ["AUTOSTART", "DST_STARTS", "PAUSED", "dst_start_problem"]
