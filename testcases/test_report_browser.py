"""report.html in a real browser: Debian's chromium driven by Playwright for
Python (no browser download: ``executable_path`` is the Debian binary).

The report comes from a real ``mharness run`` of three cells: one that
passes, one that fails (precopy that cannot converge at 128 MiB/s with a
10 ms downtime-limit within 3 s: many ``query-migrate`` samples to plot) and
one that is skipped (its build is missing).  Without chromium or Playwright
the tests FAIL: CI installs both
(scripts/setup.sh), and a report nobody could open in a browser is not a
passing report.
"""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from clihelp import MATRIX_HEAD, mharness, write_matrix

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]

MATRIX = MATRIX_HEAD + """\
  absent: {binary: /nonexistent/qemu-system-x86_64}
targets:
  small: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 128M,
          workload: {kind: dirtier, base: 2M, region: 16M}}
  busy: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 256M,
         workload: {kind: dirtier, base: 2M, region: 100M, warmup-passes: 3}}
  gone: {arch: x86_64, machine: q35, accel: tcg, build: absent, memory: 128M,
         workload: {kind: dirtier, base: 2M, region: 16M}}
transports: [unix]
capsets:
  plain: {}
paramsets:
  slow: {max-bandwidth: 128M, downtime-limit: 10}
tiers:
  report:
    cells:
      - {target: small, transport: unix, capset: plain}
      - {target: busy, transport: unix, capset: plain, paramset: slow, timeout: 3}
      - {target: gone, transport: unix, capset: plain}
"""
PASSING, FAILING, SKIPPED = "small-unix-plain", "busy-unix-plain-slow", "gone-unix-plain"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's results folder (history in the same temporary folder)."""
    tmp = tmp_path_factory.mktemp("report")
    out = mharness("run", "--matrix", str(write_matrix(tmp, MATRIX)), "--tier", "report",
                   "--results", str(tmp / "r"), "--history", str(tmp / "history.sqlite"))
    assert out.returncode == 1, out.stdout + out.stderr   # one cell failed
    assert f"report: {tmp / 'r' / 'report.html'}" in out.stdout
    verdicts = {c["id"]: c["verdict"]
                for c in json.loads((tmp / "r" / "results.json").read_text())["cells"]}
    assert verdicts == {PASSING: "passed", FAILING: "failed", SKIPPED: "skipped"}, out.stdout
    return tmp / "r"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is not installed ({CHROMIUM}): bash scripts/setup.sh "
                    "installs it (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, report: Path) -> Iterator[tuple[Any, list[str]]]:
    """The report opened from disk; the list collects console errors and
    uncaught exceptions (every test ends by asserting it is empty)."""
    errors: list[str] = []
    pg = browser.new_page(viewport={"width": 1300, "height": 1000})
    pg.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
          if m.type in ("error", "assert") else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    pg.goto((report / "report.html").as_uri())
    pg.wait_for_selector("body[data-ready]", timeout=30000)
    yield pg, errors
    pg.close()


def test_grid_has_every_cell_coloured_by_its_verdict(page):
    pg, errors = page
    squares = pg.locator("table.grid a.sq")
    assert squares.count() == 3
    by_id = {a.get_attribute("href"): a.get_attribute("class") for a in squares.all()}
    assert "v-passed" in by_id[f"#c-{PASSING}"]
    assert "v-failed" in by_id[f"#c-{FAILING}"]
    assert "v-skipped" in by_id[f"#c-{SKIPPED}"]
    colours = {a.get_attribute("href"): a.evaluate("e => getComputedStyle(e).backgroundColor")
               for a in squares.all()}
    assert len(set(colours.values())) == 3, colours
    assert pg.locator("table.grid th.row").count() == 3   # one row per target
    assert "1 passed" in pg.inner_text(".counts") and "1 failed" in pg.inner_text(".counts")
    assert FAILING in pg.inner_text("#failures")
    assert errors == []


def test_opening_a_failing_cell_draws_its_progress_plot(page, report):
    pg, errors = page
    pg.click(f'table.grid a.sq[href="#c-{FAILING}"]')
    section = pg.locator(f"[id='c-{FAILING}']")
    section.locator(".plot .main-svg").first.wait_for(timeout=30000)
    assert section.evaluate("e => e.open")
    # remaining, transferred and dirty rate, each with its sampled points
    assert section.locator(".plot .scatterlayer .trace").count() >= 3
    assert section.locator(".plot .scatterlayer .trace path.point").count() >= 10
    line = section.locator(".plot .scatterlayer .trace path.js-line").first.get_attribute("d")
    assert line and line.count("L") >= 5
    assert section.locator(".plot .shapelayer path").count() >= 1   # iteration markers
    text = section.inner_text()
    assert "did not complete within 3 s" in text and "FAILED" in text
    # The kept logs are links relative to the results folder, to files that exist.
    hrefs = [a.get_attribute("href") for a in section.locator(".body ul a").all()]
    assert f"cells/{FAILING}/src.stderr" in hrefs and f"cells/{FAILING}/dst.qmp.jsonl" in hrefs
    for href in hrefs:
        assert (report / urllib.parse.unquote(href)).is_file(), href
    # The trend from history (this run is the only one in it).
    section.locator(".trend .main-svg").first.wait_for(timeout=10000)
    assert errors == []


def test_a_passing_cell_shows_checks_downtime_and_plot(page):
    pg, errors = page
    pg.evaluate(f"location.hash = '#c-{PASSING}'")
    section = pg.locator(f"[id='c-{PASSING}']")
    section.locator(".plot .main-svg").first.wait_for(timeout=30000)
    checks = section.locator(".body table").first.inner_text()
    for name in ("converged", "ram", "guest", "liveness", "downtime"):
        assert name in checks
    assert section.locator(".dtbar .dtrow").count() == 2   # QEMU's downtime, the guest's gap
    assert "limit 300 ms" in section.locator(".dtbar").inner_text()
    assert errors == []


def test_filters_hide_cells(page):
    pg, errors = page
    pg.uncheck('#filters input[value="passed"]')
    assert "off" in (pg.get_attribute(f'a.sq[href="#c-{PASSING}"]', "class") or "")
    assert pg.locator(f"[id='c-{PASSING}']").is_hidden()
    assert pg.locator(f"[id='c-{FAILING}']").is_visible()
    pg.check('#filters input[value="passed"]')
    pg.fill("#q", "gone")
    assert pg.locator(f"[id='c-{SKIPPED}']").is_visible()
    assert pg.locator(f"[id='c-{FAILING}']").is_hidden()
    pg.fill("#q", "-gone")
    assert pg.locator(f"[id='c-{SKIPPED}']").is_hidden()
    assert "2 of 3 cells shown" in pg.inner_text("#shown")
    assert errors == []


def test_the_run_is_in_the_history(report):
    from harness.report.history import History

    with History(report.parent / "history.sqlite", create=False) as h:
        runs = h.runs("report")
        assert len(runs) == 1 and runs[0].counts == {"passed": 1, "failed": 1, "skipped": 1}
        assert runs[0].builds["system"]["version"].startswith("7.2")
        cells = {c.cell_id: c for c in h.cells([runs[0].id])}
        assert cells[PASSING].downtime_ms is not None and cells[PASSING].downtime_ms > 0
