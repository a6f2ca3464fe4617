"""Settings of the Linux workload (``workload: {kind: linux, ...}`` in matrix.yaml).

The common workload keys keep their meaning: ``region`` is the memory the
agent dirties and verifies (its buffer), ``warmup-passes`` the passes over it
the source must have made before migrating (``base`` does not apply: the
guest kernel places the buffer).  The keys below are the Linux workload's
own; a cell's values travel in :attr:`harness.cell.WorkloadSpec.options` and
become kernel parameters the agent reads (images/linux/agent/main.c).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.cell import WorkloadSpec

__all__ = ["KIND", "KEYS", "LinuxOptions"]

KIND = "linux"

#: key -> (type, default, allowed values or None); types: int, size, bool, choice.
KEYS: dict[str, tuple[str, Any, tuple[Any, ...] | None]] = {
    # MiB/s the agent dirties (rewrites, after verifying); 0 = as fast as it can.
    "dirty-rate": ("int", 64, None),
    # Heartbeat period (ms); the issue asks for 10 ms or finer.
    "heartbeat-ms": ("int", 10, None),
    # Bytes of the virtio-blk disk the agent writes (0: no disk).
    "disk": ("size", 8 << 20, None),
    # Disk writes per second, each followed by fdatasync.
    "disk-rate": ("int", 50, None),
    # The TCP stream over virtio-net to the harness's peer.
    "net": ("bool", True, None),
    # Network records (64 bytes) per second.
    "net-rate": ("int", 200, None),
    # Reboot the guest on the destination after the migration (the reboot check).
    "reboot": ("bool", True, None),
    # How the kernel starts: pvh (the ELF through QEMU's pvh.bin) or bzimage.
    "boot": ("choice", "pvh", ("pvh", "bzimage")),
    # Where the agent reports: a virtio-serial port, or the serial console.
    "port": ("choice", "virtio", ("virtio", "console")),
}


@dataclass(frozen=True)
class LinuxOptions:
    """A Linux cell's settings with defaults filled in."""

    memory: int
    warmup_passes: int
    dirty_rate: int
    heartbeat_ms: int
    disk: int
    disk_rate: int
    net: bool
    net_rate: int
    reboot: bool
    boot: str
    port: str

    @classmethod
    def of(cls, spec: WorkloadSpec) -> "LinuxOptions":
        given = dict(spec.options)
        values = {k.replace("-", "_"): given.get(k, default) for k, (_, default, _c) in
                  KEYS.items()}
        return cls(memory=spec.region_size, warmup_passes=spec.warmup_passes, **values)

    def kernel_args(self, net_target: str | None) -> list[str]:
        """The agent's kernel parameters."""
        args = [f"mh.mem={self.memory}", f"mh.rate={self.dirty_rate}",
                f"mh.hb={self.heartbeat_ms}", f"mh.disk={self.disk}",
                f"mh.diskrate={self.disk_rate}", f"mh.netrate={self.net_rate}"]
        if self.net and net_target:
            args.append(f"mh.net={net_target}")
        if self.port == "console":
            args.append("mh.port=console")
        return args
