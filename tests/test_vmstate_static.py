"""Tests for harness.checks.vmstate_static and harness.qemu.machines (no QEMU).

A QEMU's ``-dump-vmstate`` is played by a tiny shell script that copies one of
the hand-made dumps in tests/data/vmstate/ to the path it is given and logs
each call, so caching can be counted.  The check itself always runs for real
on those dumps.  The QOM walk is exercised against a scripted QMP stand-in
(its bounds and what it descends into); the real walk is in
testcases/test_cross_version.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from harness.state import vmstate
from harness.cell import BuildSpec
from harness.checks import vmstate_static as vs
from harness.qemu.build import MachineType, QemuBuild
from harness.qemu.machines import VersionedMachine, common_machine_type, machine_family
from harness.results import ERROR, FAILED, PASSED, SKIPPED, CellResult, CheckResult

DATA = Path(__file__).resolve().parent / "data" / "vmstate"
#: QOM types of a hand-made "VM" whose devices are the fixture's sections,
#: plus the kinds of type a real VM has that no dump describes.
VM_TYPES = ["toy-serial", "toy-nic", "toy-timer", "qemu64-x86_64-cpu", "apic", "ide-hd"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache directory and an empty in-process cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(root))
    vs.clear_memory_cache()
    yield root
    vs.clear_memory_cache()


class FakeQemu:
    """A script standing in for ``qemu-system-x86_64 -dump-vmstate``."""

    def __init__(self, tmp_path: Path, name: str, fixture: str) -> None:
        self.path = tmp_path / name
        self.log = tmp_path / f"{name}.log"
        self.fixture = DATA / f"{fixture}.json"
        self.path.write_text(
            "#!/bin/sh\n"
            f"echo \"$*\" >> {self.log}\n"
            "out=\n"
            "while [ $# -gt 0 ]; do\n"
            "  [ \"$1\" = -dump-vmstate ] && out=\"$2\"\n"
            "  shift\n"
            "done\n"
            f"cp {self.fixture} \"$out\"\n")
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    @property
    def calls(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def build(self, name: str | None = None, version: tuple[int, int, int] = (7, 2, 0)) -> QemuBuild:
        return QemuBuild(spec=BuildSpec(name=name or self.path.name, binary=str(self.path)),
                         version=version)

    def touch(self) -> None:
        """A rebuilt binary: same path, new mtime."""
        st = self.path.stat()
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def dump(name: str) -> dict[str, Any]:
    return vmstate.load_dump(DATA / f"{name}.json")


# ------------------------------------------------------------ device mapping

def test_types_map_to_dump_keys_and_vmsd_names() -> None:
    base = dump("base")
    smap = vs.map_devices(VM_TYPES, base, base)
    assert smap.sections == ["toy-serial", "toy-nic", "toy-timer"]
    assert smap.vmsd_names == {"toy-serial": "toyserial", "toy-nic": "toynic",
                               "toy-timer": base["toy-timer"]["Description"]["name"]}
    assert set(smap.unmapped) == {"qemu64-x86_64-cpu", "apic", "ide-hd"}
    # Each unmapped type says why, naming the QEMU function responsible.
    assert "cpu_exec_realizefn" in smap.unmapped["qemu64-x86_64-cpu"]
    assert "apic_common_realize" in smap.unmapped["apic"]
    assert "parent's section" in smap.unmapped["ide-hd"]
    assert smap.one_sided == {} and smap.only_in_src_vm == [] and smap.only_in_dst_vm == []


def test_unmapped_reasons_by_type_family() -> None:
    assert vs.unmapped_reason("max-x86_64-cpu") == vs.UNMAPPED_REASONS["cpu"]
    assert vs.unmapped_reason("kvm-apic") == vs.UNMAPPED_REASONS["apic"]
    assert vs.unmapped_reason("vmport") == vs.UNMAPPED_REASONS["other"]


def test_machine_key_is_never_a_section() -> None:
    base = dump("base")
    smap = vs.map_devices([vmstate.MACHINE_KEY, "toy-nic"], base, base)
    assert smap.sections == ["toy-nic"]
    assert vmstate.MACHINE_KEY in smap.unmapped


def test_type_described_by_one_dump_only() -> None:
    """Like piix3-ide: 7.2 registers it at realize, 10.0 via DeviceClass.vmsd."""
    base = dump("base")
    without = {k: v for k, v in base.items() if k != "toy-timer"}
    # Only the destination describes it: the source VM has it, so the source
    # build registers it another way -- not comparable, not an error.
    smap = vs.map_devices(["toy-timer", "toy-nic"], without, base)
    assert smap.sections == ["toy-nic"]
    assert "only by the destination's dump" in smap.one_sided["toy-timer"]
    # Only the source describes it, and the destination VM has the device too.
    smap = vs.map_devices(["toy-timer", "toy-nic"], base, without,
                          dst_types=["toy-timer", "toy-nic"])
    assert smap.sections == ["toy-nic"]
    assert "only by the source's dump" in smap.one_sided["toy-timer"]
    # Without the destination VM's devices it stays in: a real gap looks the same.
    smap = vs.map_devices(["toy-timer", "toy-nic"], base, without)
    assert smap.sections == ["toy-timer", "toy-nic"]
    report = vmstate.compare_vmstate(base, without, sections=smap.sections)
    assert [f.kind for f in report.errors] == [vmstate.SECTION_MISSING_IN_DST]


def test_devices_only_one_vm_has() -> None:
    base = dump("base")
    smap = vs.map_devices(["toy-serial", "toy-nic", "apic"], base, base,
                          dst_types=["toy-serial", "toy-timer", "apic"])
    assert smap.only_in_src_vm == ["toy-nic"]
    assert smap.only_in_dst_vm == ["toy-timer"]


# ---------------------------------------------------------------- the check

def test_identical_dumps_pass(tmp_path: Path) -> None:
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "base")
    result = vs.static_check(a.build(), b.build(), "pc-q35-7.2", VM_TYPES)
    assert isinstance(result, CheckResult)
    assert result.name == vs.CHECK_NAME == "vmstate-static"
    assert result.passed, result.summary
    f = result.figures
    assert (f["verdict"], f["errors"], f["warnings"], f["scope"]) == \
        ("compatible", 0, 0, "vm-devices")
    assert f["advisory"] is True
    assert f["report"]["findings"] == []
    assert f["report"]["sections_compared"] == 3
    assert f["sections"] == ["toy-serial", "toy-nic", "toy-timer"]
    assert f["machine_type"] == "pc-q35-7.2"
    assert any("not in the dumps: apic, ide-hd, qemu64-x86_64-cpu" in ln
               for ln in f["summary_lines"])
    json.dumps(f)  # figures go to results.json as they are


def test_removed_field_is_flagged(tmp_path: Path) -> None:
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "removed-field")
    result = vs.static_check(a.build("old"), b.build("new", (10, 0, 0)), "pc-q35-7.2", VM_TYPES)
    assert not result.passed
    assert result.figures["verdict"] == "incompatible"
    assert result.figures["errors"] >= 1
    kinds = {(x["section"], x["kind"]) for x in result.figures["report"]["findings"]
             if x["severity"] == vmstate.ERROR}
    assert ("toy-nic", vmstate.FIELD_MISSING_IN_DST) in kinds
    assert result.summary.startswith("incompatible:")
    assert "old 7.2.0 -> new 10.0.0" in result.figures["summary_lines"][0]
    # Restricted to a VM without that device, the same pair is fine.
    vs.clear_memory_cache()
    assert vs.static_check(a.build(), b.build(), "pc-q35-7.2", ["toy-serial"]).passed


def test_bumped_version_is_flagged_both_ways(tmp_path: Path) -> None:
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "version-bumped")
    fwd = vs.static_check(a.build(), b.build(), "pc-q35-7.2", VM_TYPES)
    back = vs.static_check(b.build(), a.build(), "pc-q35-7.2", VM_TYPES)
    for result, kind in ((fwd, vmstate.VERSION_TOO_OLD), (back, vmstate.VERSION_TOO_NEW)):
        assert not result.passed
        errors = [x for x in result.figures["report"]["findings"]
                  if x["severity"] == vmstate.ERROR]
        assert [(x["section"], x["kind"]) for x in errors] == [("toy-serial", kind)]


def test_conditional_errors_are_counted(tmp_path: Path) -> None:
    """An error in a subsection bites only when needed() sends it."""
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "removed-subsection")
    result = vs.static_check(a.build(), b.build(), "pc-q35-7.2", VM_TYPES)
    assert not result.passed
    assert result.figures["conditional_errors"] == result.figures["errors"] == 1
    assert "sent only when needed" in result.summary


def test_without_devices_compares_everything(tmp_path: Path) -> None:
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "base")
    result = vs.static_check(a.build(), b.build(), "pc-q35-7.2", None)
    assert result.passed
    assert result.figures["scope"] == "all-device-types"
    assert result.figures["sections"] is None
    # A device list with nothing the dumps know does not make a vacuous pass.
    result = vs.static_check(a.build(), b.build(), "pc-q35-7.2", ["qemu64-x86_64-cpu"])
    assert result.figures["scope"] == "all-device-types"
    assert result.figures["report"]["sections_compared"] == 3


def test_same_build_is_skipped_without_dumping(tmp_path: Path) -> None:
    a = FakeQemu(tmp_path, "qemu-a", "base")
    link = tmp_path / "qemu-link"
    link.symlink_to(a.path)
    other = QemuBuild(spec=BuildSpec(name="other-name", binary=str(link)))
    assert not vs.builds_differ(a.build(), other)
    result = vs.static_check(a.build(), other, "pc-q35-7.2", VM_TYPES)
    assert result.passed and result.figures["verdict"] == "skipped"
    assert a.calls == 0


def test_builds_differ_on_binary_and_arguments(tmp_path: Path) -> None:
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "base")
    assert vs.builds_differ(a.build(), b.build())
    with_dirs = QemuBuild(spec=BuildSpec(name="x", binary=str(a.path), data_dirs=("/d",)))
    assert vs.builds_differ(a.build(), with_dirs)


def test_dump_failure_gives_no_verdict(tmp_path: Path) -> None:
    a = FakeQemu(tmp_path, "qemu-a", "base")
    gone = QemuBuild(spec=BuildSpec(name="gone", binary=str(tmp_path / "no-such-qemu")))
    result = vs.static_check(a.build(), gone, "pc-q35-7.2", VM_TYPES)
    assert not result.passed
    assert result.figures["verdict"] == "unknown"
    assert "gone" in result.summary


# ------------------------------------------------------------------ caching

def test_dump_cached_in_memory_then_on_disk(tmp_path: Path, private_cache: Path) -> None:
    a = FakeQemu(tmp_path, "qemu-a", "base")
    first = vs.cached_dump(a.build(), "pc-q35-7.2")
    assert (first.source, a.calls) == ("qemu", 1)
    assert first.dump == dump("base")
    assert first.path is not None and Path(first.path).parent == private_cache / "vmstate"
    assert Path(first.path).name.startswith("qemu-a-pc-q35-7.2-")
    second = vs.cached_dump(a.build(), "pc-q35-7.2")
    assert (second.source, a.calls) == ("memory", 1)
    vs.clear_memory_cache()  # a new process
    third = vs.cached_dump(a.build(), "pc-q35-7.2")
    assert (third.source, a.calls) == ("disk", 1)
    assert third.dump == first.dump
    # The check itself reports where its dumps came from.
    b = FakeQemu(tmp_path, "qemu-b", "base")
    result = vs.static_check(a.build(), b.build(), "pc-q35-7.2", VM_TYPES)
    assert result.figures["dumps"]["src"]["source"] == "memory"
    assert result.figures["dumps"]["dst"]["source"] == "qemu"


def test_cache_keyed_by_mtime_and_machine(tmp_path: Path) -> None:
    a = FakeQemu(tmp_path, "qemu-a", "base")
    vs.cached_dump(a.build(), "pc-q35-7.2")
    assert vs.cached_dump(a.build(), "pc-i440fx-7.2").source == "qemu"
    assert a.calls == 2
    a.touch()
    assert vs.cached_dump(a.build(), "pc-q35-7.2").source == "qemu"
    assert a.calls == 3
    args = QemuBuild(spec=BuildSpec(name="a", binary=str(a.path), extra_args=("-x",)))
    assert vs.DumpKey.of(args, "m") != vs.DumpKey.of(a.build(), "m")


def test_bad_cache_file_is_replaced(tmp_path: Path) -> None:
    a = FakeQemu(tmp_path, "qemu-a", "base")
    path = Path(vs.cached_dump(a.build(), "pc-q35-7.2").path or "")
    for bad in ("{not json", json.dumps({"format": vs.CACHE_FORMAT, "key": {"binary": "x"},
                                         "dump": {}})):
        path.write_text(bad)
        vs.clear_memory_cache()
        again = vs.cached_dump(a.build(), "pc-q35-7.2")
        assert again.source == "qemu"
        assert json.loads(path.read_text())["dump"] == dump("base")
    assert a.calls == 3
    assert not list(path.parent.glob(".tmp-*"))


def test_unwritable_cache_only_costs_a_dump(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MHARNESS_CACHE_DIR", str(blocker / "cache"))
    a = FakeQemu(tmp_path, "qemu-a", "base")
    fetched = vs.cached_dump(a.build(), "pc-q35-7.2")
    assert fetched.source == "qemu" and fetched.path is None
    assert vs.cached_dump(a.build(), "pc-q35-7.2").source == "memory"


# --------------------------------------------------------- beside the live verdict

def live(verdict: str, reason: str = "", **checks: bool) -> CellResult:
    """A live cell's outcome as input to ``agreement`` (a pure function)."""
    return CellResult(id="c", verdict=verdict, reason=reason,
                      checks=[CheckResult(n, ok, "") for n, ok in checks.items()])


