"""N-wise covering arrays over migration settings, constrained by the rule oracle.

A covering strategy names *factors* -- the target, the transport, the builds,
capsets, each capability (a boolean factor), each parameter (a list of
values), paramsets and modes -- and an order ``t``.  The cells it produces
contain every combination of ``t`` factor values that QEMU would accept
together (a "required tuple"), in far fewer cells than the full product.

Constraints are not written by hand: they are computed from the rule oracle
(``harness.rules``), per *context* -- the source and destination QEMU versions
and the accelerator, which is what the oracle's verdicts depend on.

One module per job, in the order the data flows:

- ``judge``: the oracle asked as the cell flow asks (:class:`Judge`,
  :class:`Refusal`, :class:`Context`);
- ``factors``: the model -- :class:`Factor`, settings, :class:`SettingsModel`;
- ``exclusions``: what the oracle forbids in a context (:func:`analyse` ->
  :class:`Analysis`) and how it is reported (:class:`Exclusion`);
- ``covertable_adapter``: the only code that knows covertable's private hooks
  (checked by ``tests/test_covertable_contract.py``);
- ``generator``: :func:`generate`, the array with the oracle's repair loop;
- ``measure``: :func:`coverage`, required tuples against covered ones.

``harness.matrix.plan`` puts them together for a tier of ``matrix.yaml``.
"""
from __future__ import annotations

from harness.matrix.covering.exclusions import (
    FLOW_UNSUPPORTED_CAPS,
    Analysis,
    Exclusion,
    analyse,
    exclusions_of,
    feasible,
    merge_exclusions,
)
from harness.matrix.covering.factors import Factor, Setting, SettingsModel, fmt_setting, neutral
from harness.matrix.covering.generator import Generated, generate
from harness.matrix.covering.judge import ALWAYS_ON, Context, Judge, Refusal, version_of
from harness.matrix.covering.measure import ContextPart, Coverage, coverage

__all__ = [
    "ALWAYS_ON", "Analysis", "Context", "ContextPart", "Coverage", "Exclusion", "Factor",
    "FLOW_UNSUPPORTED_CAPS", "Generated", "Judge", "Refusal", "Setting", "SettingsModel",
    "analyse", "coverage", "exclusions_of", "feasible", "fmt_setting", "generate",
    "merge_exclusions", "neutral", "version_of",
]
