"""``pytest testcases`` leaves what ``mharness run`` leaves: report.html in
its results folder and a history run (entry ``pytest``) for the cells it ran."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.report.history import History

ROOT = Path(__file__).resolve().parent.parent

MATRIX = """\
version: 1
defaults:
  parameters: {max-bandwidth: 10G}
builds:
  system: {binary: /usr/bin/qemu-system-x86_64, required: true}
targets:
  t: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 128M,
      workload: {kind: dirtier, base: 2M, region: 16M}}
transports: [unix]
capsets:
  plain: {}
tiers:
  good:
    cells: [{target: t, transport: unix, capset: plain}]
"""


def test_a_pytest_session_writes_report_and_history(tmp_path):
    (tmp_path / "m.yaml").write_text(MATRIX)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "testcases" / "test_cells.py"), "--matrix",
                          str(tmp_path / "m.yaml"), "--tier", "good", "--mh-results",
                          str(tmp_path / "r"), "--mh-history", str(tmp_path / "h.sqlite")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"mharness report: {tmp_path / 'r' / 'report.html'}" in out.stdout
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="c-t-unix-plain"' in page
    with History(tmp_path / "h.sqlite", create=False) as h:
        runs = h.runs()
        assert [(r.tier, r.entry, r.counts) for r in runs] == [("good", "pytest", {"passed": 1})]
        assert [c.cell_id for c in h.cells([runs[0].id])] == ["t-unix-plain"]
