"""results.json and JUnit XML for a run.

results.json is rewritten after every cell, atomically, so an interrupted or
crashed run still leaves a readable file with every finished cell in it.
"""
from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness import __version__
from harness.fileio import write_atomic
from harness.results import ERROR, FAILED, FLAKY, SKIPPED, CellResult, RunState

SCHEMA = "mharness-results/1"


def write_results_json(state: "RunState") -> Path:
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "harness_version": __version__,
        "host": {"node": platform.node(), "machine": platform.machine(),
                 "python": platform.python_version()},
        "run": getattr(state, "meta", {}),
        "total_cells": state.total,
        "interrupted": state.interrupted,
        "counts": state.counts(),
        "cells": [r.to_json() for r in state.results],
    }
    path = state.results_dir / "results.json"
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
    return path


def read_results_json(path: Path) -> list[CellResult]:
    data = json.loads(path.read_text())
    return [CellResult.from_json(c) for c in data["cells"]]


def write_junit(state: "RunState") -> Path:
    suite = ET.Element("testsuite", name="mharness", tests=str(len(state.results)))
    counts = state.counts()
    suite.set("failures", str(counts.get(FAILED, 0)))
    suite.set("errors", str(counts.get(ERROR, 0)))
    suite.set("skipped", str(counts.get(SKIPPED, 0)))
    if counts.get(FLAKY):
        suite.set("flaky", str(counts[FLAKY]))
    for r in state.results:
        case = ET.SubElement(suite, "testcase", classname="mharness.cells", name=r.id,
                             time=f"{r.duration:.3f}")
        if r.verdict == FAILED:
            ET.SubElement(case, "failure", message=r.reason).text = _details(r)
        elif r.verdict == ERROR:
            ET.SubElement(case, "error", message=r.reason).text = _details(r)
        elif r.verdict == SKIPPED:
            ET.SubElement(case, "skipped", message=r.reason)
        elif r.verdict == FLAKY:
            # JUnit has no flaky state: a passing case marked with a property
            # (and the reason in system-err) so dashboards can still pick it out.
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="flaky", value="true")
            ET.SubElement(case, "system-err").text = f"flaky: {r.reason}"
        ET.SubElement(case, "system-out").text = json.dumps(r.figures, default=str)
    path = state.results_dir / "junit.xml"
    write_atomic(path, ET.tostring(suite, encoding="unicode") + "\n")
    return path


def _details(r: CellResult) -> str:
    lines = [f"{c.name}: {'ok' if c.as_expected else 'WRONG'} - {c.summary}" for c in r.checks]
    if r.logdir:
        lines.append(f"logs: {r.logdir}")
    return "\n".join(lines)
