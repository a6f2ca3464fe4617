"""Where a QEMU runs: this machine (:class:`LocalHost`) or one reached over
SSH (:class:`SshHost`), named in the matrix's host inventory."""
from __future__ import annotations

from harness.hosts.base import Host, HostError, HostKeyError, HostProcess, RunResult
from harness.hosts.inventory import LOCAL, HostSpec, parse_hosts
from harness.hosts.local import LocalHost

__all__ = ["Host", "HostError", "HostKeyError", "HostProcess", "RunResult", "LOCAL",
           "HostSpec", "parse_hosts", "LocalHost", "host_for"]


def host_for(spec: HostSpec) -> Host:
    """The Host object for an inventory entry (SSH connections shared per spec)."""
    if spec.is_local:
        return LocalHost(spec.name)
    from harness.hosts.ssh import connect  # paramiko only when a remote host is used
    return connect(spec)
