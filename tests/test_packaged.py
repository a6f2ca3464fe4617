"""Package data and the commands around it: which matrix a command uses,
``mharness init`` and ``mharness --version`` (no QEMU needed: the builds here
are missing binaries)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import about, cli, packaged
from harness.cli import main

REPO = Path(__file__).resolve().parent.parent

MATRIX = """\
version: 1
builds:
  gone: {binary: /nonexistent/qemu-system-x86_64}
targets:
  t: {arch: x86_64, machine: q35, accel: tcg, build: gone, memory: 128M,
      workload: {kind: dirtier, base: 2M, region: 16M}}
transports: [unix]
capsets:
  plain: {}
tiers:
  smoke:
    cells: [{target: t, transport: unix, capset: plain}]
"""


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory; main() leaves pytest's signal handlers alone."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda: None)
    return tmp_path


def test_packaged_matrix_is_the_repository_one() -> None:
    """One matrix.yaml in the repository; the package carries its bytes (under
    tox, from the installed sdist)."""
    assert packaged.default_matrix().read_bytes() == (REPO / "matrix.yaml").read_bytes()


def test_find_matrix_order(empty_cwd: Path) -> None:
    path, default = packaged.find_matrix(None)
    assert default and path.read_bytes() == (REPO / "matrix.yaml").read_bytes()
    (empty_cwd / "matrix.yaml").write_text(MATRIX)
    assert packaged.find_matrix(None) == (Path("matrix.yaml"), False)
    assert packaged.find_matrix("other.yaml") == (Path("other.yaml"), False)


def test_list_says_it_uses_the_packaged_matrix_first(empty_cwd: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--tier", "smoke", "-k", "unix"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("using the packaged matrix ")
    assert "mharness init" in err.splitlines()[0]


def test_local_matrix_is_used_without_a_word(empty_cwd: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (empty_cwd / "matrix.yaml").write_text(MATRIX)
    assert main(["list"]) == 0
    out = capsys.readouterr()
    assert "packaged" not in out.err
    assert out.out.startswith("t-unix-plain ")


def test_init_writes_a_copy_and_refuses_to_overwrite(empty_cwd: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dest = empty_cwd / "matrix.yaml"
    assert main(["init"]) == 0
    assert dest.read_bytes() == (REPO / "matrix.yaml").read_bytes()
    assert dest.stat().st_mode & 0o444 == 0o444  # readable like any file the user made
    dest.write_text(MATRIX)
    assert main(["init"]) == 2
    assert "exists" in capsys.readouterr().err
    assert dest.read_text() == MATRIX
    assert main(["init", "--force"]) == 0
    assert dest.read_bytes() == (REPO / "matrix.yaml").read_bytes()


def test_version_names_package_and_builds(empty_cwd: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (empty_cwd / "matrix.yaml").write_text(MATRIX)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"mharness {about.package_version()} ")
    assert lines[1] == "QEMU builds named in matrix.yaml:"
    assert lines[2].split()[:3] == ["gone", "not", "found:"]
    assert "/nonexistent/qemu-system-x86_64" in lines[2]


def test_version_survives_a_broken_matrix(empty_cwd: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (empty_cwd / "matrix.yaml").write_text("version: 1\nbuilds: [\n")
    with pytest.raises(SystemExit):
        main(["--version"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mharness ")
    assert lines[1].startswith("QEMU builds: cannot read matrix.yaml")