@pytest.fixture
def static_pair(tmp_path: Path) -> tuple[CheckResult, CheckResult]:
    """A real compatible and a real incompatible (conditional) static result."""
    a = FakeQemu(tmp_path, "qemu-a", "base")
    same = FakeQemu(tmp_path, "qemu-b", "base")
    edited = FakeQemu(tmp_path, "qemu-c", "removed-subsection")
    ok = vs.static_check(a.build(), same.build(), "m", VM_TYPES)
    broken = vs.static_check(a.build(), edited.build(), "m", VM_TYPES)
    assert ok.passed and not broken.passed
    return ok, broken


def test_agreement_when_both_say_the_same(static_pair) -> None:
    ok, broken = static_pair
    both_ok = vs.agreement(ok, live(PASSED, converged=True, liveness=True))
    assert (both_ok.agree, both_ok.static, both_ok.live) == (True, "compatible", "accepted")
    both_bad = vs.agreement(broken, live(FAILED, "migration failed: load of migration failed"))
    assert (both_bad.agree, both_bad.live) == (True, "rejected")


def test_disagreement_is_explained(static_pair) -> None:
    ok, broken = static_pair
    pessimistic = vs.agreement(broken, live(PASSED, converged=True, liveness=True))
    assert pessimistic.agree is False
    assert "needed()" in pessimistic.note
    blind = vs.agreement(ok, live(FAILED, "liveness: destination died", converged=True,
                                  liveness=False))
    assert (blind.agree, blind.live) == (False, "rejected")
    assert "CPU, APIC" in blind.note and "qemu64-x86_64-cpu" in blind.note


