"""Host inventory parsing (harness.matrix.hosts), cell placement and the local host
(no SSH here: testcases/test_remote.py)."""
from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from harness.errors import MatrixError
from harness.hosts import LOCAL
from harness.hosts.local import LocalHost
from harness.hosts.remote_scripts import WATCHDOG
from harness.matrix.hosts import parse_hosts
from harness.matrix.schema import Where
from harness.matrix.yamlpos import YMap, parse_yaml


def _parse(text: str) -> dict:
    """``hosts:`` from YAML text through the matrix schema (harness.matrix.hosts)."""
    node = parse_yaml(text, "m.yaml")
    assert isinstance(node, YMap)
    return parse_hosts(node.entries["hosts"].value, Where("m.yaml", "hosts"))


def test_inventory_defaults_and_fields() -> None:
    hosts = _parse("hosts:\n  a: {ssh: root@10.0.0.1, port: 2222, key: ~/k, known-hosts: /kh,"
                   " trust-on-first-use: true}\n  b: {ssh: me@h.example}\n")
    assert set(hosts) == {"a", "b", LOCAL}
    assert hosts[LOCAL].is_local
    a = hosts["a"]
    assert (a.user, a.addr, a.port, a.known_hosts, a.trust_on_first_use) == \
        ("root", "10.0.0.1", 2222, "/kh", True)
    assert a.key.endswith("/k") and not a.key.startswith("~")
    assert hosts["b"].port == 22 and not hosts["b"].trust_on_first_use


@pytest.mark.parametrize("entry, key, reason", [
    ("a: {ssh: 10.0.0.1}", "hosts.a.ssh", "user@address"),
    ("a: {ssh: root@x, port: '22'}", "hosts.a.port", "integer"),
    ("a: {ssh: root@x, port: 70000}", "hosts.a.port", "at most 65535"),
    ("a: {ssh: root@x, colour: 1}", "hosts.a.colour", "unknown key"),
    ("a: {ssh: root@x, trust-on-first-use: 'yes'}", "hosts.a.trust-on-first-use",
     "true or false"),
    ("a: {port: 22}", "hosts.a.port", "needs 'ssh"),
    ("local: {ssh: root@x}", "hosts.local.ssh", "another name"),
    ("a: {ssh: root@x, workdir: rel}", "hosts.a.workdir", "absolute"),
    ("a b: {ssh: root@x}", "hosts.a b", "invalid host name"),
])
def test_inventory_errors_name_file_line_key(entry: str, key: str, reason: str) -> None:
    with pytest.raises(MatrixError) as err:
        _parse(f"# one\nhosts:\n  {entry}\n")
    assert err.value.key == key and err.value.line == 3 and err.value.file == "m.yaml"
    assert reason in err.value.reason


def test_inventory_not_a_mapping() -> None:
    with pytest.raises(MatrixError) as err:
        _parse("hosts:\n  - a\n")
    assert err.value.key == "hosts" and "mapping" in err.value.reason


def test_local_host_basics(tmp_path: Path) -> None:
    h = LocalHost(root=tmp_path)
    f = tmp_path / "f"
    f.write_bytes(b"x" * (3 * 1024 * 1024))
    assert len(h.chunk_hashes(str(f))) == 2
    assert h.read_range(str(f), 5, 3) == b"xxx"
    assert h.run(["echo", "$(id)"]).stdout == b"$(id)\n"
    assert h.clock().offset == 0.0
    assert Path(h.workdir("cell")).is_dir()


def test_remote_command_is_quoted_argv() -> None:
    """What SshHost sends: shlex.join of argv; a shell splits it back unchanged."""
    argv = ["python3", "-c", WATCHDOG, '{"argv": ["/q; rm -rf /", "$(x)"]}']
    assert shlex.split(shlex.join(argv)) == argv


def test_matrix_hosts_inline_and_file(tmp_path: Path) -> None:
    from harness.matrix import load_matrix
    root = Path(__file__).resolve().parent.parent
    text = (root / "matrix.yaml").read_text()
    m = tmp_path / "matrix.yaml"
    m.write_text(text + "\nhosts:\n  a: {ssh: root@10.0.0.1, port: 2222}\n  local: {}\n")
    hosts = load_matrix(m).hosts
    assert hosts["a"].port == 2222 and hosts["local"].is_local
    (tmp_path / "inventory.yaml").write_text("hosts:\n  b:\n    ssh: me@b\n    port: 0\n")
    m.write_text(text + "\nhosts: inventory.yaml\n")
    with pytest.raises(MatrixError) as err:
        load_matrix(m)
    assert err.value.key == "hosts.b.port" and err.value.line == 4
    assert err.value.file.endswith("inventory.yaml")
    assert load_matrix(root / "matrix.yaml").hosts.keys() == {"local"}


