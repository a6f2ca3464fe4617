"""The RAM comparison's chunk tests (issue #16): every engine gives the same
report (differing pages, their first offsets, explained pages); only the speed
differs (benchmarks/cell_cost.py prints it, no test times it)."""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from harness.checks import ram
from harness.checks.ram import Explained, compare_files

MiB = 1 << 20


def _pair(tmp_path: Path, size: int) -> tuple[Path, Path]:
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    a, b = tmp_path / "src.ram", tmp_path / "dst.ram"
    a.write_bytes(data)
    b.write_bytes(data)
    return a, b


def _flip(path: Path, *offsets: int) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        for off in offsets:
            m[off] ^= 0xFF


def test_memcmp_is_the_default_on_linux() -> None:
    assert set(ram.ENGINES) == {"numpy", "memcmp"}
    assert ram.DEFAULT_ENGINE == "memcmp"


@pytest.mark.parametrize("engine", sorted(ram.ENGINES))
def test_every_engine_reports_the_same_pages(tmp_path: Path, engine: str) -> None:
    size = 2 * ram.CHUNK + 3 * 4096 + 5             # chunks, pages and a ragged tail
    a, b = _pair(tmp_path, size)
    offsets = (0, 4096 * 3 + 7, ram.CHUNK - 1, ram.CHUNK, 2 * ram.CHUNK + 4096, size - 1)
    _flip(b, *offsets)
    diff = compare_files(a, b, engine=engine)
    assert diff.differing_pages == 6
    assert diff.first_offsets == [0, 4096 * 3, ram.CHUNK - 4096, ram.CHUNK,
                                  2 * ram.CHUNK + 4096, 2 * ram.CHUNK + 3 * 4096]
    assert compare_files(a, a, engine=engine).differing_pages == 0


@pytest.mark.parametrize("engine", sorted(ram.ENGINES))
def test_every_engine_explains_the_same_bytes(tmp_path: Path, engine: str) -> None:
    a, b = _pair(tmp_path, 4 * MiB)
    _flip(b, 0x10000, 0x20000, 0x20001, 0x30005)
    explained = Explained(np.array([0x10000, 0x20000, 0x30000]), "the guest wrote them")
    diff = compare_files(a, b, explained=explained, engine=engine)
    # 0x10000 only at an explained byte; 0x20000 also at 0x20001; 0x30000 elsewhere.
    assert (diff.differing_pages, diff.explained_pages) == (2, 1)
    assert diff.first_offsets == [0x20000, 0x30000]


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, MiB)
    with pytest.raises(KeyError):
        compare_files(a, b, engine="nope")


class _Stop(BaseException):
    """Stands for harness.qemu.process.Interrupted: a signal that lands in the middle
    of a comparison."""


def test_an_interruption_mid_compare_is_what_propagates(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM raised while a chunk is compared leaves views of the maps in the
    traceback's frames; closing the maps must not turn it into a BufferError
    (a fresh-clone CI run: the interrupted cell ended 'error', the run exit 1, not 130)."""
    a, b = _pair(tmp_path, 2 * ram.CHUNK)

    def stop(ca: np.ndarray, cb: np.ndarray) -> bool:
        raise _Stop()

    monkeypatch.setitem(ram.ENGINES, "stop", stop)
    with pytest.raises(_Stop):
        compare_files(a, b, engine="stop")
