"""Tests for harness.guest.images: building, caching by content hash, tool errors."""
from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import harness
from harness.guest import images
from harness.errors import HarnessError

REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"

needs_binutils = pytest.mark.skipif(
    shutil.which("as") is None or shutil.which("ld") is None,
    reason="binutils (as, ld) not installed")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache and a private copy of images/ that a test may edit."""
    src = tmp_path / "images"
    shutil.copytree(REPO_IMAGES, src)
    monkeypatch.setenv("MHARNESS_IMAGES_DIR", str(src))
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return src


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def test_dirs_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MHARNESS_IMAGES_DIR", raising=False)
    # The default is package data inside the harness package (whether that is
    # the checkout or an installed copy, as under tox), never a path relative
    # to a checkout.
    default = images.images_dir()
    assert isinstance(default, Path)
    assert default == Path(harness.__file__).parent / "data" / "images"
    monkeypatch.setenv("MHARNESS_IMAGES_DIR", str(tmp_path))
    assert images.images_dir() == tmp_path

    monkeypatch.delenv("MHARNESS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert images.cache_dir() == tmp_path / "xdg" / "mharness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.cache_dir() == tmp_path / "home" / ".cache" / "mharness"
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "c"))
    assert images.cache_dir() == tmp_path / "c"


def test_packaged_recipes_are_the_repository_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of images/ is in the package, byte for byte (under tox the
    package is installed from the sdist: this checks what it carries)."""
    monkeypatch.delenv("MHARNESS_IMAGES_DIR", raising=False)
    packaged = Path(images.images_dir()).resolve()
    assert _files(packaged) == _files(REPO_IMAGES)
    for rel in _files(REPO_IMAGES):
        assert (packaged / rel).read_bytes() == (REPO_IMAGES / rel).read_bytes(), rel


@pytest.mark.parametrize("name", sorted(images.RECIPES))
def test_key_does_not_depend_on_where_recipes_are(name: str, env: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Same recipe bytes, same key: a cached image serves a checkout, an
    installed package and an MHARNESS_IMAGES_DIR copy alike."""
    if any(shutil.which(t) is None for t in images.RECIPES[name].tools):
        pytest.skip("binutils not installed")
    copied = images.recipe_key(name)
    monkeypatch.delenv("MHARNESS_IMAGES_DIR")
    assert images.recipe_key(name) == copied


@needs_binutils
def test_build_pads_and_caches(env: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = images.build_image("dirtier-x86")
    assert path.parent == tmp_path / "cache" / "images"
    assert path.name == f"dirtier-x86-{images.recipe_key('dirtier-x86')}.img"
    data = path.read_bytes()
    assert len(data) == 1024 * 1024
    assert data[510:512] == b"\x55\xaa"
    assert data[0x1F0:0x1F4] == b"MHPB"
    assert not any(data[512:])
    # Only the image and no leftover build directories.
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    # Second call must not rebuild: a build function that fails proves it.
    def boom(inputs: list[Path], work: Path) -> bytes:
        raise AssertionError("rebuilt although cached")

    recipe = images.RECIPES["dirtier-x86"]
    monkeypatch.setitem(images.RECIPES, "dirtier-x86", dataclasses.replace(recipe, build=boom))
    mtime = path.stat().st_mtime_ns
    assert images.build_image("dirtier-x86") == path
    assert path.stat().st_mtime_ns == mtime


@needs_binutils
def test_changed_recipe_changes_hash(env: Path) -> None:
    first = images.build_image()
    src = env / "x86" / "dirtier.S"
    src.write_text(src.read_text() + "# a comment changes the hash\n")
    second = images.build_image()
    assert second != first
    assert first.exists() and second.exists()
    # The bytes are the same (a comment), the key is about inputs, not output.
    assert first.read_bytes() == second.read_bytes()


def test_recipe_version_enters_key(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("as") is None:
        pytest.skip("binutils not installed")
    before = images.recipe_key("dirtier-x86")
    recipe = images.RECIPES["dirtier-x86"]
    monkeypatch.setitem(images.RECIPES, "dirtier-x86", dataclasses.replace(recipe, version="x"))
    assert images.recipe_key("dirtier-x86") != before


def test_missing_tool_is_clear(env: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(HarnessError, match=r"install binutils: 'as' not found"):
        images.build_image()


def test_unknown_image(env: Path) -> None:
    with pytest.raises(HarnessError, match="unknown image 'nope'.*dirtier-x86"):
        images.build_image("nope")


@needs_binutils
def test_assembler_error_is_reported(env: Path) -> None:
    src = env / "x86" / "dirtier.S"
    src.write_text(src.read_text() + "\n        notaninstruction %eax\n")
    with pytest.raises(HarnessError, match=r"(?s)build step failed.*notaninstruction"):
        images.build_image()
    # A failed build leaves nothing behind in the cache.
    cache = Path(images.cache_dir()) / "images"
    assert not any(cache.iterdir())


def _build_in_child(args: tuple[str, str]) -> str:
    import os
    os.environ["MHARNESS_IMAGES_DIR"], os.environ["MHARNESS_CACHE_DIR"] = args
    from harness.guest import images as child_images
    return str(child_images.build_image())


@needs_binutils
def test_concurrent_builds(env: Path, tmp_path: Path) -> None:
    args = (str(env), str(tmp_path / "cache"))
    with ProcessPoolExecutor(4) as pool:
        paths = set(pool.map(_build_in_child, [args] * 8))
    assert len(paths) == 1
    (path,) = paths
    data = Path(path).read_bytes()
    assert len(data) == 1024 * 1024 and data[510:512] == b"\x55\xaa"
    assert [p.name for p in Path(path).parent.iterdir()] == [Path(path).name]


def test_missing_recipe_input_names_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MHARNESS_IMAGES_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(HarnessError, match="MHARNESS_IMAGES_DIR"):
        images.build_image()
