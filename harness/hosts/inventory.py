"""The host inventory: ``hosts:`` in matrix.yaml (or a file it names).

::

    hosts:
      a: {ssh: root@10.0.0.1, port: 22, key: ~/.ssh/id_ed25519,
          known-hosts: ~/.ssh/known_hosts, trust-on-first-use: false}
      b: {ssh: root@10.0.0.2}
      local: {}            # the default: this machine

Plain data only: the schema (file/line/key errors like every matrix key)
is harness.matrix.hosts; connecting is harness.hosts.ssh's job.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOCAL = "local"


@dataclass(frozen=True)
class HostSpec:
    """One host of the inventory.  ``ssh`` empty: this machine."""

    name: str
    user: str = ""
    addr: str = ""
    port: int = 22
    key: str = ""
    known_hosts: str = ""
    trust_on_first_use: bool = False
    #: Connect from inside this network namespace (test hosts, lab namespaces).
    netns: str = ""
    #: Where the harness keeps its files on the host (runs, image cache, owner files).
    workdir: str = "/var/tmp/mharness"
    connect_timeout: float = 10.0

    @property
    def is_local(self) -> bool:
        return not self.addr
