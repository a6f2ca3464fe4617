"""Checks: each a function from collected evidence to a CheckResult (a verdict
with the figures it judged).  The cell flow (harness.migration.flow) and the
workloads (harness.guest.workload) collect the evidence; only these modules
judge it:

- ``ram``: the exact comparison of the two sides' RAM files;
- ``guest``: the dirtier's one-step invariant on the paused destination;
- ``converged``: how the migration ended; the cancel-retry first attempt;
- ``liveness``: the destination guest runs on after ``cont``;
- ``downtime``: QEMU's downtime and the guest's own gap against the limit;
- ``cpustate``: both sides' CPU registers (read over QMP/HMP, then compared);
- ``modes``, ``sides``: what a capability or parameter promises;
- ``vmstate_static``: the advisory static VMState check across builds.
"""
