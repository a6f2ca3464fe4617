"""The test folders stay collectable: pytest imports test modules by basename
(no __init__.py), so a name in both tests/ and testcases/ stops the whole run
at collection ("import file mismatch")."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_test_module_name_in_both_folders() -> None:
    unit = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    qemu = {p.name for p in (ROOT / "testcases").glob("test_*.py")}
    assert not unit & qemu, f"same module name in tests/ and testcases/: {sorted(unit & qemu)}"
