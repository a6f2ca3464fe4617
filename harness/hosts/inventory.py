"""The host inventory: ``hosts:`` in matrix.yaml (or a file it names).

::

    hosts:
      a: {ssh: root@10.0.0.1, port: 22, key: ~/.ssh/id_ed25519,
          known-hosts: ~/.ssh/known_hosts, trust-on-first-use: false}
      b: {ssh: root@10.0.0.2}
      local: {}            # the default: this machine

Plain data, validated here with the file/line/key errors of
:class:`harness.errors.MatrixError`; connecting is harness.hosts.ssh's job.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from harness.errors import MatrixError

log = logging.getLogger(__name__)

LOCAL = "local"

#: Keys a host entry may carry.
KEYS = ("ssh", "port", "key", "known-hosts", "trust-on-first-use", "netns", "workdir",
        "connect-timeout")


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


def parse_hosts(raw: Any, *, file: str = "",
                line_of: Callable[[Any, str | None], int] = lambda _n, _k: 0
                ) -> dict[str, HostSpec]:
    """``hosts:`` as a dict of HostSpec (with ``local`` always present).

    ``line_of(node, key)`` gives the line of a key in a node for errors (the
    matrix loader passes its YAML position lookup)."""
    out: dict[str, HostSpec] = {LOCAL: HostSpec(LOCAL)}
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        raise MatrixError("must be a mapping of host name to settings", file,
                          line_of(raw, None), "hosts")
    for name, entry in raw.items():
        where = f"hosts.{name}"
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise MatrixError("must be a mapping (e.g. {ssh: root@10.0.0.1})", file,
                              line_of(raw, name), where)
        for key in entry:
            if key not in KEYS:
                raise MatrixError(f"unknown key (known: {', '.join(KEYS)})", file,
                                  line_of(entry, key), f"{where}.{key}")

        def bad(key: str, reason: str) -> MatrixError:
            return MatrixError(reason, file, line_of(entry, key), f"{where}.{key}")

        ssh = entry.get("ssh", "")
        if name == LOCAL and ssh:
            raise bad("ssh", "'local' is this machine: give the remote host another name")
        user, addr = "", ""
        if ssh:
            if not isinstance(ssh, str) or "@" not in ssh or ssh.startswith("@") \
                    or ssh.endswith("@") or any(c.isspace() for c in ssh):
                raise bad("ssh", f"expected user@address, got {ssh!r}")
            user, addr = ssh.rsplit("@", 1)
        elif any(k in entry for k in ("port", "key", "known-hosts", "netns")):
            raise bad(next(k for k in entry), "needs 'ssh: user@address'")
        port = entry.get("port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise bad("port", f"expected a TCP port number, got {port!r}")
        tofu = entry.get("trust-on-first-use", False)
        if not isinstance(tofu, bool):
            raise bad("trust-on-first-use", f"expected true or false, got {tofu!r}")
        timeout = entry.get("connect-timeout", 10.0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise bad("connect-timeout", f"expected seconds > 0, got {timeout!r}")
        strings = {}
        for key in ("key", "known-hosts", "netns", "workdir"):
            value = entry.get(key, "")
            if not isinstance(value, str):
                raise bad(key, f"expected a string, got {value!r}")
            strings[key] = os.path.expanduser(value) if key in ("key", "known-hosts") else value
        if strings["workdir"] and not strings["workdir"].startswith("/"):
            raise bad("workdir", "must be an absolute path on the host")
        out[str(name)] = HostSpec(
            name=str(name), user=user, addr=addr, port=port, key=strings["key"],
            known_hosts=strings["known-hosts"], trust_on_first_use=tofu,
            netns=strings["netns"], workdir=strings["workdir"] or HostSpec.workdir,
            connect_timeout=float(timeout))
    return out


def hosts_from_yaml(node: Any, file: str, base_dir: str = "",
                    load: Callable[[str], Any] | None = None) -> dict[str, HostSpec]:
    """``hosts:`` from the matrix loader's positioned YAML (harness.matrix.yamlpos
    nodes, read by shape so this module needs no matrix import): a mapping, or
    a string naming an inventory file (relative to the matrix) holding one,
    read with ``load`` (the loader's ``load_yaml``)."""
    value = getattr(node, "value", None)
    if isinstance(value, str) and not hasattr(node, "entries"):
        path = os.path.join(base_dir, os.path.expanduser(value))
        if not os.path.exists(path):
            raise MatrixError(f"inventory file {path} not found", file, node.line, "hosts")
        if load is None:
            raise MatrixError("an inventory file needs the matrix loader", file, node.line, "hosts")
        inner = load(path)
        inner_hosts = getattr(inner, "entries", {}).get("hosts")
        return hosts_from_yaml(inner_hosts.value if inner_hosts else inner, path, base_dir, load)

    lines: dict[int, dict[str | None, int]] = {}

    def plain(n: Any) -> Any:
        if hasattr(n, "entries"):
            out = {}
            lines[id(out)] = {None: n.line}
            for k, e in n.entries.items():
                out[k] = plain(e.value)
                lines[id(out)][k] = e.key_line
            return out
        if hasattr(n, "items"):
            return [plain(i) for i in n.items]
        return getattr(n, "value", n)

    raw = plain(node)
    return parse_hosts(raw, file=file, line_of=lambda n, k: lines.get(id(n), {}).get(
        k, lines.get(id(n), {}).get(None, getattr(node, "line", 0))))
