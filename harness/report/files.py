"""results.json, its summary and JUnit XML for a run.

results.json is rewritten after every cell, atomically, so an interrupted or
crashed run still leaves a readable file with every finished cell in it.
summary.json beside it holds each cell's verdict and headline figures only:
``mharness compare`` reads two 2,000-cell runs from it in milliseconds, where
parsing two full results.json (tens of MB with every check's figures) takes
about a second.
"""
from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness import __version__
from harness.fileio import write_atomic
from harness.report.figures import key_figures
from harness.results import ERROR, FAILED, FLAKY, KNOWN_FAILURE, SKIPPED, CellResult, RunState

SCHEMA = "mharness-results/1"
SUMMARY_SCHEMA = "mharness-summary/1"
#: The columns of a summary.json cell row.
SUMMARY_COLUMNS = ("id", "verdict", "reason", "downtime_ms", "total_time_ms",
                   "transferred_bytes")


#: Each recorded cell's text in results.json, made once: the file is rewritten
#: after every cell, and serialising every cell again each time made a
#: 2,000-cell run spend hours of CPU in json.dumps (about 25 KB a cell; the
#: whole file of 2,000 cells took 3-7 CPU seconds to serialise, 2,000 times).
#: Keyed by the object's id, checked against the object itself and the fields
#: a late change would touch.  Its summary.json row is made with it, for the
#: same reason (the headline figures are looked up in the checks).
_cell_text: dict[int, tuple[CellResult, tuple[Any, ...], str, list[Any]]] = {}


def _cell_entry(r: CellResult) -> tuple[CellResult, tuple[Any, ...], str, list[Any]]:
    """The cell's cache entry: its text as ``json.dumps(..., indent=2)`` writes
    it inside "cells", and its summary.json row."""
    mark = (r.id, str(r.verdict), r.reason, r.duration, r.logdir, len(r.checks),
            len(r.figures), len(r.phases))
    hit = _cell_text.get(id(r))
    if hit is not None and hit[0] is r and hit[1] == mark:
        return hit
    text = "\n".join("    " + line
                     for line in json.dumps(r.to_json(), indent=2, default=str).splitlines())
    k = key_figures(r)
    row = [r.id, str(r.verdict), r.reason, k.downtime_ms, k.total_time_ms, k.transferred_bytes]
    entry = _cell_text[id(r)] = (r, mark, text, row)
    return entry


def write_results_json(state: "RunState") -> Path:
    """results.json, byte for byte what ``json.dumps(data, indent=2)`` of the
    whole run gives, from each cell's text made once."""
    head: dict[str, Any] = {
        "schema": SCHEMA,
        "harness_version": __version__,
        "host": {"node": platform.node(), "machine": platform.machine(),
                 "python": platform.python_version()},
        "run": state.meta,
        "total_cells": state.total,
        "interrupted": state.interrupted,
        "counts": state.counts(),
    }
    entries = [_cell_entry(r) for r in state.results]
    live = {id(r) for r in state.results}
    for key in [k for k in _cell_text if k not in live]:
        del _cell_text[key]
    cells = [e[2] for e in entries]
    body = '  "cells": [\n' + ",\n".join(cells) + "\n  ]" if cells else '  "cells": []'
    text = json.dumps(head, indent=2, default=str)[:-2] + ",\n" + body + "\n}\n"
    path = state.results_dir / "results.json"
    write_atomic(path, text)
    _write_summary_json(state, [e[3] for e in entries])
    return path


def _write_summary_json(state: "RunState", rows: list[list[Any]]) -> Path:
    """summary.json (``SUMMARY_COLUMNS`` per cell): written after results.json,
    so a reader can trust it when it is not older than results.json."""
    data = {"schema": SUMMARY_SCHEMA, "results_schema": SCHEMA,
            "run": state.meta, "total_cells": state.total,
            "interrupted": state.interrupted, "counts": state.counts(),
            "columns": list(SUMMARY_COLUMNS), "cells": rows}
    path = state.results_dir / "summary.json"
    write_atomic(path, json.dumps(data, separators=(",", ":"), default=str) + "\n")
    return path


def read_results_json(path: Path) -> list[CellResult]:
    data = json.loads(path.read_text())
    return [CellResult.from_json(c) for c in data["cells"]]


def write_junit(state: "RunState") -> Path:
    suite = ET.Element("testsuite", name="mharness", tests=str(len(state.results)))
    counts = state.counts()
    suite.set("failures", str(counts.get(FAILED, 0)))
    suite.set("errors", str(counts.get(ERROR, 0)))
    suite.set("skipped", str(counts.get(SKIPPED, 0) + counts.get(KNOWN_FAILURE, 0)))
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
        elif r.verdict == KNOWN_FAILURE:
            # JUnit has no known-failure state.  Skipped-with-message is what
            # dashboards (Jenkins, GitLab, GitHub reporters) show as neither
            # green nor red, with the message beside it (pytest writes its
            # xfail the same way); the known-issue ids ride as a property.
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="known-issue", value=",".join(
                k["id"] for k in r.known_issues if k.get("reproduced")))
            ET.SubElement(case, "skipped", type="known-failure",
                          message=f"known failure: {r.reason}").text = _details(r)
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
    lines = [f"{c.name}: {'ok' if c.as_expected else 'WRONG'} - {c.summary}"
             + (f" [known issue {c.known_issue}]" if c.known_issue else "")
             for c in r.checks]
    if r.logdir:
        lines.append(f"logs: {r.logdir}")
    return "\n".join(lines)
