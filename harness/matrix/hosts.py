"""The host inventory's schema: ``hosts:`` in matrix.yaml (or a file it names).

::

    hosts:
      a: {ssh: root@10.0.0.1, port: 22, key: ~/.ssh/id_ed25519,
          known-hosts: ~/.ssh/known_hosts, trust-on-first-use: false}
      b: {ssh: root@10.0.0.2}
      local: {}            # the default: this machine

Validated with the matrix's own converters (harness.matrix.schema), so a
mistake here reads like any other matrix error (file, line, dotted key).  The
result is plain data (:class:`harness.hosts.inventory.HostSpec`); connecting
is harness.hosts.ssh's job.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Callable, Sequence

from harness.cell import Cell
from harness.hosts.inventory import LOCAL, HostSpec
from harness.matrix import schema as s
from harness.matrix.schema import Where
from harness.matrix.yamlpos import YMap, YNode, YScalar

log = logging.getLogger(__name__)

#: Keys a host entry may carry.
HOST_KEYS = ("ssh", "port", "key", "known-hosts", "trust-on-first-use", "netns", "workdir",
             "connect-timeout")
#: Keys that only mean something for a host reached over SSH.
SSH_ONLY = ("port", "key", "known-hosts", "netns")


def parse_hosts(node: YNode, where: Where, base_dir: str = "",
                load: Callable[[str], YNode | None] | None = None) -> dict[str, HostSpec]:
    """``hosts:`` as a dict of HostSpec, ``local`` always present.  A string
    names an inventory file (relative to the matrix) holding ``hosts:`` or the
    mapping itself, read with ``load`` (yamlpos.load_yaml)."""
    if isinstance(node, YScalar) and isinstance(node.value, str):
        path = os.path.join(base_dir, os.path.expanduser(node.value))
        if not os.path.exists(path):
            raise where.error(f"inventory file {path} not found", node.line)
        if load is None:
            raise where.error("an inventory file needs the matrix loader", node.line)
        inner = load(path)
        inner_where = Where(path, "hosts")
        if inner is None:
            raise inner_where.error("the inventory file is empty", 1)
        if isinstance(inner, YMap) and "hosts" in inner.entries:
            inner = inner.entries["hosts"].value
        return parse_hosts(inner, inner_where)
    out: dict[str, HostSpec] = {LOCAL: HostSpec(LOCAL)}
    if isinstance(node, YScalar) and node.value is None:
        return out
    if not isinstance(node, YMap):
        raise where.error("must be a mapping of host name to settings, or an inventory "
                          "file's name", node.line)
    for name, entry in node.entries.items():
        s.check_name(name, entry.key_line, where.key(name), "host name")
        out[name] = _host(name, entry.value, where.key(name))
    return out


def _host(name: str, node: YNode, where: Where) -> HostSpec:
    if isinstance(node, YScalar) and node.value is None:
        return HostSpec(name)
    if not isinstance(node, YMap):
        raise where.error("must be a mapping (e.g. {ssh: root@10.0.0.1})", node.line)
    e = s.check_keys(node, where, HOST_KEYS)
    spec = HostSpec(name)
    if "ssh" in e:
        ssh = s.as_str(e["ssh"].value, where.key("ssh"))
        line = e["ssh"].value.line
        if name == LOCAL:
            raise where.key("ssh").error("'local' is this machine: give the remote host "
                                         "another name", line)
        user, _, addr = ssh.rpartition("@")
        if not user or not addr or any(c.isspace() for c in ssh):
            raise where.key("ssh").error(f"expected user@address, got {ssh!r}", line)
        spec = HostSpec(name, user=user, addr=addr)
    else:
        for key in SSH_ONLY:
            if key in e:
                raise where.key(key).error("needs 'ssh: user@address'", e[key].key_line)
    if "port" in e:
        spec = _with(spec, port=s.as_int(e["port"].value, where.key("port"), minimum=1,
                                         maximum=65535))
    if "trust-on-first-use" in e:
        spec = _with(spec, trust_on_first_use=s.as_bool(e["trust-on-first-use"].value,
                                                        where.key("trust-on-first-use")))
    if "connect-timeout" in e:
        spec = _with(spec, connect_timeout=s.as_number(e["connect-timeout"].value,
                                                       where.key("connect-timeout"),
                                                       strict=True))
    for key, field in (("key", "key"), ("known-hosts", "known_hosts")):
        if key in e:
            spec = _with(spec, **{field: os.path.expanduser(s.as_str(e[key].value,
                                                                     where.key(key)))})
    if "netns" in e:
        spec = _with(spec, netns=s.as_name(e["netns"].value, where.key("netns"),
                                           "network namespace"))
    if "workdir" in e:
        workdir = s.as_str(e["workdir"].value, where.key("workdir"))
        if not workdir.startswith("/"):
            raise where.key("workdir").error("must be an absolute path on the host",
                                             e["workdir"].value.line)
        spec = _with(spec, workdir=workdir)
    return spec


def _with(spec: HostSpec, **changes: object) -> HostSpec:
    return replace(spec, **changes)  # type: ignore[arg-type]


def as_host(node: YNode, where: Where, hosts: dict[str, HostSpec]) -> str:
    """A ``src-host``/``dst-host`` value: a name from the inventory."""
    return s.as_ref(node, where, "host", list(hosts))


def host_suffix(src: str, dst: str) -> str:
    """The id part of a cell placed on hosts: none when both sides are
    ``local`` (so every local cell keeps its id), ``on-A`` when both run on
    A, ``on-A-to-B`` otherwise."""
    if src == dst == LOCAL:
        return ""
    return f"on-{src}" if src == dst else f"on-{src}-to-{dst}"


def place(cell: Cell, src: HostSpec, dst: HostSpec) -> Cell:
    """``cell`` with its source on ``src`` and destination on ``dst``, its id
    suffixed (:func:`host_suffix`) so it never collides with the same cell
    run here."""
    suffix = host_suffix(src.name, dst.name)
    return replace(cell, id=f"{cell.id}-{suffix}" if suffix else cell.id,
                   src_host=None if src.is_local else src,
                   dst_host=None if dst.is_local else dst)


def round_robin(cells: Sequence[Cell], hosts: Sequence[HostSpec]) -> list[Cell]:
    """``mharness run --hosts a,b``: each cell that does not say where it
    runs gets the next ordered pair of distinct hosts (a->b, b->a, ...; one
    host alone: both sides on it); cells placed by the matrix keep theirs."""
    if not hosts:
        return list(cells)
    pairs = [(a, b) for a in hosts for b in hosts if a != b] or [(hosts[0], hosts[0])]
    out, i = [], 0
    for cell in cells:
        if cell.placed or cell.kind != "migration":
            out.append(cell)
            continue
        out.append(place(cell, *pairs[i % len(pairs)]))
        i += 1
    return out
