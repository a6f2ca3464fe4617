"""The liveness, converged and cancel-retry verdicts as functions of evidence:
each must pass on good evidence and fail, saying why, on each kind of bad one."""
from __future__ import annotations

from dataclasses import replace

from harness.checks.converged import (CancelEvidence, check_cancel_retry, check_converged,
                                      migration_figures, ran_out_of_time)
from harness.checks.liveness import (HeartbeatLiveness, MarkerLiveness,
                                     check_heartbeat_liveness, check_marker_liveness,
                                     check_still_running)
from harness.migration.driver import MigrationRun
from harness.migration.transports import STREAM_CAP_RAM_SIZES, stream_cap


#: A dirtier that went on after cont (5 new heartbeats, its region changing).
BEATS = HeartbeatLiveness(alive=True, exit_reason="", heartbeats=15, beats_before=10,
                          restarts=0, pages_changed=400)


def test_heartbeat_liveness_passes_with_new_beats_and_a_changing_region():
    res = check_heartbeat_liveness(BEATS)
    assert res.passed and res.name == "liveness"
    assert res.summary == "5 heartbeats, 400 pages changed"
    assert res.figures == {"heartbeats": 15, "restarts": 0, "pages_changed": 400,
                           "destination_alive": True}


def test_heartbeat_liveness_failures_say_why():
    dead = check_heartbeat_liveness(replace(BEATS, alive=False, exit_reason="killed by SIGSEGV"))
    assert not dead.passed and dead.summary == "destination died after cont: killed by SIGSEGV"
    restarted = check_heartbeat_liveness(replace(BEATS, restarts=1))
    assert not restarted.passed and "CPU state not migrated" in restarted.summary
    slow = check_heartbeat_liveness(replace(BEATS, heartbeats=12))
    assert not slow.passed and slow.summary == "only 2 heartbeats in 20 s after cont"
    frozen = check_heartbeat_liveness(replace(BEATS, pages_changed=0))
    assert not frozen.passed and "region did not change" in frozen.summary


#: A pattern guest that went on after cont (3 more passes, the same boot).
MARKER = MarkerLiveness(alive=True, exit_reason="", boots_before=1, passes_before=7,
                        boots_after=1, passes_after=10)


def test_marker_liveness_passes_when_passes_go_on():
    res = check_marker_liveness(MARKER)
    assert res.passed and res.summary == "3 passes after cont, no restart"
    assert res.figures["passes_before"] == 7 and res.figures["passes_after"] == 10


def test_marker_liveness_sees_a_restart_and_a_stall():
    reset = check_marker_liveness(replace(MARKER, boots_after=2, passes_after=8))
    assert not reset.passed
    assert reset.summary.startswith("guest restarted on the destination (boots counter 1 -> 2")
    stalled = check_marker_liveness(replace(MARKER, passes_after=8))
    assert not stalled.passed and stalled.summary == "only 1 passes in 20 s after cont"
    dead = check_marker_liveness(replace(MARKER, alive=False, exit_reason="exit 1"))
    assert not dead.passed and "died" in dead.summary


def test_still_running():
    assert check_still_running(True, "running", "").passed
    paused = check_still_running(True, "paused", "running")
    assert not paused.passed and paused.figures == {"status": "paused"}
    dead = check_still_running(False, "dead", "exit 1")
    assert not dead.passed and dead.summary == "destination dead after cont: exit 1"


def _run(status: str, **kw) -> MigrationRun:
    return MigrationRun(uri="unix:/x", caps={}, status=status, source_states=["setup", status],
                        **kw)


def test_converged_on_completion():
    res = check_converged(_run("completed"), 60)
    assert res.passed and res.summary == "migration completed"
    assert res.figures == {"source_states": ["setup", "completed"]}


def test_not_converging_in_time_is_reported_with_figures():
    info = {"status": "active", "expected-downtime": 900,
            "ram": {"transferred": 300 << 20, "remaining": 40 << 20, "dirty-pages-rate": 5000}}
    run = _run("active", info=info)
    assert ran_out_of_time(run)
    res = check_converged(run, 30)
    assert not res.passed
    assert res.summary == ("did not complete within 30 s: state active, 300 MiB sent, 40 MiB "
                           "remaining, dirtying 5000 pages/s, expected downtime 900 ms")
    assert res.figures == migration_figures(info)
    assert res.figures["ram_transferred"] == 300 << 20


def test_a_capped_stream_says_so_rather_than_a_timeout():
    info = {"status": "active", "expected-downtime": 334,
            "ram": {"transferred": 2100 << 20, "remaining": 95 << 20, "dirty-pages-rate": 87695}}
    run = replace(_run("active", info=info), stream_capped=2100 << 20)
    assert ran_out_of_time(run)
    res = check_converged(run, 60)
    assert not res.passed
    assert res.summary.startswith("gave up after 2100 MiB of saved stream (more than 8x the "
                                  "guest's RAM; a stream to a file keeps every pass): state "
                                  "active, 2100 MiB sent, 95 MiB remaining")
    assert res.summary.endswith("expected downtime 334 ms")


def test_only_streams_that_grow_with_the_passes_are_capped():
    ram = 256 << 20
    assert stream_cap("exec", {}, ram) == STREAM_CAP_RAM_SIZES * ram
    assert stream_cap("file", {"mapped-ram": False}, ram) == STREAM_CAP_RAM_SIZES * ram
    assert stream_cap("file", {"mapped-ram": True}, ram) is None   # pages at fixed offsets
    assert stream_cap("unix", {}, ram) is None
    assert stream_cap("tcp", {}, ram) is None


def test_refused_migration_names_the_destination_reason():
    run = _run("failed", error="Unable to write to socket")
    assert not ran_out_of_time(run)
    res = check_converged(run, 60, "exit status 1; stderr: UUID mismatch")
    assert not res.passed
    assert res.summary == ("migration failed: Unable to write to socket; destination exit "
                           "status 1; stderr: UUID mismatch")
    assert not ran_out_of_time(_run("destination-failed"))
    assert check_converged(_run("failed", error="x"), 60).summary == "migration failed: x"


def test_cancel_retry_verdicts():
    ok = check_cancel_retry(CancelEvidence("active", 5 << 20, "cancelled", "running"))
    assert ok.passed and ok.summary == "cancelled after 5 MiB; the source ran on"
    assert ok.figures == {"status_at_cancel": "active", "bytes_sent_before_cancel": 5 << 20,
                          "outcome": "cancelled", "source_status": "running"}
    too_late = check_cancel_retry(CancelEvidence("completed", 9 << 20, None, "postmigrate"))
    assert not too_late.passed
    assert too_late.summary == "first attempt: state completed at cancel, ended None, " \
                               "source postmigrate"
    failed = check_cancel_retry(CancelEvidence("active", 1, "failed", "running",
                                               return_path=True))
    assert not failed.passed and "shuts the return path down" in failed.summary
    plain_failed = check_cancel_retry(CancelEvidence("active", 1, "failed", "running"))
    assert "return path" not in plain_failed.summary
