"""Tests for harness.state.vmstate: the static VMState compatibility check.

The hand-made dumps in tests/data/vmstate/ follow the real ``-dump-vmstate``
format; ``base.json`` is the reference and each other file is ``base.json``
with one deliberate edit (named by the file).  No QEMU runs here: dumps of the
real binaries are compared in testcases/test_vmstate_dumps.py.
"""
from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from harness.state import vmstate
from harness.errors import BuildError
from harness.state.vmstate import ERROR, INFO, WARNING, compare_vmstate, dump_vmstate, load_dump

DATA = Path(__file__).resolve().parent / "data" / "vmstate"


def fixture(name: str) -> dict[str, Any]:
    return load_dump(DATA / f"{name}.json")


@pytest.fixture
def base() -> dict[str, Any]:
    return fixture("base")


def kinds(report: vmstate.VmstateReport, severity: str | None = None) -> set[tuple[str, str, str]]:
    """(section, path, kind) of the findings, optionally of one severity."""
    return {(f.section, f.path, f.kind) for f in report.findings
            if severity is None or f.severity == severity}


def section_desc(dump: dict[str, Any], name: str) -> dict[str, Any]:
    return dump[name]["Description"]


def set_version(dump: dict[str, Any], name: str, version: int, minimum: int) -> None:
    for d in (dump[name], dump[name]["Description"]):
        d["version_id"] = version
        d["minimum_version_id"] = minimum


# --------------------------------------------------------------- hand-made dumps

def test_identical_pair_passes(base: dict[str, Any]) -> None:
    report = compare_vmstate(base, copy.deepcopy(base))
    assert report.ok
    assert report.findings == []
    assert report.sections_compared == 3
    assert report.src_machine == report.dst_machine == "pc-q35-7.2"


def test_removed_field_breaks_both_directions(base: dict[str, Any]) -> None:
    edited = fixture("removed-field")
    forward = compare_vmstate(base, edited)
    assert not forward.ok
    assert kinds(forward, ERROR) == {("toy-nic", "status", vmstate.FIELD_MISSING_IN_DST)}
    backward = compare_vmstate(edited, base)
    assert not backward.ok
    assert kinds(backward, ERROR) == {("toy-nic", "status", vmstate.FIELD_MISSING_IN_SRC)}


def test_version_bumped_beyond_destination(base: dict[str, Any]) -> None:
    bumped = fixture("version-bumped")            # toy-serial v5, minimum 4
    newer_to_older = compare_vmstate(bumped, base)
    assert not newer_to_older.ok
    [f] = newer_to_older.by_kind(vmstate.VERSION_TOO_NEW)
    assert (f.section, f.src, f.dst, f.severity) == ("toy-serial", 5, 3, ERROR)
    assert "too new" in f.message
    # dst's minimum 4 no longer accepts src's 3.
    older_to_newer = compare_vmstate(base, bumped)
    assert not older_to_newer.ok
    [f] = older_to_newer.by_kind(vmstate.VERSION_TOO_OLD)
    assert (f.section, f.src, f.dst) == ("toy-serial", 3, 4)
    assert kinds(older_to_newer, ERROR) == {("toy-serial", "", vmstate.VERSION_TOO_OLD)}


def test_compatible_version_bump_is_info(base: dict[str, Any]) -> None:
    """dst v5 still accepting v2.. and adding a v5 field: src v3 -> dst is fine."""
    newer = copy.deepcopy(base)
    set_version(newer, "toy-serial", 5, 2)
    section_desc(newer, "toy-serial")["Fields"].append(
        {"field": "lsr", "version_id": 5, "field_exists": False, "size": 1})
    forward = compare_vmstate(base, newer)
    assert forward.ok, forward.summary()
    assert kinds(forward) == {("toy-serial", "", vmstate.VERSION_CHANGED)}
    # The other way src v5 is too new for dst v3.
    assert kinds(compare_vmstate(newer, base), ERROR) == {
        ("toy-serial", "", vmstate.VERSION_TOO_NEW)}


def test_removed_subsection_breaks_only_when_source_has_it(base: dict[str, Any]) -> None:
    edited = fixture("removed-subsection")        # toy-serial lost toyserial/timeout
    forward = compare_vmstate(base, edited)
    assert not forward.ok
    [f] = forward.errors
    assert (f.section, f.path, f.kind) == ("toy-serial", "{toyserial/timeout}",
                                           vmstate.SUBSECTION_MISSING_IN_DST)
    # A subsection the destination knows but never receives is fine.
    backward = compare_vmstate(edited, base)
    assert backward.ok
    assert kinds(backward, INFO) == {("toy-serial", "{toyserial/timeout}",
                                      vmstate.SUBSECTION_MISSING_IN_SRC)}


