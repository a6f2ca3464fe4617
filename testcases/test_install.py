"""The harness works installed as a package, not only from its checkout.

What a CI team does: build the distributions (``python3 -m build``: the sdist,
then the wheel from the sdist, so both must carry every file), install the
wheel into a fresh virtual environment outside the checkout, and run
``mharness`` from an empty directory: ``--version``, ``images``, one smoke
cell of the packaged matrix, ``init`` and ``doctor``.  A runtime file missing
from the wheel (a recipe, the default matrix) fails here, as does any code
that finds its files relative to the checkout.

The wheel and the virtual environment are made once per session (shared by
pytest-xdist workers through a lock); the dependencies come from PyPI like a
user's, so pip's cache makes later sessions quick.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.guest import images

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    cache: Path  # private MHARNESS_CACHE_DIR: images are built from the packaged recipes

    def site_packages(self) -> Path:
        (path,) = self.venv.glob("lib/python3*/site-packages")
        return path

    def mharness(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the installed ``mharness`` with nothing of the checkout in reach."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MHARNESS_IMAGES_DIR")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["MHARNESS_CACHE_DIR"] = str(self.cache)
        return subprocess.run([str(self.venv / "bin" / "mharness"), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)


def _run(argv: list[str], timeout: float) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _install(base: Path) -> Installed:
    dist, venv = base / "dist", base / "venv"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], timeout=600)
    (wheel,) = dist.glob("*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
          "--disable-pip-version-check", str(wheel)], timeout=900)
    return Installed(wheel=wheel, venv=venv, cache=base / "cache")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel installed in a fresh venv; built once even under pytest -n N
    (xdist workers' temp folders share a parent)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    base = base / "installed-wheel"
    base.mkdir(exist_ok=True)
    done = base / "done"
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _install(base)
            done.touch()
    (wheel,) = (base / "dist").glob("*.whl")
    return Installed(wheel=wheel, venv=base / "venv", cache=base / "cache")


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def test_wheel_carries_every_runtime_file(installed: Installed) -> None:
    """Every file of images/ and the matrix, byte for byte: a recipe added to
    images/ later ships without anyone touching the packaging."""
    wanted = {f"harness/data/images/{p.relative_to(ROOT / 'images').as_posix()}": p
              for p in (ROOT / "images").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    wanted["harness/data/matrix.yaml"] = ROOT / "matrix.yaml"
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        missing = sorted(set(wanted) - names)
        assert not missing, f"the wheel lacks {missing}"
        for name, src in wanted.items():
            assert whl.read(name) == src.read_bytes(), f"{name} differs from {src}"


def test_version_names_the_installed_package(installed: Installed, empty_dir: Path) -> None:
    out = installed.mharness("--version", cwd=empty_dir)
    assert out.returncode == 0, out.stderr
    first, *builds = out.stdout.splitlines()
    version = installed.wheel.name.split("-")[1]
    assert first.startswith(f"mharness {version} ")
    assert str(installed.site_packages() / "harness") in first, "not the installed copy"
    assert builds[0] == "QEMU builds named in the packaged matrix:"
    assert any(line.split()[0] == "system" and "/usr/bin/qemu-system-x86_64" in line
               for line in builds[1:]), out.stdout


def test_images_from_any_directory(installed: Installed, empty_dir: Path) -> None:
    for name in sorted(images.RECIPES):
        out = installed.mharness("images", name, cwd=empty_dir)
        assert out.returncode == 0, out.stderr
        path = Path(out.stdout.strip())
        assert path.is_file() and path.parent == installed.cache / "images"
        # Same recipe bytes as this checkout -> same cache key (the key does not
        # depend on where the recipes were read from).
        assert path.name == f"{name}-{images.recipe_key(name)}.img"


def test_smoke_cell_with_the_packaged_matrix(installed: Installed, empty_dir: Path) -> None:
    listing = installed.mharness("list", "--tier", "smoke", "--json", cwd=empty_dir)
    assert listing.returncode == 0, listing.stderr
    ids = [c["id"] for c in json.loads(listing.stdout)["cells"]]
    # One TCG unix cell whose id is no part of another id (-k matches substrings).
    cell = next(c["id"] for c in json.loads(listing.stdout)["cells"]
                if c["target"]["accel"] == "tcg" and c["transport"] == "unix"
                and not any(c["id"] in other for other in ids if other != c["id"]))
    out = installed.mharness("run", "--tier", "smoke", "-k", cell, "--results", "r",
                             cwd=empty_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.splitlines()[0].startswith("using the packaged matrix "), out.stderr
    data = json.loads((empty_dir / "r" / "results.json").read_text())
    assert [(c["id"], c["verdict"]) for c in data["cells"]] == [(cell, "passed")]
    assert sorted(p.name for p in empty_dir.iterdir()) == ["r"], "wrote outside --results"


def test_init_then_doctor(installed: Installed, empty_dir: Path) -> None:
    out = installed.mharness("init", cwd=empty_dir)
    assert out.returncode == 0, out.stderr
    assert (empty_dir / "matrix.yaml").read_bytes() == (ROOT / "matrix.yaml").read_bytes()
    assert installed.mharness("init", cwd=empty_dir).returncode == 2  # no silent overwrite
    doctor = installed.mharness("doctor", cwd=empty_dir)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "packaged" not in doctor.stderr  # ./matrix.yaml now
    assert "build 'system': /usr/bin/qemu-system-x86_64" in doctor.stdout
