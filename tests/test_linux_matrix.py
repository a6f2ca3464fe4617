"""``workload: {kind: linux, ...}`` in matrix.yaml: the Linux workload's own
keys, their errors, and cells of other kinds unchanged (ids and seeds)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NoReturn

import pytest

from harness.cell import BuildSpec
from harness.errors import MatrixError
from harness.guest.kinds import workload_for
from harness.guest.linux import LinuxWorkload
from harness.guest.linux_options import LinuxOptions
from harness.matrix import load_matrix, tier_cells

REPO = Path(__file__).resolve().parent.parent

MATRIX = """\
version: 1
builds:
  sys: {binary: "/usr/bin/qemu-system-{arch}", required: true}
targets:
  lx: {arch: x86_64, machine: q35, build: sys, memory: 256M,
       workload: {kind: linux, region: 16M, warmup-passes: 1, WORKLOAD}}
  dirt: {arch: x86_64, machine: q35, build: sys, memory: 256M, workload: {region: 100M}}
transports: [unix]
capsets:
  precopy: {}
tiers:
  t:
    cells:
      - {target: lx, transport: unix, capset: precopy}
      - {target: dirt, transport: unix, capset: precopy}
"""


def no_binary(spec: BuildSpec) -> NoReturn:
    raise AssertionError(f"planning asked {spec.binary} for its version")


def _load(tmp_path: Path, workload: str):
    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(MATRIX.replace("WORKLOAD", workload)))
    return tier_cells(load_matrix(path), "t", resolve=no_binary)


def test_linux_keys_become_options(tmp_path: Path) -> None:
    lx, dirt = _load(tmp_path, "dirty-rate: 16, disk: 4M, net: false, boot: bzimage")
    assert lx.target.workload.options == (("boot", "bzimage"), ("dirty-rate", 16),
                                           ("disk", 4 << 20), ("net", False))
    opts = LinuxOptions.of(lx.target.workload)
    assert (opts.memory, opts.dirty_rate, opts.disk, opts.net, opts.boot, opts.reboot) == \
        (16 << 20, 16, 4 << 20, False, "bzimage", True)
    assert isinstance(workload_for(lx, tmp_path), LinuxWorkload)
    # Another kind's cell carries no options, and its seed input is unchanged.
    assert dirt.target.workload.options == ()
    assert "options" not in dirt.fingerprint()


@pytest.mark.parametrize("workload,reason", [
    ("boot: grub", "'grub' is not one of pvh, bzimage"),
    ("net: maybe", "expected"),
    ("dirty-rat: 5", "unknown key"),
])
def test_linux_key_errors(tmp_path: Path, workload: str, reason: str) -> None:
    with pytest.raises(MatrixError, match=reason):
        _load(tmp_path, workload)


def test_linux_keys_only_for_linux(tmp_path: Path) -> None:
    text = MATRIX.replace("workload: {region: 100M}", "workload: {region: 100M, reboot: true}")
    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(text.replace(", WORKLOAD", "")))
    with pytest.raises(MatrixError, match="targets.dirt.workload.reboot'?: unknown key"):
        load_matrix(path)


def test_the_project_matrix_has_the_linux_tiers() -> None:
    matrix = load_matrix(REPO / "matrix.yaml")
    short = tier_cells(matrix, "linux-short", resolve=no_binary)
    assert {c.src_build.name for c in short} == {"system", "debian-10.0"}
    assert all(c.target.workload.kind == "linux" for c in short)
    # The known issue of a 7.2 source, on the 7.2 cell only.
    issues = {c.src_build.name: {ki.id for ki in c.known_issues} for c in short}
    assert issues == {"system": {"tcg-dirty-sync-lost-updates"}, "debian-10.0": set()}
