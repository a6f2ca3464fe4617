"""Where a QEMU runs: this machine (harness.hosts.local.LocalHost) or one
reached over SSH (harness.hosts.ssh.SshHost), named in the matrix's host
inventory (harness.hosts.inventory; its schema: harness.matrix.hosts).  Kept free of QEMU and SSH imports so
loading a matrix imports neither."""
from __future__ import annotations

from harness.hosts.base import Host, HostError, HostKeyError, HostProcess, RunResult
from harness.hosts.inventory import LOCAL, HostSpec

__all__ = ["Host", "HostError", "HostKeyError", "HostProcess", "RunResult", "LOCAL",
           "HostSpec", "host_for"]


def host_for(spec: HostSpec) -> Host:
    """The Host object for an inventory entry (SSH connections shared per spec)."""
    if spec.is_local:
        from harness.hosts.local import LocalHost
        return LocalHost(spec.name)
    from harness.hosts.ssh import connect  # paramiko only when a remote host is used
    return connect(spec)