def test_agreement_ignores_checks_unrelated_to_device_state(static_pair) -> None:
    ok, _ = static_pair
    # A downtime failure with the guest running on is still a loaded state.
    slow = vs.agreement(ok, live(FAILED, "downtime: 900 ms", converged=True, liveness=True,
                                 downtime=False))
    assert (slow.agree, slow.live) == (True, "accepted")
    for outcome in (live(SKIPPED, "no 10.0"), live(FAILED, "did not complete", converged=False)):
        assert vs.agreement(ok, outcome).agree is None


def test_static_beside_live_entry(tmp_path: Path) -> None:
    a, b = FakeQemu(tmp_path, "qemu-a", "base"), FakeQemu(tmp_path, "qemu-b", "base")
    entry = asyncio.run(vs.static_beside_live(a.build(), b.build(), "m", VM_TYPES,
                                              live(PASSED, converged=True, liveness=True)))
    assert entry is not None
    assert entry["name"] == "vmstate-static" and entry["passed"] is True
    assert entry["agreement"]["agree"] is True
    json.dumps(entry)
    # Same build, or no machine type (the cell failed before choosing one): nothing.
    assert asyncio.run(vs.static_beside_live(a.build(), a.build(), "m", None, live(PASSED))) is None
    assert asyncio.run(vs.static_beside_live(a.build(), b.build(), None, None, live(PASSED))) is None


