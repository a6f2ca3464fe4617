"""Known deviations: QEMU versions that break the contract the rules state.

The rules in :mod:`harness.rules.caps` and :mod:`harness.rules.params` are
the contract: what QEMU's QAPI documentation promises and what its current
tree's checks intend.  Each entry here records where builds of some versions
behave otherwise: since which version, until which release fixed it (a stable
backport counts: ranges are full versions), what the build does instead, the
QEMU file and function, and the fixing commit where known.

Why a separate layer: a check QEMU forgot to enforce must not look like
conformance (``mharness probe`` reports the probe as ``deviation`` with the
id below), and a build where the defect is gone simply agrees with the
contract, with a note that the known deviation did not reproduce.
"""
from __future__ import annotations

import dataclasses

from harness.rules import caps as _caps
from harness.rules import params as _params
from harness.rules.model import Ctx, Deviation, Rule, SourceRef

MIG_C = "migration/migration.c"
OPT_C = "migration/options.c"


def _contract_rule(rule_id: str) -> Rule:
    for r in (*_caps.CAP_RULES, *_params.PARAM_RULES):
        if r.id == rule_id:
            return r
    raise KeyError(rule_id)


def _strict_before_incoming(cap: str) -> Rule:
    """The 8.1.0 .. 10.0.0 form: refused after migrate-incoming whenever ``cap``
    is on in the result, even when it already was on (so with multifd or
    postcopy-preempt preset, no capability can be changed at all)."""
    contract = _contract_rule(f"caps.{cap}.requires-before-incoming-if-off")

    def violated(ctx: Ctx) -> bool:
        return ctx.state.incoming_started

    return dataclasses.replace(contract, violated=violated,
                               summary=f"{cap} on after migrate-incoming (even if already on)")


def _mapped_ram_reads_current(rule_id: str, param: str) -> Rule:
    """The 9.0+ form: the check reads QEMU's *current* parameter, not the proposed one."""
    contract = _contract_rule(rule_id)

    def violated(ctx: Ctx) -> bool:
        value = ctx.cur_params.get(param)
        return value not in (None, "", "none")

    return dataclasses.replace(contract, violated=violated,
                               summary=f"with mapped-ram on, the current {param} must be unset")


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        id="multifd-compression-level-dropped",
        summary="multifd-zlib-level and multifd-zstd-level are accepted whatever their value "
                "and then dropped: never range-checked, never applied (query-migrate-parameters "
                "keeps 1), because qmp_migrate_set_parameters does not copy them into the "
                "proposed parameters (migrate_params_test_apply) nor apply them "
                "(migrate_params_apply); migrate_params_check only ever sees the current values",
        contract="qapi/migration.json documents multifd-zlib-level 0..9 and multifd-zstd-level "
                 "0..20; migrate_params_check refuses larger values "
                 "('a value between 0 and 9' / 'between 0 and 20')",
        where=(SourceRef(MIG_C, "migrate_params_test_apply", (5, 0), (8, 1)),
               SourceRef(MIG_C, "migrate_params_apply", (5, 0), (8, 1)),
               SourceRef(OPT_C, "migrate_params_test_apply", (8, 1), (9, 0)),
               SourceRef(OPT_C, "migrate_params_apply", (8, 1), (9, 0))),
        # The members came in 5.0 (QAPI "Since 5.0"); read missing at 6.0.0 and
        # observed on Debian's 7.2.22.
        since=(5, 0, 0), until=(9, 0, 0),
        fixed_in="QEMU 9.0: 'migration: Properly apply migration compression level "
                 "parameters' (Bryan Zhang, migration pull of 2024-03-04, up to 1a6e217c35b6)",
        drops_params=("multifd-zlib-level", "multifd-zstd-level"),
    ),
    Deviation(
        id="caps-before-incoming-refused-when-already-on",
        summary="after migrate-incoming, every migrate-set-capabilities is refused while "
                "multifd or postcopy-preempt is on ('Multifd must be set before incoming "
                "starts'), even when the request leaves them on (e.g. turning xbzrle off)",
        contract="multifd and postcopy-preempt cannot be turned ON after migrate-incoming "
                 "(82137e6c8c); other capabilities can still change",
        where=(SourceRef(OPT_C, "migrate_caps_check", (8, 1), None),),
        since=(8, 1, 0), until=(10, 0, 1),
        fixed_in="QEMU 10.1 and 10.0.1: 17bec9235bb0 'migration: Allow caps to be set when "
                 "preempt or multifd cap enabled' (Peter Xu; Fixes: 82137e6c8c)",
        replaces=(_strict_before_incoming("postcopy-preempt"), _strict_before_incoming("multifd")),
    ),
    Deviation(
        id="mapped-ram-check-reads-current-parameters",
        summary="with mapped-ram on, migrate_params_check tests the CURRENT multifd-compression "
                "and tls-creds (migrate_multifd_compression(), migrate_tls()) instead of the "
                "proposed ones: setting multifd-compression=zlib is accepted, and from then on "
                "every migrate-set-parameters is refused, even setting it back to none, until "
                "mapped-ram is turned off",
        contract="'Mapped-ram only available for non-compressed non-TLS multifd migration': "
                 "the proposed parameters are checked, as the zero-copy-send check beside it does",
        where=(SourceRef(OPT_C, "migrate_params_check", (9, 0), None),),
        since=(9, 0, 0), until=None,
        fixed_in=None,  # still read this way in later trees (seen in a 10.1-era options.c)
        replaces=(
            _mapped_ram_reads_current("params.mapped-ram.conflicts-multifd-compression",
                                      "multifd-compression"),
            _mapped_ram_reads_current("params.mapped-ram.conflicts-tls", "tls-creds"),
        ),
    ),
)
