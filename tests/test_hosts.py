"""Host inventory parsing and the local host (no SSH here: testcases/test_remote.py)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from harness.errors import MatrixError
from harness.hosts import LOCAL, parse_hosts
from harness.hosts.local import LocalHost
from harness.hosts.remote_scripts import WATCHDOG


def test_inventory_defaults_and_fields() -> None:
    hosts = parse_hosts({"a": {"ssh": "root@10.0.0.1", "port": 2222, "key": "~/k",
                               "known-hosts": "/kh", "trust-on-first-use": True},
                         "b": {"ssh": "me@h.example"}}, file="m.yaml")
    assert set(hosts) == {"a", "b", LOCAL}
    assert hosts[LOCAL].is_local
    a = hosts["a"]
    assert (a.user, a.addr, a.port, a.known_hosts, a.trust_on_first_use) == \
        ("root", "10.0.0.1", 2222, "/kh", True)
    assert a.key.endswith("/k") and not a.key.startswith("~")
    assert hosts["b"].port == 22 and not hosts["b"].trust_on_first_use


@pytest.mark.parametrize("raw, key, reason", [
    ({"a": {"ssh": "10.0.0.1"}}, "hosts.a.ssh", "user@address"),
    ({"a": {"ssh": "root@x", "port": "22"}}, "hosts.a.port", "TCP port"),
    ({"a": {"ssh": "root@x", "colour": 1}}, "hosts.a.colour", "unknown key"),
    ({"a": {"ssh": "root@x", "trust-on-first-use": "yes"}}, "hosts.a.trust-on-first-use",
     "true or false"),
    ({"a": {"port": 22}}, "hosts.a.port", "needs 'ssh"),
    ({"local": {"ssh": "root@x"}}, "hosts.local.ssh", "another name"),
    (["a"], "hosts", "mapping"),
])
def test_inventory_errors_name_file_line_key(raw: object, key: str, reason: str) -> None:
    with pytest.raises(MatrixError) as err:
        parse_hosts(raw, file="m.yaml", line_of=lambda _n, _k: 7)
    assert err.value.key == key and err.value.line == 7 and err.value.file == "m.yaml"
    assert reason in err.value.reason


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