# ------------------------------------------------------------------ QOM walk

class ScriptedQmp:
    """Answers qom-list-types / qom-list from a fixed tree (QEMU's reply shapes)."""

    DEVICE_TYPES = ["toy-nic", "toy-serial", "mch", "qemu64-x86_64-cpu"]

    def __init__(self, tree: dict[str, list[tuple[str, str]]], delay: float = 0.0) -> None:
        self.tree = tree
        self.delay = delay
        self.listed: list[str] = []

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        await asyncio.sleep(self.delay)
        if cmd == "qom-list-types":
            assert args == {"implements": "device", "abstract": False}
            return [{"name": n, "parent": "device"} for n in self.DEVICE_TYPES]
        assert cmd == "qom-list" and args is not None
        self.listed.append(args["path"])
        return [{"name": "type", "type": "string"}] + [
            {"name": n, "type": t} for n, t in self.tree.get(args["path"], [])]


TREE = {
    "/machine": [("unattached", "child<container>"), ("peripheral-anon", "child<container>"),
                 ("q35", "child<toy-pcihost-not-a-device>"), ("fw_cfg", "link<fw_cfg_io>")],
    "/machine/unattached": [("device[0]", "child<qemu64-x86_64-cpu>"),
                            ("device[1]", "child<toy-serial>"),
                            ("irq[0]", "child<irq>"), ("mr", "child<memory-region>"),
                            ("sysbus", "child<System>")],
    "/machine/unattached/device[1]": [("nested", "child<mch>")],
    "/machine/peripheral-anon": [("device[0]", "child<toy-nic>")],
}


