"""``pytest testcases`` leaves what ``mharness run`` leaves: report.html in
its results folder and a history run (entry ``pytest``) for the cells it ran."""
from __future__ import annotations

from clihelp import MATRIX_HEAD, ROOT, run_pytest, write_matrix
from harness.report.history import History

MATRIX = MATRIX_HEAD + """\
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
    matrix = write_matrix(tmp_path, MATRIX)
    out = run_pytest(str(ROOT / "testcases" / "test_cells.py"), "--matrix", str(matrix),
                     "--tier", "good", "--mh-results", str(tmp_path / "r"),
                     "--mh-history", str(tmp_path / "h.sqlite"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"mharness report: {tmp_path / 'r' / 'report.html'}" in out.stdout
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="c-t-unix-plain"' in page
    with History(tmp_path / "h.sqlite", create=False) as h:
        runs = h.runs()
        assert [(r.tier, r.entry, r.counts) for r in runs] == [("good", "pytest", {"passed": 1})]
        assert [c.cell_id for c in h.cells([runs[0].id])] == ["t-unix-plain"]