def test_size_and_array_length_changes(base: dict[str, Any]) -> None:
    edited = fixture("size-changed")              # toy-timer.count 8 -> 4, toy-nic.mac[6] -> [8]
    for report in (compare_vmstate(base, edited), compare_vmstate(edited, base)):
        assert not report.ok
        assert kinds(report, ERROR) == {("toy-timer", "count", vmstate.FIELD_SIZE),
                                        ("toy-nic", "mac", vmstate.FIELD_NUM)}
    [f] = compare_vmstate(base, edited).by_kind(vmstate.FIELD_SIZE)
    assert (f.src, f.dst) == (8, 4)


def test_field_order_change(base: dict[str, Any]) -> None:
    swapped = copy.deepcopy(base)
    fields = section_desc(swapped, "toy-nic")["Fields"]
    fields[2], fields[3] = fields[3], fields[2]   # status <-> mask
    report = compare_vmstate(base, swapped)
    assert not report.ok
    assert {f.kind for f in report.errors} == {vmstate.FIELD_ORDER}
    assert {f.path for f in report.errors} <= {"status", "mask"}


def test_rename_at_same_size_is_wire_compatible(base: dict[str, Any]) -> None:
    renamed = copy.deepcopy(base)
    section_desc(renamed, "toy-nic")["Fields"][2]["field"] = "unused"
    report = compare_vmstate(base, renamed)
    assert report.ok
    assert kinds(report) == {("toy-nic", "status", vmstate.FIELD_RENAMED)}
    # Several fields folded into one VMSTATE_UNUSED of the same bytes: also fine.
    folded = copy.deepcopy(base)
    fields = section_desc(folded, "toy-nic")["Fields"]
    fields[2:4] = [{"field": "unused", "version_id": 0, "field_exists": False, "size": 8}]
    assert compare_vmstate(base, folded).ok
    # ... but not when the byte count differs.
    fields[2]["size"] = 6
    assert not compare_vmstate(base, folded).ok


def test_nested_struct_walks_each_sides_own_version(base: dict[str, Any]) -> None:
    newer = copy.deepcopy(base)
    pci = section_desc(newer, "toy-nic")["Fields"][0]["Description"]
    pci["version_id"] = 3
    pci["Fields"].append({"field": "bus_master", "version_id": 3, "field_exists": False,
                          "size": 1})
    report = compare_vmstate(base, newer)
    # Struct versions are not transmitted: dst reads its v3 field that src never sends.
    assert kinds(report, ERROR) == {("toy-nic", "parent_obj.bus_master",
                                     vmstate.FIELD_MISSING_IN_SRC)}
    assert ("toy-nic", "parent_obj", vmstate.STRUCT_VERSION) in kinds(report, INFO)


def test_struct_memory_size_is_not_wire_size(base: dict[str, Any]) -> None:
    bigger = copy.deepcopy(base)
    section_desc(bigger, "toy-nic")["Fields"][0]["size"] = 2736
    report = compare_vmstate(base, bigger)
    assert report.ok
    assert kinds(report) == {("toy-nic", "parent_obj", vmstate.STRUCT_SIZE)}


def test_conditional_field_missing_is_a_warning(base: dict[str, Any]) -> None:
    edited = copy.deepcopy(base)
    fields = section_desc(edited, "toy-serial")["Fields"]
    fields[:] = [f for f in fields if f["field"] != "scratch"]   # field_exists: true
    report = compare_vmstate(base, edited)
    assert report.ok
    assert kinds(report, WARNING) == {("toy-serial", "scratch", vmstate.FIELD_MISSING_IN_DST)}


def test_fields_newer_than_the_stream_are_not_compared(base: dict[str, Any]) -> None:
    """At incoming version 2, the v3 field 'fcr' is neither sent nor read."""
    older = copy.deepcopy(base)
    set_version(older, "toy-serial", 2, 2)
    desc = section_desc(older, "toy-serial")
    desc["Fields"] = [f for f in desc["Fields"] if f["field"] != "fcr"]
    report = compare_vmstate(older, base)
    assert report.ok, report.summary()
    assert kinds(report) == {("toy-serial", "", vmstate.VERSION_CHANGED)}


def test_subsection_version_is_checked(base: dict[str, Any]) -> None:
    newer = copy.deepcopy(base)
    sub = section_desc(newer, "toy-serial")["Subsections"][1]
    sub["version_id"] = 3
    report = compare_vmstate(newer, base)
    assert kinds(report, ERROR) == {("toy-serial", "{toyserial/timeout}",
                                     vmstate.VERSION_TOO_NEW)}


