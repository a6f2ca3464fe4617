"""The coverage classification, on the QOM types of real q35 and e2k machines."""
from __future__ import annotations

from harness.state.coverage import classify, summary_line

DUMP = {"vmschkmachine": {"Name": "pc-q35-7.2"},
        "isa-serial": {"Name": "isa-serial", "Description": {"name": "serial"}},
        "mc146818rtc": {"Name": "mc146818rtc", "Description": {"name": "mc146818rtc"}}}
DEVICES = {"isa-serial", "mc146818rtc", "apic", "ide-hd", "qemu64-x86_64-cpu", "e8c", "iohub",
           "mystery-dev"}
CPUS = {"qemu64-x86_64-cpu", "e8c"}


def test_x86_mapping_rules():
    nodes = {"/machine/unattached/device[0]": "qemu64-x86_64-cpu",
             "/machine/unattached/device[0]/lapic": "apic",
             "/machine/unattached/device[1]": "isa-serial",
             "/machine/unattached/device[2]": "mc146818rtc",
             "/machine/unattached/device[3]": "ide-hd",
             "/machine/unattached/device[4]": "memory-region",
             "/machine/q35/pcie.0": "PCIE"}
    rep = classify(nodes, DUMP, DEVICES, CPUS, "x86_64")
    assert {e["type"]: e["section"] for e in rep["covered"]}["isa-serial"] == "serial"
    assert {e["type"] for e in rep["covered"]} == {"qemu64-x86_64-cpu", "apic", "isa-serial",
                                                   "mc146818rtc"}
    assert [e["type"] for e in rep["not_covered_fine"]] == ["ide-hd"]
    assert rep["not_covered"] == []
    assert rep["other_objects"] == {"memory-region": 1, "PCIE": 1}
    assert summary_line(rep) == "4 of 5 devices have VMState, 1 need none"


def test_e2k_like_machine_names_what_is_missing():
    nodes = {"/machine/unattached/device[0]": "e8c",
             "/machine/unattached/device[0]/lapic": "apic",
             "/machine/unattached/device[1]": "iohub",
             "/machine/unattached/device[2]": "isa-serial",
             "/machine/unattached/device[3]": "mystery-dev"}
    rep = classify(nodes, DUMP, DEVICES, CPUS, "e2k")
    assert summary_line(rep) == ("1 of 5 devices have VMState; no VMState: e8c CPU, apic, "
                                 "iohub, mystery-dev")