def test_walk_descends_into_devices_and_containers_only() -> None:
    qmp = ScriptedQmp(TREE)
    walk = asyncio.run(vs.walk_devices(qmp))
    assert walk.types == ("mch", "qemu64-x86_64-cpu", "toy-nic", "toy-serial")
    assert walk.paths["/machine/unattached/device[1]/nested"] == "mch"
    # Buses, IRQs, memory regions, non-devices and links are not listed.
    assert sorted(qmp.listed) == sorted([
        "/machine", "/machine/unattached", "/machine/peripheral-anon",
        "/machine/unattached/device[0]", "/machine/unattached/device[1]",
        "/machine/unattached/device[1]/nested", "/machine/peripheral-anon/device[0]"])
    assert walk.nodes == len(qmp.listed)
    assert asyncio.run(vs.vm_device_types(ScriptedQmp(TREE))) == list(walk.types)


def test_walk_is_bounded() -> None:
    with pytest.raises(vs.DeviceWalkError, match="more than 3"):
        asyncio.run(vs.walk_devices(ScriptedQmp(TREE), max_nodes=3))
    with pytest.raises(vs.DeviceWalkError, match="took more than 0.05 s"):
        asyncio.run(vs.walk_devices(ScriptedQmp(TREE, delay=0.02), timeout=0.05))


# ------------------------------------------------------- common machine types

