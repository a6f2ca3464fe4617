"""The harness's Avocado settings: which tier of a matrix a reference means.

Avocado plugins keep their knobs in Avocado's settings (config files,
``avocado config``), registered by an ``avocado.plugins.init`` plugin, and
offer them on the command line through an ``avocado.plugins.cli`` plugin.
The harness's are the options ``mharness list``/``mharness run`` take that
decide *which* cells a matrix gives:

=========================  ====================  ===========================
setting                    command line          ``mharness`` equivalent
=========================  ====================  ===========================
``mharness.tier``          ``--mharness-tier``   ``--tier`` (default smoke)
``mharness.seed``          ``--mharness-seed``   ``--seed`` (default 0)
``mharness.qemu``          ``--mharness-qemu``   ``--qemu PATH``
=========================  ====================  ===========================

and one of Avocado's own: ``mharness.cells_from_variants``
(``--mharness-cells-from-variants``) makes a matrix reference one test whose
cells come from Avocado's varianters (CIT, yaml_to_mux, ``-p``) instead of a
tier (harness.avocado.cells.cell_from_variant).

Being settings, they are saved with the job, so ``avocado replay`` plans the
same tier again.  In a config file: ``[mharness]`` then ``tier = nightly``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from avocado.core.plugin_interfaces import CLI, Init
from avocado.core.settings import settings

from harness.avocado.cells import DEFAULT_SEED, DEFAULT_TIER

log = logging.getLogger(__name__)

SECTION = "mharness"
TIER = f"{SECTION}.tier"
SEED = f"{SECTION}.seed"
QEMU = f"{SECTION}.qemu"
FROM_VARIANTS = f"{SECTION}.cells_from_variants"

#: Avocado subcommands that resolve references (``replay`` reuses the saved job's).
COMMANDS = ("run", "list")


class MatrixOptionsInit(Init):
    """Registers the settings, whatever the subcommand (the Job API too)."""

    name = "mharness"
    description = "qemu-migration-harness (mharness) matrix settings"

    def initialize(self) -> None:
        settings.register_option(
            section=SECTION, key="tier", default=DEFAULT_TIER,
            help_msg="Tier of a harness matrix whose cells a matrix.yaml reference means "
                     f"(mharness --tier; default {DEFAULT_TIER})")
        settings.register_option(
            section=SECTION, key="seed", default=DEFAULT_SEED, key_type=int,
            help_msg="Seed of the matrix's covering arrays (mharness --seed; the same seed "
                     "gives the same cells everywhere)")
        settings.register_option(
            section=SECTION, key="qemu", default=None,
            help_msg="Use this QEMU binary as the build for both sides of every cell "
                     "(mharness --qemu; cell ids stay the same)")
        settings.register_option(
            section=SECTION, key="cells_from_variants", default=False, key_type=bool,
            help_msg="A matrix reference is one test run once per Avocado variant (CIT, "
                     "yaml_to_mux, -p), each variant declaring a cell by the matrix's names "
                     "(target, transport, capset, paramset, mode, build, src-build, dst-build, "
                     "timeout, downtime-tolerance-ms), instead of the tier's cells")


class MatrixOptionsCLI(CLI):
    """``--mharness-tier``, ``--mharness-seed``, ``--mharness-qemu`` on
    ``avocado run`` and ``avocado list``."""

    name = "mharness"
    description = "qemu-migration-harness (mharness) options for 'run' and 'list'"

    def configure(self, parser: Any) -> None:
        for command in COMMANDS:
            sub: argparse.ArgumentParser | None = parser.subcommands.choices.get(command)
            if sub is None:
                continue
            group = sub.add_argument_group("qemu-migration-harness matrix (mharness)")
            settings.add_argparser_to_option(namespace=TIER, parser=group,
                                             long_arg="--mharness-tier", metavar="TIER",
                                             allow_multiple=True)
            settings.add_argparser_to_option(namespace=SEED, parser=group,
                                             long_arg="--mharness-seed", metavar="N",
                                             allow_multiple=True)
            settings.add_argparser_to_option(namespace=QEMU, parser=group,
                                             long_arg="--mharness-qemu", metavar="PATH",
                                             allow_multiple=True)
            settings.add_argparser_to_option(namespace=FROM_VARIANTS, parser=group,
                                             long_arg="--mharness-cells-from-variants",
                                             action="store_true", allow_multiple=True)

    def run(self, config: dict[str, Any]) -> None:
        """Nothing to do: the resolver reads the settings."""
