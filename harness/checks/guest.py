"""The guest's own consistency: the dirtier's one-step invariant.

The dirtier increments the first byte of each page in address order, so a
correct snapshot of its region reads v..v, v-1..v-1 (mod 256).  A page the
migration lost or left stale breaks that pattern even where the exact RAM
comparison cannot run (remote hosts, pmemsave fallbacks).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.guest.dirtier import check_invariant, read_region_bytes
from harness.results import CheckResult
from harness.units import PAGE


def check_guest_invariant(ram_file: Path, region_offset: int, pages: int,
                          region_gpa: int) -> tuple[CheckResult, np.ndarray]:
    """Check the invariant on a paused guest's RAM file; also return the values read."""
    values = read_region_bytes(ram_file, region_offset, pages)
    res = check_invariant(values)
    figures = {
        "pages": res.pages,
        "value_high": res.value_high,
        "value_low": res.value_low,
        "boundary_page": res.boundary,
    }
    if res.ok:
        return CheckResult("guest", True,
                           f"{res.pages} pages consistent (pass boundary at page {res.boundary})",
                           figures), values
    bad = res.first_bad_page
    figures["first_bad_page"] = bad
    if bad is not None:
        figures["first_bad_gpa"] = hex(region_gpa + bad * PAGE)
    return CheckResult("guest", False, f"invariant broken: {res.reason}", figures), values
