"""The exact RAM check of a cell whose sides run on different hosts.

Same verdict as harness.checks.ram.check_ram (pass only when not one byte
differs outside what a running guest legitimately rewrote), from the per-chunk
hash comparison of harness.hosts.ram: each host hashes its own RAM file, only
differing chunks travel to be examined page by page.
"""
from __future__ import annotations

import logging

from harness.checks.ram import RamRegion, gpa_of
from harness.hosts.ram import ChunkDiff
from harness.results import CheckResult

log = logging.getLogger(__name__)


def check_ram_across_hosts(diff: ChunkDiff, layout: list[RamRegion],
                           explained_reason: str | None = None) -> CheckResult:
    """``explained_reason``: why the first byte of each region page was left
    out of the comparison (the destination guest ran), or None."""
    figures = {
        "bytes_compared": diff.size,
        "differing_pages": diff.differing_pages,
        "first_differing_gpas": [hex(gpa_of(o, layout)) for o in diff.first_offsets],
        "compare_seconds": round(diff.seconds, 4),
        "compared_by": f"sha256 per {diff.chunk >> 20} MiB chunk on each host",
        "chunks": diff.chunks,
        "differing_chunks": diff.differing_chunks[:16],
    }
    if explained_reason is not None:
        figures["explained_reason"] = explained_reason
    if diff.differing_pages == 0 and not diff.differing_chunks:
        extra = " outside the region bytes the running guest rewrote" if explained_reason else ""
        return CheckResult("ram", True, f"{diff.size >> 20} MiB identical{extra} "
                           f"({diff.chunks} chunk hashes per host)", figures)
    if not diff.first_offsets:
        return CheckResult("ram", False, f"{len(diff.differing_chunks)} chunk(s) differ "
                           "(the files differ in size)", figures)
    first = figures["first_differing_gpas"][0]
    return CheckResult("ram", False, f"{diff.differing_pages} page(s) differ, first at "
                       f"guest-physical {first}", figures)
