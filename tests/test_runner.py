"""The runner without QEMU: shards, budgets, merging, reruns, flaky cells."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.cell import BuildSpec, Cell, TargetSpec
from harness.matrix import load_matrix, tier_cells
from harness.qemu.build import discover
from harness.report.files import write_junit, write_results_json
from harness.results import CellResult
from harness.run.runner import (
    FLAKY,
    Budget,
    RunState,
    cell_needs,
    exit_status,
    failed_in,
    fits,
    mark_flaky,
    merge_results,
    parse_shard,
    shard,
)

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def cell(i: int, memory: int = 256 * MiB, smp: int = 1) -> Cell:
    build = BuildSpec(name="b", binary="/bin/true")
    return Cell(id=f"c{i}", target=TargetSpec(name="t", memory=memory, smp=smp),
                src_build=build, dst_build=build)


@pytest.mark.parametrize("total,n", [(0, 3), (1, 2), (8, 3), (13, 4), (5, 5), (3, 7)])
def test_shards_are_disjoint_complete_and_balanced(total: int, n: int) -> None:
    cells = [cell(i) for i in range(total)]
    parts = [shard(cells, k, n) for k in range(1, n + 1)]
    ids = [c.id for p in parts for c in p]
    assert sorted(ids) == sorted(c.id for c in cells) and len(ids) == len(set(ids))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert shard(cells, 2, n) == shard(list(cells), 2, n)   # deterministic


def test_shards_of_the_real_matrix() -> None:
    cells = tier_cells(load_matrix(REPO / "matrix.yaml"), "extended", resolve=discover)
    parts = [shard(cells, k, 3) for k in (1, 2, 3)]
    assert sorted(c.id for p in parts for c in p) == sorted(c.id for c in cells)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_shard(text)
    assert parse_shard("2/4") == (2, 4)


def test_budget_counts_cores_and_guest_ram_twice() -> None:
    assert cell_needs(cell(0, memory=512 * MiB, smp=2)) == (2.0, 1024 * MiB)
    budget = Budget(cpus=2, memory=1100 * MiB)
    running = [cell(1)]
    assert fits(cell(2), running, budget)                      # 2 cores, 1024 MiB
    assert not fits(cell(3, smp=2), running, budget)           # 3 cores
    assert not fits(cell(4, memory=512 * MiB), running, budget)    # 512 + 1024 MiB
    assert fits(cell(5, memory=8 << 30, smp=8), [], budget)    # too big: runs alone
    here = Budget.of_this_machine()
    assert here.cpus >= 1 and here.memory > 0


def test_budget_reads_free_space_where_the_ram_files_go(tmp_path: Path, monkeypatch) -> None:
    """MHARNESS_RUNTIME_DIR (a huge-page tmpfs) is where the RAM files go:
    its free space bounds the budget, not /dev/shm's."""
    import shutil
    from collections import namedtuple

    from harness.run import runner
    usage = namedtuple("usage", "total used free")
    asked: list[str] = []

    def disk_usage(path: object) -> object:
        asked.append(str(path))
        return usage(1 << 40, 0, 300 * MiB if str(path) == str(tmp_path) else 1 << 40)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setenv("MHARNESS_RUNTIME_DIR", str(tmp_path))
    here = runner.Budget.of_this_machine()
    assert asked == [str(tmp_path)]
    assert here.memory == int(300 * MiB * 0.8)


def _results(tmp_path: Path, name: str, verdicts: dict[str, str], meta: dict | None = None
             ) -> Path:
    d = tmp_path / name
    d.mkdir()
    state = RunState(results_dir=d, total=len(verdicts), meta=meta or {})
    state.results = [CellResult(id=i, verdict=v, reason="" if v == "passed" else f"{i} broke")
                     for i, v in verdicts.items()]
    write_results_json(state)
    write_junit(state)
    return d


def test_merge_combines_shards(tmp_path: Path) -> None:
    a = _results(tmp_path, "a", {"x": "passed", "y": "failed"})
    b = _results(tmp_path, "b", {"z": "passed"})
    state = merge_results([a, b], tmp_path / "out")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["id"] for c in data["cells"]] == ["x", "y", "z"]
    assert data["total_cells"] == 3 and data["counts"] == {"passed": 2, "failed": 1}
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    assert exit_status(state) == 1


def test_merge_refuses_one_cell_with_two_verdicts(tmp_path: Path) -> None:
    a = _results(tmp_path, "a", {"x": "passed"})
    b = _results(tmp_path, "b", {"x": "failed"})
    with pytest.raises(ValueError, match="cell x is passed in .* but failed in"):
        merge_results([a, b], tmp_path / "out")


def test_rerun_marks_a_cell_that_now_passes_flaky(tmp_path: Path) -> None:
    d = _results(tmp_path, "first", {"x": "passed", "y": "failed", "z": "error"},
                 meta={"tier": "nightly", "seed": 3})
    failed, meta = failed_in(d)
    assert [p.id for p in failed] == ["y", "z"] and meta["seed"] == 3
    prev = {p.id: p for p in failed}
    flaky = mark_flaky(CellResult(id="y", verdict="passed"), prev["y"], d)
    still = mark_flaky(CellResult(id="z", verdict="failed", reason="again"), prev["z"], d)
    assert flaky.verdict == FLAKY and "y broke" in flaky.reason and "passed on rerun" in flaky.reason
    assert still.verdict == "failed" and still.reason == "again"
    state = RunState(results_dir=tmp_path / "rerun", total=2)
    state.results = [flaky]
    (tmp_path / "rerun").mkdir()
    write_junit(state)
    case = ET.parse(tmp_path / "rerun" / "junit.xml").getroot().find("testcase")
    assert case is not None and case.find("failure") is None
    assert case.find("properties/property").get("name") == "flaky"
    assert exit_status(state) == 0
    state.results.append(still)
    assert exit_status(state) == 1