PLACED = """version: 1
hosts:
  a: {ssh: root@10.0.0.1}
  b: {ssh: root@10.0.0.2}
builds:
  system: {binary: "/usr/bin/qemu-system-{arch}"}
targets:
  t: {arch: x86_64, machine: q35, build: system}
  t-ab: {arch: x86_64, machine: q35, build: system, src-host: a, dst-host: b}
transports: [tcp, unix]
tiers:
  x:
    cells:
      - {target: t, transport: tcp}
      - {target: t, transport: tcp, src-host: b, dst-host: a}
      - {target: t, transport: tcp, src-host: a, dst-host: a}
      - {target: t-ab, transport: tcp}
      - {target: t-ab, transport: unix, dst-host: local}
    product: {target: [t], transport: [unix], src-host: a}
"""


def _load(tmp_path: Path, text: str) -> object:
    from harness.matrix import load_matrix
    (tmp_path / "m.yaml").write_text(text)
    return load_matrix(tmp_path / "m.yaml")


def test_cells_placed_by_target_and_cell(tmp_path: Path) -> None:
    m = _load(tmp_path, PLACED)
    cells = {c.id: c for c in m.expanded["x"]}  # type: ignore[attr-defined]
    assert set(cells) == {"t-tcp-default", "t-tcp-default-on-b-to-a", "t-tcp-default-on-a",
                          "t-ab-tcp-default-on-a-to-b", "t-ab-unix-default-on-a-to-local",
                          "t-unix-default-on-a-to-local"}
    local = cells["t-tcp-default"]
    assert local.src_host is None and local.dst_host is None and not local.placed
    assert "src_host" not in local.inputs() and "src_host" not in local.fingerprint()
    ba = cells["t-tcp-default-on-b-to-a"]
    assert (ba.src_host.name, ba.dst_host.name) == ("b", "a")  # type: ignore[union-attr]
    assert ba.inputs()["src_host"] == "b" and ba.seed != local.seed
    assert cells["t-ab-unix-default-on-a-to-local"].dst_host is None


@pytest.mark.parametrize("where, key", [
    ("t: {arch: x86_64, machine: q35, build: system, src-host: c}", "targets.t.src-host"),
    ("t: {arch: x86_64, machine: q35, build: system, dst-host: 7}", "targets.t.dst-host"),
])
def test_unknown_host_on_target(tmp_path: Path, where: str, key: str) -> None:
    text = PLACED.replace("t: {arch: x86_64, machine: q35, build: system}", where)
    with pytest.raises(MatrixError) as err:
        _load(tmp_path, text)
    assert err.value.key == key and err.value.line == 8
    assert "unknown host" in err.value.reason or "invalid host" in err.value.reason


def test_unknown_host_on_cell(tmp_path: Path) -> None:
    text = PLACED.replace("src-host: b, dst-host: a}", "src-host: b, dst-host: z}")
    with pytest.raises(MatrixError) as err:
        _load(tmp_path, text)
    assert err.value.key == "tiers.x.cells[1].dst-host" and err.value.line == 15
    assert err.value.reason == "unknown host 'z' (defined: local, a, b)"


def test_round_robin_over_ordered_pairs(tmp_path: Path) -> None:
    from harness.matrix.hosts import round_robin
    m = _load(tmp_path, PLACED)
    local = [c for c in m.expanded["x"] if not c.placed]  # type: ignore[attr-defined]
    placed = round_robin(local * 3, [m.hosts["a"], m.hosts["b"]])  # type: ignore[attr-defined]
    assert [c.id for c in placed] == ["t-tcp-default-on-a-to-b", "t-tcp-default-on-b-to-a",
                                      "t-tcp-default-on-a-to-b"]
    one = round_robin(local, [m.hosts["b"]])  # type: ignore[attr-defined]
    assert one[0].id == "t-tcp-default-on-b"
    already = [c for c in m.expanded["x"] if c.placed]  # type: ignore[attr-defined]
    assert round_robin(already, [m.hosts["a"]]) == already  # type: ignore[attr-defined]


def test_placed_cells_the_flow_cannot_run_are_refused(tmp_path: Path) -> None:
    from harness.migration.placed import placement_problem
    m = _load(tmp_path, PLACED)
    cells = {c.id: c for c in m.expanded["x"]}  # type: ignore[attr-defined]
    assert placement_problem(cells["t-tcp-default"]) is None
    assert placement_problem(cells["t-tcp-default-on-b-to-a"]) is None
    assert "tcp" in (placement_problem(cells["t-unix-default-on-a-to-local"]) or "")
    local_dst = replace(cells["t-tcp-default-on-b-to-a"], dst_host=None)
    assert "destination on this machine" in (placement_problem(local_dst) or "")
    shared = replace(cells["t-tcp-default-on-b-to-a"], capabilities=(("x-ignore-shared", True),))
    assert "x-ignore-shared" in (placement_problem(shared) or "")
