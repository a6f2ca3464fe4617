"""``mharness doctor --hosts`` against real SSH hosts: the two network
namespaces of testcases/netns_hosts.py, each running Debian's sshd, named in
an inventory written for them, plus hosts that must be refused: one nobody
answers for, one whose key is unknown, one whose key changed."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import netns_hosts
from clihelp import MATRIX_HEAD, mharness, write_matrix
from harness.qemu.build import discover
from harness.cell import BuildSpec
from netns_hosts import TwoHosts

two_hosts = netns_hosts.two_hosts  # the fixture, shared by module scope

#: connect-timeout of the unreachable host; the whole doctor run must end well
#: within a few of these (hosts are checked at the same time).
DOWN_TIMEOUT = 2

BODY = """\
targets:
  q35: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 128M,
        workload: {kind: dirtier, base: 2M, region: 16M}}
transports: [unix]
capsets:
  precopy: {}
tiers:
  one:
    cells:
      - {target: q35, transport: unix, capset: precopy}
"""


def _entry(env: TwoHosts, name: str, *, addr: str = "", known: Path | None = None,
           timeout: float = 5) -> str:
    h = env.hosts[name]
    return (f"{{ssh: root@{addr or h.addr}, key: {env.client_key}, "
            f"known-hosts: {known or env.known_hosts}, netns: {h.netns}, "
            f"workdir: {h.spec.workdir}, connect-timeout: {timeout}}}")


@pytest.fixture(scope="module")
def inventory(two_hosts: TwoHosts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("doctor")
    empty = d / "empty_known_hosts"
    empty.write_text("")
    wrong = d / "wrong_known_hosts"   # b's key recorded for a's address
    wrong.write_text(f"{two_hosts.hosts['a'].addr} "
                     f"{' '.join(two_hosts.hosts['b'].host_key_pub.split()[:2])}\n")
    hosts = "\n".join([
        "hosts:",
        f"  a: {_entry(two_hosts, 'a')}",
        f"  b: {_entry(two_hosts, 'b')}",
        f"  down: {_entry(two_hosts, 'a', addr='10.216.16.77', timeout=DOWN_TIMEOUT)}",
        f"  stranger: {_entry(two_hosts, 'a', known=empty)}",
        f"  changed: {_entry(two_hosts, 'b', addr=two_hosts.hosts['a'].addr, known=wrong)}",
        ""])
    return write_matrix(d, MATRIX_HEAD + BODY + hosts)


def _doctor(matrix: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    out = mharness("doctor", "--matrix", str(matrix), *args, timeout=120)
    return out, time.monotonic() - t0


def test_good_hosts_report_builds_kvm_memory_and_clock(inventory: Path) -> None:
    local = discover(BuildSpec("system", "/usr/bin/qemu-system-x86_64"))
    out, _ = _doctor(inventory, "--hosts", "a,b", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["usable"] is True
    assert [h["name"] for h in data["hosts"]] == ["a", "b"]
    for h in data["hosts"]:
        assert h["usable"] and not h["error"] and not h["problems"], h
        (build,) = h["builds"]
        assert build["name"] == "system" and build["missing"] is None
        assert build["version"] == local.version_text and build["package"] == local.package
        # /dev/kvm is the machine's own device node in every namespace
        assert h["kvm"] == "usable" or h["kvm"].startswith("/dev/kvm"), h["kvm"]
        assert h["mem_available"] > 64 * 2**20
        clock = h["clock"]
        assert 0 <= clock["uncertainty_s"] < 1.0
        # the same kernel clock on both ends: within the measurement's uncertainty
        assert abs(clock["offset_s"]) <= clock["uncertainty_s"] + 0.01, clock
        assert 0 < h["connect_s"] < 5


def test_table_names_each_host(inventory: Path) -> None:
    out, _ = _doctor(inventory, "--hosts", "a")
    assert out.returncode == 0, out.stdout + out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[:4] == ["host", "address", "connect", "builds"]
    assert row.startswith("a ") and "root@10.216.16.1:22" in row and row.endswith("ok")
    assert "system 7." in row and " ms ± " in row
    assert out.stdout.rstrip().endswith("1 of 1 host(s) usable")


def test_unreachable_and_refused_keys_are_clear_errors_in_bounded_time(
        inventory: Path, two_hosts: TwoHosts) -> None:
    out, took = _doctor(inventory, "--hosts", "a,down,stranger,changed")
    assert out.returncode == 1, out.stdout + out.stderr
    # one connect-timeout (hosts are checked at once) plus start-up, on a busy machine
    assert took < DOWN_TIMEOUT + 15, f"doctor took {took:.1f} s"
    text = out.stdout
    rows = {line.split()[0]: line for line in text.splitlines()[1:5]}
    assert rows["a"].endswith("ok")
    for name in ("down", "stranger", "changed"):
        assert rows[name].endswith("UNUSABLE"), rows[name]
    assert f"down: UNUSABLE: host 'down': cannot reach root@10.216.16.77:22 within " \
           f"{DOWN_TIMEOUT} s" in text
    assert ("stranger: UNUSABLE: host 'stranger': host key of root@10.216.16.1:22 is unknown: "
            f"not in {inventory.parent / 'empty_known_hosts'}; refused") in text
    assert "changed: UNUSABLE: host 'changed': host key of root@10.216.16.1:22 CHANGED" in text
    assert str(inventory.parent / "wrong_known_hosts") in text
    assert "1 of 4 host(s) usable" in text
    # refused connections are closed cleanly: no paramiko noise, no traceback
    assert out.stderr.strip() == "", out.stderr
    # the refused key was not accepted on the way
    assert (inventory.parent / "empty_known_hosts").read_text() == ""

    out, _ = _doctor(inventory, "--hosts", "down,stranger", "--json")
    assert out.returncode == 1
    kinds = {h["name"]: h["error_kind"] for h in json.loads(out.stdout)["hosts"]}
    assert kinds == {"down": "unreachable", "stranger": "host-key"}


def test_required_build_missing_on_a_host_makes_it_unusable(inventory: Path,
                                                           tmp_path: Path) -> None:
    missing = str(tmp_path / "no such qemu; touch pwned")
    out, _ = _doctor(inventory, "--hosts", "b", "--qemu", missing)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"b: UNUSABLE: build '{missing}' (required) binary not found: {missing}" in out.stdout
    # one argv item: nothing ran in the remote shell (its cwd is root's home) or here
    assert not (Path.home() / "pwned").exists() and not (Path.cwd() / "pwned").exists()


def test_unknown_host_name_is_bad_input(inventory: Path) -> None:
    out, _ = _doctor(inventory, "--hosts", "a,nope")
    assert out.returncode == 2
    assert "unknown host(s) nope (inventory: local, a, b, down, stranger, changed)" in out.stderr


def test_this_machine_through_the_same_checks(tmp_path: Path) -> None:
    """``local`` goes through the same Host calls (no SSH): builds, KVM, memory,
    its own clock; an optional build missing is a warning, a required one a problem."""
    from harness.hosts.doctor import check_hosts, format_table
    from harness.hosts.inventory import HostSpec

    builds = [BuildSpec("system", "/usr/bin/qemu-system-x86_64", required=True),
              BuildSpec("extra", str(tmp_path / "qemu-extra")),
              BuildSpec("needed", str(tmp_path / "qemu-needed"), required=True)]
    (report,) = check_hosts([HostSpec("local")], builds, min_memory=2**60)
    assert not report.error and report.clock is not None and report.clock.offset == 0.0
    system, extra, needed = report.builds
    assert system.version and system.missing is None
    assert extra.missing == needed.missing.replace("needed", "extra") == \
        f"binary not found: {tmp_path / 'qemu-extra'}"
    assert report.problems == [f"build 'needed' (required) binary not found: {needed.binary}"]
    assert any("build 'extra' binary not found" in w for w in report.warnings)
    assert any(w.startswith("MemAvailable ") for w in report.warnings)
    assert not report.usable
    text = format_table([report])
    assert "system " + system.version in text and "needed MISSING" in text
    assert text.endswith("0 of 1 host(s) usable")
