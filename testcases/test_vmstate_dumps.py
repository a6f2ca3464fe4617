"""harness.state.vmstate against real binaries: ``-dump-vmstate`` of the system
QEMU 7.2 and, when scripts/setup-qemu-backports.sh has been run, QEMU 10.0
from its private prefix (the comparison itself is unit-tested with hand-made
dumps in tests/test_vmstate.py).
"""
from __future__ import annotations

from typing import Any

import pytest

from harness.errors import BuildError
from harness.qemu.build import QemuBuild
from harness.state import vmstate
from harness.state.vmstate import ERROR, INFO, compare_vmstate, dump_vmstate
from qemu_builds import matrix_build

pytestmark = [pytest.mark.qemu]


def kinds(report: vmstate.VmstateReport, severity: str | None = None) -> set[tuple[str, str, str]]:
    """(section, path, kind) of the findings, optionally of one severity."""
    return {(f.section, f.path, f.kind) for f in report.findings
            if severity is None or f.severity == severity}


# The devices a "-M pc-q35-7.2 -nodefaults" VM has in both builds (QOM types, as
# keys in the dumps), found by walking /machine over QMP in each build.
Q35_DEVICES = ["ICH9-LPC", "ICH9-SMB", "fw_cfg_io", "hpet", "i8042", "i8257", "ich9-ahci",
               "ioapic", "isa-i8259", "isa-pcspk", "isa-pit", "kvmvapic", "mc146818rtc", "mch",
               "port92", "ps2-kbd", "ps2-mouse", "q35-pcihost", "smbus-eeprom", "vmmouse"]


@pytest.fixture(scope="module")
def system() -> QemuBuild:
    """Debian's QEMU 7.2, the matrix's required build: missing fails."""
    return matrix_build("system")


@pytest.fixture(scope="module")
def dump_72(system: QemuBuild) -> dict[str, Any]:
    return dump_vmstate(system.spec.binary, "pc-q35-7.2")


@pytest.fixture(scope="module")
def dump_100() -> dict[str, Any]:
    """QEMU 10.0 from its private prefix: skipped with the build's reason when absent."""
    return dump_vmstate(matrix_build("debian-10.0").spec.binary, "pc-q35-7.2")


def test_real_72_against_itself(system: QemuBuild, dump_72: dict[str, Any]) -> None:
    again = dump_vmstate(system.spec.binary, "pc-q35-7.2")
    report = compare_vmstate(dump_72, again, src_name="7.2", dst_name="7.2")
    assert report.ok, report.summary()
    assert report.findings == []
    assert report.src_machine == "pc-q35-7.2"
    assert report.sections_compared > 150


def test_real_dump_bad_machine(system: QemuBuild) -> None:
    with pytest.raises(BuildError, match="no-such-machine"):
        dump_vmstate(system.spec.binary, "no-such-machine")


def test_real_72_to_100(dump_72: dict[str, Any], dump_100: dict[str, Any]) -> None:
    report = compare_vmstate(dump_72, dump_100, src_name="7.2", dst_name="10.0")
    print(report.summary(max_lines=40))
    assert report.src_machine == report.dst_machine == "pc-q35-7.2"
    found = kinds(report)
    # QEMU 9.x dropped the esp/pdma subsection and added esp.drq_state.
    assert ("am53c974", "esp.{esp/pdma}", vmstate.SUBSECTION_MISSING_IN_DST) in found
    assert ("am53c974", "esp.drq_state", vmstate.FIELD_MISSING_IN_SRC) in found
    # sb16's irq/dma/hdma/port/ver became 20 unused bytes: not an error.
    assert ("sb16", "irq", vmstate.FIELD_RENAMED) in kinds(report, INFO)
    assert not report.ok
    # The devices of a plain q35 VM are compatible this way.
    used = compare_vmstate(dump_72, dump_100, sections=Q35_DEVICES,
                           src_name="7.2", dst_name="10.0")
    assert used.ok, used.summary()
    assert used.sections_compared == len(Q35_DEVICES)


def test_real_100_to_72(dump_72: dict[str, Any], dump_100: dict[str, Any]) -> None:
    report = compare_vmstate(dump_100, dump_72, src_name="10.0", dst_name="7.2")
    print(report.summary(max_lines=40))
    found = kinds(report, ERROR)
    # 10.0's i8259 may send an "i8259/ltim" subsection that 7.2 does not know.
    assert ("isa-i8259", "{i8259/ltim}", vmstate.SUBSECTION_MISSING_IN_DST) in found
    assert ("am53c974", "esp.drq_state", vmstate.FIELD_MISSING_IN_DST) in found
    assert not report.ok
    # For a plain q35 VM only that conditional i8259 subsection stands in the way
    # (it is sent only when the guest programmed level-triggered mode).
    used = compare_vmstate(dump_100, dump_72, sections=Q35_DEVICES,
                           src_name="10.0", dst_name="7.2")
    assert kinds(used, ERROR) == {("isa-i8259", "{i8259/ltim}",
                                   vmstate.SUBSECTION_MISSING_IN_DST)}
