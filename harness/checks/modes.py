"""Behaviour checks: each migration feature must show what it exists for.

"Completed" is not enough: a cell with ``xbzrle`` on whose cache was never
used, or ``multifd`` that sent nothing over its channels, passed for the
wrong reason.  Each check here runs only when its feature is on in the cell,
and judges the figures QEMU reported (final ``query-migrate`` plus the samples
taken during the migration).  Field names are QEMU's ``MigrationInfo`` /
``MigrationStats`` / ``XBZRLECacheStats`` (qapi/migration.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.migration.driver import MigrationRun
from harness.results import CheckResult

#: A transfer-rate measurement may exceed max-bandwidth by this fraction:
#: QEMU's rate limiting works per time slice (migration/migration-stats.c,
#: migration_rate_exceeded; 100 ms slices) so short bursts overshoot.
BANDWIDTH_TOLERANCE = 0.25
#: Below this, max-bandwidth is a deliberate limit worth judging.
BANDWIDTH_JUDGED_BELOW = 1 << 30


def check_modes(run: MigrationRun, params: dict[str, Any]) -> list[CheckResult]:
    checks = []
    caps, info = run.caps, run.info
    ram = info.get("ram", {})
    if caps.get("xbzrle"):
        x = info.get("xbzrle-cache", {})
        moved = {k: x.get(k, 0) for k in ("pages", "bytes", "cache-miss", "cache-miss-rate")}
        ok = bool(x) and (x.get("pages", 0) > 0 or x.get("cache-miss", 0) > 0)
        checks.append(CheckResult("xbzrle", ok,
                                  f"xbzrle cache used: {moved}" if ok else
                                  f"xbzrle on but its cache counters did not move: {x or 'absent'}",
                                  {"xbzrle_cache": x}))
    if caps.get("multifd"):
        sent = ram.get("multifd-bytes", 0)
        checks.append(CheckResult("multifd", sent > 0,
                                  f"{sent} bytes over multifd channels" if sent else
                                  "multifd on but no bytes went over its channels",
                                  {"multifd_bytes": sent,
                                   "channels": params.get("multifd-channels"),
                                   "compression": params.get("multifd-compression")}))
    if caps.get("postcopy-ram"):
        in_postcopy = "postcopy-active" in run.source_states
        requests = ram.get("postcopy-requests", 0)
        ran_early = run.t_dst_resumed is not None
        ok = in_postcopy and ran_early and requests > 0
        checks.append(CheckResult(
            "postcopy", ok,
            (f"switched to postcopy; destination ran during postcopy and faulted "
             f"{requests} page(s) from the source") if ok else
            (f"postcopy not shown: states {run.source_states}, destination resumed early: "
             f"{ran_early}, page requests: {requests}"),
            {"postcopy_requests": requests, "source_states": run.source_states,
             "destination_resumed_in_postcopy": ran_early}))
    if caps.get("pause-before-switchover"):
        ok = run.t_pre_switchover is not None and "pre-switchover" in run.source_states
        checks.append(CheckResult("pause-before-switchover", ok,
                                  "source stopped in pre-switchover and was continued" if ok else
                                  f"no pre-switchover state seen: {run.source_states}",
                                  {"source_states": run.source_states}))
    if caps.get("auto-converge"):
        peak = max((s.get("throttle", 0) or 0 for s in run.samples), default=0)
        peak = max(peak, info.get("cpu-throttle-percentage", 0) or 0)
        checks.append(CheckResult("auto-converge", peak > 0,
                                  f"CPU throttle rose to {peak}%" if peak else
                                  "auto-converge on but the CPU was never throttled",
                                  {"peak_throttle_percent": peak}))
    if caps.get("zero-copy-send"):
        checks.append(_zero_copy(ram))
    if caps.get("compress"):
        checks.append(_compress(info, params))
    if caps.get("dirty-limit"):
        checks.append(_dirty_limit(run, params))
    limit = params.get("max-bandwidth")
    if isinstance(limit, int) and 0 < limit < BANDWIDTH_JUDGED_BELOW and run.completed:
        judged = _bandwidth(run, limit)
        if judged is not None:
            checks.append(judged)
    return checks


def _zero_copy(ram: dict[str, Any]) -> CheckResult:
    """zero-copy-send: multifd sent with MSG_ZEROCOPY and flushed the
    completions at each sync.  ``dirty-sync-missed-zero-copy`` moves only
    there (migration/multifd.c, multifd_zero_copy_flush, called when
    migrate_zero_copy_send() is on), each time the kernel reports it copied
    after all -- which it always does for local delivery, so over loopback
    the counter must move."""
    missed = ram.get("dirty-sync-missed-zero-copy", 0) or 0
    ok = missed > 0 and (ram.get("multifd-bytes", 0) or 0) > 0
    return CheckResult("zero-copy-send", ok,
                       f"zero-copy completions flushed; the kernel copied at {missed} syncs "
                       "(loopback delivery always copies)" if ok else
                       "zero-copy-send on but no zero-copy completion was ever flushed "
                       f"(dirty-sync-missed-zero-copy {missed})",
                       {"dirty_sync_missed_zero_copy": missed,
                        "multifd_bytes": ram.get("multifd-bytes")})


def _compress(info: dict[str, Any], params: dict[str, Any]) -> CheckResult:
    """compress (up to 9.0): pages went through the compression threads
    (qapi/migration.json CompressionStats, filled from migration/ram.c
    compress_threads' counters)."""
    stats = info.get("compression", {}) or {}
    pages = stats.get("pages", 0) or 0
    figures = {"compression": stats, "threads": params.get("compress-threads"),
               "level": params.get("compress-level")}
    ok = pages > 0 and (stats.get("compressed-size", 0) or 0) > 0
    return CheckResult("compress", ok,
                       f"{pages} pages compressed to {stats.get('compressed-size', 0) >> 10} KiB "
                       f"(rate {stats.get('compression-rate', 0):.2f}, "
                       f"{params.get('compress-threads', 'default')} threads, level "
                       f"{params.get('compress-level', 'default')})" if ok else
                       f"compress on but no page was compressed: {stats or 'no statistics'}",
                       figures)


def _dirty_limit(run: MigrationRun, params: dict[str, Any]) -> CheckResult:
    """dirty-limit throttles each vCPU through KVM's dirty ring once precopy
    stops converging (migration/ram.c, migration_dirty_limit_guest ->
    qmp_set_vcpu_dirty_limit; system/dirtylimit.c adjusts the per-round sleep).
    The figures QEMU reports for it must move: a vCPU was held in some round."""
    per_round = max((s.get("dirty_limit_throttle_time_per_round") or 0
                     for s in run.samples), default=0)
    per_round = max(per_round, run.info.get("dirty-limit-throttle-time-per-round", 0) or 0)
    ring_full = max((s.get("dirty_limit_ring_full_time") or 0 for s in run.samples), default=0)
    ring_full = max(ring_full, run.info.get("dirty-limit-ring-full-time", 0) or 0)
    figures = {"peak_throttle_time_per_round_us": per_round,
               "peak_ring_full_time_us": ring_full,
               "vcpu_dirty_limit_mb_s": params.get("vcpu-dirty-limit")}
    ok = per_round > 0
    return CheckResult("dirty-limit", ok,
                       f"vCPUs held up to {per_round} us per throttle round "
                       f"(ring full {ring_full} us)" if ok else
                       "dirty-limit on but no vCPU was ever held (throttle time per "
                       "round stayed 0)", figures)


def _bandwidth(run: MigrationRun, limit: int) -> CheckResult | None:
    """The rate while precopy was active stays within tolerance of the limit.

    Measured from the samples taken while the state was ``active``: once a
    migration switches to postcopy the limit in force is
    ``max-postcopy-bandwidth`` instead (migration/migration.c, postcopy_start
    resets the rate limit), and the setup phase sends nothing.
    """
    # Page data only: QEMU 10.0 does not charge zero pages to the rate limit
    # (they are sent as a flag), so the transferred total can outrun it.
    active = [s for s in run.samples if s.get("status") == "active" and s.get("normal_bytes")]
    if len(active) < 2 or active[-1]["t"] <= active[0]["t"]:
        # Too short to sample while rate-limited; the totals would include the
        # final copy, which QEMU does not rate-limit.  Not judged.
        return None
    sent = active[-1]["normal_bytes"] - active[0]["normal_bytes"]
    seconds = active[-1]["t"] - active[0]["t"]
    how = f"{len(active)} samples while active"
    rate = sent / seconds if seconds else 0.0
    bound = limit * (1 + BANDWIDTH_TOLERANCE)
    figures = {"bytes_per_s": round(rate), "max_bandwidth": limit, "measured_over": how,
               "tolerance": BANDWIDTH_TOLERANCE, "bytes": sent, "seconds": round(seconds, 3)}
    ok = rate <= bound
    return CheckResult("bandwidth", ok,
                       f"{rate / 2**20:.1f} MiB/s {'<=' if ok else '>'} limit "
                       f"{limit / 2**20:.1f} MiB/s + {BANDWIDTH_TOLERANCE:.0%}", figures)


def check_zero_pages(info: dict[str, Any], ram_bytes: int, nonzero_bytes: int) -> CheckResult:
    """Zero pages are not sent as data: migrating a guest whose RAM is zero
    except ``nonzero_bytes`` must transfer little more than those bytes
    (QEMU sends a zero page as a flag: migration/ram.c, save_zero_page)."""
    sent = info.get("ram", {}).get("transferred", 0)
    # Page headers, device state and the RAM block list come on top.
    bound = int(nonzero_bytes * 1.1) + (4 << 20)
    figures = {"transferred": sent, "ram_bytes": ram_bytes, "nonzero_bytes": nonzero_bytes,
               "bound": bound, "duplicate_pages": info.get("ram", {}).get("duplicate")}
    ok = sent <= bound
    return CheckResult("zero-pages", ok,
                       f"{sent >> 20} MiB sent for {ram_bytes >> 20} MiB of RAM with "
                       f"{nonzero_bytes >> 20} MiB non-zero" + ("" if ok else
                                                               f" (more than {bound >> 20} MiB)"),
                       figures)


def check_mapped_ram(stream: Path, ram_bytes: int) -> CheckResult:
    """With mapped-ram every RAM page has a fixed offset in the file (QEMU 9.0+,
    migration/ram.c mapped_ram_setup_ramblock), so the stream file spans at
    least the guest's RAM while holding far fewer blocks where RAM was zero."""
    st = stream.stat()
    allocated = st.st_blocks * 512
    ok = st.st_size >= ram_bytes
    return CheckResult("mapped-ram", ok,
                       f"stream file spans {st.st_size >> 20} MiB for {ram_bytes >> 20} MiB of "
                       f"RAM ({allocated >> 20} MiB allocated)" if ok else
                       f"stream file is {st.st_size >> 20} MiB, smaller than the "
                       f"{ram_bytes >> 20} MiB of RAM: not laid out by page offset",
                       {"file_size": st.st_size, "allocated": allocated, "ram_bytes": ram_bytes})


def check_shared_ram_not_sent(info: dict[str, Any], ram_bytes: int) -> CheckResult:
    """x-ignore-shared with both sides on one RAM file: RAM is not sent, so the
    stream carries little more than device state (a fraction of the RAM)."""
    ram = info.get("ram", {})
    sent = ram.get("transferred", 0)
    bound = ram_bytes // 20
    ok = sent <= bound
    return CheckResult("shared-ram", ok,
                       f"{sent >> 10} KiB sent for {ram_bytes >> 20} MiB of shared RAM"
                       + ("" if ok else f" (more than {bound >> 20} MiB: RAM was sent)"),
                       {"transferred": sent, "bound": bound, "normal_pages": ram.get("normal")})


def check_background_snapshot(source_status: str) -> CheckResult:
    """A background snapshot saves RAM while the guest keeps running
    (migration/migration.c, bg_migration_thread resumes the VM right after
    saving device state): the source must still be running at the end."""
    ok = source_status == "running"
    return CheckResult("background-snapshot", ok,
                       "the source ran on during and after the snapshot" if ok else
                       f"the source is '{source_status}' after the snapshot: it was stopped",
                       {"source_status_after": source_status})
