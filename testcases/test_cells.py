"""Every cell of the selected tier (default: smoke), against real QEMU.

Ids are the cell ids of the matrix, so ``pytest testcases -k unix`` selects
the same cells as ``mharness run -k unix``.
"""
from __future__ import annotations

import pytest

from harness.results import KNOWN_FAILURE, PASSED, SKIPPED
from harness.run.cellrun import run_logged
from harness.run.runner import cell_logdir


@pytest.mark.cell
def test_cell(cell, run_state, record) -> None:
    # Through the runner's own path: known issues and repeat apply as under
    # mharness run.  A known failure is a visible xfail, never a pass.
    result = record(run_logged(cell, cell_logdir(run_state.results_dir, cell.id)))
    if result.verdict == SKIPPED:
        pytest.skip(result.reason)
    if result.verdict == KNOWN_FAILURE:
        pytest.xfail(result.reason)
    details = "\n".join(f"  {c.name}: {'ok' if c.as_expected else 'WRONG'}: {c.summary}"
                        for c in result.checks)
    assert result.verdict == PASSED, f"{result.reason}\n{details}\nlogs: {result.logdir}"
    # A passed migrate cell has judged every check, with figures; a negative
    # control has judged (and failed) the checks it exists to make fail.
    names = {c.name for c in result.checks}
    judged = set(cell.expect_fail) or {"converged", "ram", "guest", "liveness", "downtime"}
    assert judged <= names, f"{sorted(judged - names)} not judged\n{details}"