def pc_build(name: str, versions: list[str], latest: str,
             deprecated: tuple[str, ...] = ()) -> QemuBuild:
    machines: dict[str, MachineType] = {}
    for v in versions:
        for fam, alias in (("pc-q35", "q35"), ("pc-i440fx", "pc")):
            m = f"{fam}-{v}"
            machines[m] = MachineType(m, alias=alias if v == latest else None,
                                      deprecated=m in deprecated)
    for m in ("isapc", "microvm", "none"):
        machines[m] = MachineType(m)
    return QemuBuild(spec=BuildSpec(name=name, binary=f"/x/{name}"), machines=machines)


OLD = pc_build("old", ["2.12", "6.2", "7.0", "7.1", "7.2"], "7.2")
NEW = pc_build("new", ["2.12", "6.2", "7.2", "8.0", "9.2", "10.0"], "10.0",
               deprecated=("pc-q35-2.12", "pc-i440fx-2.12"))


def test_versioned_machine_parsing() -> None:
    assert VersionedMachine.parse("pc-q35-10.0") == VersionedMachine("pc-q35", (10, 0),
                                                                     "pc-q35-10.0")
    assert VersionedMachine.parse("virt-9.2") is not None
    assert VersionedMachine.parse("microvm") is None
    # Numeric, not string, order: 10.0 is newer than 9.2.
    assert VersionedMachine.parse("pc-q35-10.0") > VersionedMachine.parse("pc-q35-9.2")


def test_common_machine_type_from_both_lists() -> None:
    assert machine_family(OLD, "q35") == machine_family(NEW, "q35") == "pc-q35"
    assert common_machine_type(OLD, NEW, "q35") == "pc-q35-7.2"
    assert common_machine_type(NEW, OLD, "pc") == "pc-i440fx-7.2"
    assert common_machine_type(OLD, NEW, "pc-q35") == "pc-q35-7.2"
    assert common_machine_type(OLD, NEW, "pc-q35-6.2") == "pc-q35-7.2"   # its family
    assert common_machine_type(NEW, NEW, "q35") == "pc-q35-10.0"
    for name in ("microvm", "isapc", "no-such-board"):
        assert common_machine_type(OLD, NEW, name) is None


def test_common_machine_type_avoids_deprecated() -> None:
    old = pc_build("old", ["2.12", "3.0"], "3.0")
    new = pc_build("new", ["2.12", "3.0"], "3.0", deprecated=("pc-q35-3.0",))
    assert common_machine_type(old, new, "q35") == "pc-q35-2.12"
    # Deprecated everywhere: still better than nothing.
    only = pc_build("new", ["3.0"], "3.0", deprecated=("pc-q35-3.0",))
    assert common_machine_type(old, only, "q35") == "pc-q35-3.0"
    assert common_machine_type(old, pc_build("x", ["9.0"], "9.0"), "q35") is None


def test_binary_named_without_a_path_is_looked_up_in_path(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    a = FakeQemu(tmp_path, "qemu-a", "base")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.chdir(tmp_path.parent)
    bare = QemuBuild(spec=BuildSpec(name="bare", binary="qemu-a"))
    assert vs.DumpKey.of(bare, "m").binary == str(a.path.resolve())
    assert not vs.builds_differ(bare, a.build())


def test_destination_completion_counts_when_the_cell_stopped_early(static_pair) -> None:
    ok, broken = static_pair
    # The harness stopped the cell after the destination had loaded everything.
    loaded = live(FAILED, "unexpected run states after migration: source finish-migrate, "
                          "destination paused", converged=True)
    loaded.figures["destination_states"] = ["active", "completed"]
    assert vs.live_outcome(loaded) == "accepted"
    assert vs.agreement(ok, loaded).agree is True
    refused = live(FAILED, "migration failed: Unable to write to socket")
    refused.figures["destination_states"] = ["active", "failed"]
    assert vs.live_outcome(refused) == "rejected"
    assert vs.agreement(broken, refused).agree is True
    # Wording that merely mentions the destination is not a load failure.
    assert vs.live_outcome(live(ERROR, "destination did not report its listening port")) \
        == "inconclusive"
    assert vs.live_outcome(live(ERROR, "source QEMU died during migration: destination died")) \
        == "rejected"