def test_machine_and_sections(base: dict[str, Any]) -> None:
    other = copy.deepcopy(base)
    other["vmschkmachine"]["Name"] = "pc-q35-10.0"
    del other["toy-timer"]
    report = compare_vmstate(base, other, src_name="7.2", dst_name="10.0")
    assert not report.ok
    assert kinds(report, ERROR) == {("vmschkmachine", "", vmstate.MACHINE_MISMATCH)}
    assert "Machine type received is 'pc-q35-7.2' and local is 'pc-q35-10.0'" in \
        report.errors[0].message
    # A device type the destination lacks is a warning in general ...
    assert kinds(report, WARNING) == {("toy-timer", "", vmstate.SECTION_MISSING_IN_DST)}
    # ... and an error when the VM uses it.
    other["vmschkmachine"]["Name"] = "pc-q35-7.2"
    used = compare_vmstate(base, other, sections=["toy-serial", "toy-timer"])
    assert used.sections_compared == 1
    assert kinds(used, ERROR) == {("toy-timer", "", vmstate.SECTION_MISSING_IN_DST)}
    assert compare_vmstate(base, other, sections=["toy-serial", "toy-nic"]).ok


def test_report_json_and_summary(base: dict[str, Any]) -> None:
    report = compare_vmstate(base, fixture("removed-subsection"), src_name="a", dst_name="b")
    data = json.loads(report.to_json())
    assert data["ok"] is False
    assert data["src"] == "a" and data["dst"] == "b"
    assert data["counts"] == {"error": 1, "warning": 0, "info": 0}
    assert data["findings"][0]["kind"] == vmstate.SUBSECTION_MISSING_IN_DST
    lines = report.summary().splitlines()
    assert lines[0].startswith("vmstate a -> b (pc-q35-7.2): INCOMPATIBLE;")
    assert "1 errors" in lines[0]
    assert "toyserial/timeout" in lines[1]
    assert compare_vmstate(base, base).summary().splitlines()[0].endswith(
        "compatible; 3 sections compared, 0 errors, 0 warnings, 0 notes")


def test_older_dump_without_array_lengths(base: dict[str, Any]) -> None:
    """QEMU < 8.1 dumps carry no "num": a 1-byte field replaced by 5 unused bytes
    may be a 5-element array (e1000e's eitr_intr_pending in 7.2 -> 10.0)."""
    old = copy.deepcopy(base)
    fields = section_desc(old, "toy-nic")["Fields"]
    fields[3] = {"field": "pending", "version_id": 0, "field_exists": False, "size": 1}
    for entry in old.values():
        if "Description" in entry:
            stack = [entry["Description"]]
            while stack:
                d = stack.pop()
                for f in d.get("Fields", []):
                    f.pop("num", None)
                    if "Description" in f:
                        stack.append(f["Description"])
                stack.extend(d.get("Subsections", []))
    new = copy.deepcopy(base)
    section_desc(new, "toy-nic")["Fields"][3] = {
        "field": "unused", "version_id": 0, "field_exists": False, "num": 5, "size": 1}
    report = compare_vmstate(old, new)
    renamed = report.by_kind(vmstate.FIELD_RENAMED)
    assert [(f.path, f.severity) for f in renamed] == [("pending", WARNING)]


# ------------------------------------------------------------------ dump_vmstate

def test_dump_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="binary not found"):
        dump_vmstate(str(tmp_path / "no-such-qemu"), "q35")


def test_dump_failure_carries_stderr_tail(tmp_path: Path) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'qemu: something went wrong' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(BuildError) as exc:
        dump_vmstate(str(fake), "q35")
    assert "exit status 1" in str(exc.value)
    assert "something went wrong" in str(exc.value)
    assert exc.value.build == str(fake)


def test_dump_passes_arguments_and_env(tmp_path: Path) -> None:
    """A stand-in binary records its argv and writes a dump where told."""
    fake = tmp_path / "fake-qemu"
    log = tmp_path / "argv"
    fake.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {log}\n"
        f"echo \"$MY_VAR\" >> {log}\n"
        "while [ $# -gt 0 ]; do\n"
        "  if [ \"$1\" = -dump-vmstate ]; then\n"
        "    echo '{\"vmschkmachine\": {\"Name\": \"m\"}}' > \"$2\"; fi\n"
        "  shift\ndone\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    data = dump_vmstate(str(fake), "m", data_dirs=["/d1", "/d2"], env={"MY_VAR": "x"},
                        extra_args=["-accel", "tcg"])
    assert data == {"vmschkmachine": {"Name": "m"}}
    argv = log.read_text().splitlines()
    assert argv[:2] == ["-M", "m"]
    assert argv[2] == "-dump-vmstate"
    assert argv[4:] == ["-nodefaults", "-display", "none", "-L", "/d1", "-L", "/d2",
                        "-accel", "tcg", "x"]


def test_dump_timeout(tmp_path: Path) -> None:
    fake = tmp_path / "slow-qemu"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(BuildError, match="did not finish within 0.5 s"):
        dump_vmstate(str(fake), "q35", timeout=0.5)
