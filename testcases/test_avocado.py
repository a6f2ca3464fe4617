"""The matrix under real Avocado (harness/avocado/): ``avocado list`` and
``avocado run`` on a matrix file, through the plugins the package registers.

What Avocado users rely on: the tests are the cells ``mharness list`` lists,
with the same ids; ``--filter-by-tags`` and ``matrix.yaml:REGEX`` select them;
each cell's verdict (negative controls included) is its Avocado status in
results.json and xunit; the cell's logs are in the job's test-results folder;
``avocado jobs show`` and ``avocado replay`` work; ``--max-parallel-tasks``
stays within the harness's budget; Ctrl-C and a job timeout leave no QEMU.

Avocado's job data stays in a temporary folder (an Avocado config file given
with ``--config``): the tests never write to ``~/avocado``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from clihelp import ROOT, mharness
from harness.qemu.procfs import descendants, is_qemu, still_running
from harness.run.runner import Budget
from harness.waiting import poll_until_sync

#: A passing cell, a negative control (a destination with another UUID must
#: refuse the stream: converged must fail), the same fault without
#: expect-fail (a failing cell), and a cell whose build is missing (skipped).
MATRIX = """\
version: 1
defaults:
  timeout: 30
  capabilities: {{events: true}}
  parameters: {{max-bandwidth: 10G}}
builds:
  system:
    binary: /usr/bin/qemu-system-{{arch}}
    required: true
    version: "7.2"
  absent:
    binary: /nonexistent/qemu-system-{{arch}}
targets:
  q35:
    arch: x86_64
    machine: q35
    accel: tcg
    memory: 128M
    smp: {smp}
    build: system
    workload: {{kind: dirtier, base: 2M, region: 16M, warmup-passes: 3}}
  pc:
    arch: x86_64
    machine: pc
    accel: tcg
    memory: 128M
    build: system
    workload: {{kind: dirtier, base: 2M, region: 16M, warmup-passes: 3}}
transports: [unix, tcp]
capsets:
  precopy: {{}}
  validate-uuid: {{validate-uuid: true}}
paramsets:
  crawl: {{max-bandwidth: 1M}}
tiers:
  smoke:
    cells:
      - {{target: q35, transport: unix, capset: precopy}}
      - {{target: q35, transport: unix, capset: validate-uuid, fault: dst-uuid-differs,
         expect-fail: [converged], name: uuid-control}}
      - {{target: q35, transport: tcp, capset: validate-uuid, fault: dst-uuid-differs,
         name: uuid-unexpected}}
      - {{target: q35, transport: unix, capset: precopy, src-build: absent, dst-build: absent}}
  pair:
    cells:
      - {{target: q35, transport: unix, capset: precopy}}
      - {{target: q35, transport: tcp, capset: precopy}}
  # Does not converge within the job: for Ctrl-C and timeouts.
  crawl:
    cells:
      - {{target: q35, transport: unix, capset: precopy, paramset: crawl, timeout: 120}}
"""

#: cell id -> the Avocado status its verdict must become.
EXPECTED = {
    "q35-unix-precopy": "PASS",
    "uuid-control": "PASS",
    "uuid-unexpected": "FAIL",
    "q35-unix-precopy-absent": "SKIP",
}
#: What every cell that ran QEMU leaves in its test-results folder.
QEMU_LOGS = ("src.stderr", "dst.stderr", "src.serial.log", "dst.serial.log",
             "src.qmp.jsonl", "dst.qmp.jsonl")
CELL_LOGS = ("harness.log", "cell-result.json", "whiteboard", "stdout", "debug.log")


#: ``python -m avocado`` with Python's global ``random`` seeded by the first argument.
_SEEDED_AVOCADO = ("import random, runpy, sys; random.seed(int(sys.argv.pop(1))); "
                   "runpy.run_module('avocado', run_name='__main__', alter_sys=True)")


@dataclass
class Avocado:
    """The ``avocado`` command with its job data kept in ``base``."""

    base: Path
    config: Path

    def __call__(self, *args: str, cwd: Path, timeout: float = 600,
                 seed: int | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args, seed=seed), cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    def argv(self, *args: str, seed: int | None = None) -> list[str]:
        if seed is None:
            return [sys.executable, "-m", "avocado", "--config", str(self.config), *args]
        # Python's global random seeded first: see test_cells_from_cit_variants.
        return [sys.executable, "-c", _SEEDED_AVOCADO, str(seed), "--config", str(self.config),
                *args]

    def job_dir(self, job_id: str) -> Path:
        (found,) = (self.base / "job-results").glob(f"job-*-{job_id[:7]}")
        return found


def job_id_of(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("JOB ID"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no JOB ID in avocado's output:\n{out}")


@pytest.fixture(scope="module")
def avocado(tmp_path_factory: pytest.TempPathFactory) -> Avocado:
    if importlib.util.find_spec("avocado") is None:
        pytest.fail("Avocado is not installed: bash scripts/setup.sh (the 'avocado' extra)")
    base = tmp_path_factory.mktemp("avocado")
    # Avocado falls back to ~/avocado/tests when the configured test_dir is
    # not an existing folder (avocado.core.data_dir.get_test_dir).
    (base / "tests").mkdir()
    config = base / "avocado.conf"
    config.write_text("[datadir.paths]\n"
                      f"base_dir = {base}\n"
                      f"test_dir = {base / 'tests'}\n"
                      f"data_dir = {base / 'data'}\n"
                      f"logs_dir = {base / 'job-results'}\n")
    return Avocado(base, config)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the test matrix (relative references, as users type them)."""
    path = tmp_path_factory.mktemp("matrix")
    (path / "matrix.yaml").write_text(MATRIX.format(smp=1))
    return path


def mharness_ids(*args: str, cwd: Path) -> list[str]:
    out = mharness("list", "--json", *args, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return [c["id"] for c in json.loads(out.stdout)["cells"]]


def avocado_ids(avocado: Avocado, *args: str, cwd: Path) -> list[str]:
    listing = avocado.base / f"list-{time.monotonic_ns()}.json"
    out = avocado("list", "--json", str(listing), *args, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    tests = json.loads(listing.read_text())
    assert {t["Type"] for t in tests} <= {"mharness-cell"}, tests
    return [t["Test"] for t in tests]


# --- listing -----------------------------------------------------------------------------


def test_plugins_are_registered(avocado, workdir):
    out = avocado("plugins", cwd=workdir)
    assert out.returncode == 0, out.stderr
    for name in ("mharness-matrix", "mharness-cell"):
        assert name in out.stdout, out.stdout
    assert "Error" not in out.stderr, out.stderr


def test_list_is_mharness_list(avocado, workdir):
    ids = avocado_ids(avocado, "matrix.yaml", cwd=workdir)
    assert ids == mharness_ids("--matrix", "matrix.yaml", cwd=workdir) == list(EXPECTED)


def test_list_of_the_project_matrix_smoke_tier(avocado):
    ids = avocado_ids(avocado, "matrix.yaml", cwd=ROOT)
    assert ids == mharness_ids("--tier", "smoke", cwd=ROOT)
    assert ids


def test_tier_option_is_mharness_tier(avocado, workdir):
    ids = avocado_ids(avocado, "--mharness-tier", "pair", "matrix.yaml", cwd=workdir)
    assert ids == mharness_ids("--matrix", "matrix.yaml", "--tier", "pair", cwd=workdir)
    assert ids == ["q35-unix-precopy", "q35-tcp-precopy"]


def test_tags_and_name_filters(avocado, workdir):
    assert avocado_ids(avocado, "-t", "transport:tcp", "matrix.yaml", cwd=workdir) == \
        ["uuid-unexpected"]
    assert avocado_ids(avocado, "-t", "negative-control", "matrix.yaml", cwd=workdir) == \
        ["uuid-control"]
    assert avocado_ids(avocado, "-t", "build:absent", "matrix.yaml", cwd=workdir) == \
        ["q35-unix-precopy-absent"]
    assert avocado_ids(avocado, "-t", "accel:tcg,transport:unix,cap:-validate-uuid",
                       "matrix.yaml", cwd=workdir) == ["q35-unix-precopy", "q35-unix-precopy-absent"]
    # Avocado's test-name filter for a file with several tests: FILE:REGEX.
    assert avocado_ids(avocado, "matrix.yaml:^uuid-", cwd=workdir) == \
        ["uuid-control", "uuid-unexpected"]


def test_a_broken_matrix_says_where(avocado, tmp_path):
    (tmp_path / "bad.yaml").write_text(MATRIX.format(smp=1).replace("capset: precopy}",
                                                                    "capset: precopi}", 1))
    out = avocado("list", "bad.yaml", cwd=tmp_path)
    assert "mharness-cell" not in out.stdout
    assert "bad.yaml:" in out.stdout + out.stderr and "precopi" in out.stdout + out.stderr, \
        out.stdout + out.stderr


# --- running -----------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    dir: Path
    returncode: int
    out: str

    def results(self) -> dict[str, Any]:
        return json.loads((self.dir / "results.json").read_text())

    def tests(self) -> dict[str, dict[str, Any]]:
        """results.json's tests by name (the cell id; their ``id`` has the
        test's index in front, and the suite's too in a replayed job)."""
        return {t["name"]: t for t in self.results()["tests"]}

    def statuses(self) -> dict[str, str]:
        return {name: t["status"] for name, t in self.tests().items()}

    def test_dir(self, cell_id: str) -> Path:
        (found,) = (self.dir / "test-results").glob(f"*-{cell_id}")
        return found


def job_of(avocado: Avocado, out: subprocess.CompletedProcess[str]) -> Job:
    """The job an ``avocado run`` or ``avocado replay`` made (its id from its output)."""
    text = out.stdout + out.stderr
    job_id = job_id_of(text)
    return Job(job_id, avocado.job_dir(job_id), out.returncode, text)


def run_job(avocado: Avocado, *args: str, cwd: Path, seed: int | None = None) -> Job:
    return job_of(avocado, avocado("run", *args, cwd=cwd, seed=seed))


@pytest.fixture(scope="module")
def smoke_job(avocado, workdir) -> Job:
    return run_job(avocado, "--max-parallel-tasks", "2", "matrix.yaml", cwd=workdir)


def test_verdicts_are_avocado_statuses(smoke_job):
    assert smoke_job.statuses() == EXPECTED, smoke_job.out
    assert smoke_job.returncode == 1, smoke_job.out   # AVOCADO_TESTS_FAIL
    tests = smoke_job.tests()
    assert "UUID" in tests["uuid-unexpected"]["fail_reason"]
    assert "unavailable" in tests["q35-unix-precopy-absent"]["fail_reason"]
    assert tests["uuid-control"]["tags"]["negative-control"] is None


def test_xunit(smoke_job):
    suite = ET.parse(smoke_job.dir / "results.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"),
            suite.get("errors")) == ("4", "1", "1", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == set(EXPECTED)
    assert cases["uuid-unexpected"].find("failure").get("type") == "converged"
    assert cases["q35-unix-precopy-absent"].find("skipped") is not None
    assert cases["uuid-control"].find("failure") is None
    assert {c.get("classname") for c in cases.values()} == {"mharness.smoke"}


def test_checks_and_figures_in_output_and_whiteboard(smoke_job):
    tests = smoke_job.tests()
    board = json.loads(tests["q35-unix-precopy"]["whiteboard"])
    assert board["verdict"] == "passed"
    assert {"converged", "ram", "guest", "liveness", "downtime"} <= {c["name"] for c in board["checks"]}
    assert board["figures"]["downtime_ms"] >= 0
    control = json.loads(tests["uuid-control"]["whiteboard"])
    (converged,) = [c for c in control["checks"] if c["name"] == "converged"]
    assert converged["expected_to_fail"] and not converged["passed"]
    out = (smoke_job.test_dir("q35-unix-precopy") / "stdout").read_text()
    assert "ram" in out and "downtime_ms=" in out


def test_logs_are_in_the_job_folder(smoke_job):
    for cell_id, status in EXPECTED.items():
        folder = smoke_job.test_dir(cell_id)
        wanted = CELL_LOGS + (QEMU_LOGS if status != "SKIP" else ())
        missing = [name for name in wanted if not (folder / name).is_file()]
        assert not missing, f"{cell_id}: {missing} missing in {folder}"
        fragment = json.loads((folder / "cell-result.json").read_text())
        assert fragment["id"] == cell_id
        assert fragment["logdir"] == str(folder)
    transcript = (smoke_job.test_dir("q35-unix-precopy") / "src.qmp.jsonl").read_text()
    assert "migrate" in transcript
    assert "uuid-unexpected" in (smoke_job.test_dir("uuid-unexpected") / "harness.log").read_text()


def test_avocado_outputs(avocado, smoke_job, workdir):
    assert (smoke_job.dir / "results.html").is_file()
    shown = avocado("jobs", "show", smoke_job.id, cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    for cell_id, status in EXPECTED.items():
        assert any(cell_id in line and status in line for line in shown.stdout.splitlines()), \
            shown.stdout


def test_replay_of_the_failed_job(avocado, smoke_job, workdir):
    """``avocado replay JOB`` runs the job again from its saved configuration
    (references, ``--mharness-*`` settings): the same cells, the same verdicts."""
    replayed = job_of(avocado, avocado("replay", smoke_job.id, cwd=workdir))
    assert replayed.id != smoke_job.id
    assert replayed.statuses() == EXPECTED, replayed.out
    assert replayed.returncode == 1


def test_parallel_tasks_stay_within_the_budget(avocado, tmp_path):
    """Each cell needs every core of the machine: with two parallel tasks
    allowed, Avocado starts both, but their shares never overlap."""
    cores = int(Budget.of_this_machine().cpus)
    if cores > 16:
        pytest.skip(f"{cores} cores: a TCG guest with one vCPU per core is too big a test")
    (tmp_path / "matrix.yaml").write_text(MATRIX.format(smp=cores))
    job = run_job(avocado, "--max-parallel-tasks", "2", "--mharness-tier", "pair",
                  "matrix.yaml", cwd=tmp_path)
    assert job.statuses() == {"q35-unix-precopy": "PASS", "q35-tcp-precopy": "PASS"}, job.out
    holds = sorted((b["taken_at"], b["released_at"], b["beside"]) for b in (
        json.loads(t["whiteboard"])["budget"] for t in job.results()["tests"]))
    (first_start, first_end, first_beside), (second_start, _, second_beside) = holds
    assert first_beside == second_beside == []
    assert second_start >= first_end, holds


def test_cells_from_cit_variants(avocado, workdir):
    """Avocado's CIT varianter as the source of combinations: each variant
    declares a cell by the matrix's names, made by the matrix's expansion."""
    (workdir / "cells.cit").write_text("PARAMETERS\n"
                                       "target [q35, pc]\n"
                                       "transport [unix, tcp]\n"
                                       "capset [precopy, validate-uuid]\n")
    # The CIT plugin draws from Python's global random without a seed and now
    # and then crashes on its own (avocado_varianter_cit/Cit.py
    # change_one_value: randrange over an empty range; seen 1 in 3 runs of the
    # flake hunt).  This test is about the harness's side of the variants, so
    # the generator is seeded: the same variants every run.
    job = run_job(avocado, "--max-parallel-tasks", "2", "--mharness-cells-from-variants",
                  "--cit-parameter-file", "cells.cit", "matrix.yaml", cwd=workdir, seed=7)
    tests = job.results()["tests"]
    assert len(tests) >= 4 and {t["status"] for t in tests} == {"PASS"}, job.out
    pairs = set()
    for t in tests:
        cell = json.loads(t["whiteboard"])["cell"]
        target, transport, capset = cell.split("-", 2)
        # CIT names a variant by its values: the cell id the matrix gives them.
        assert t["id"].endswith(f"matrix.yaml;{cell}"), (t["id"], cell)
        assert target in ("q35", "pc") and transport in ("unix", "tcp")
        assert capset in ("precopy", "validate-uuid")
        pairs |= {("target", target, "transport", transport),
                  ("target", target, "capset", capset),
                  ("transport", transport, "capset", capset)}
    assert len(pairs) == 12, pairs   # every pair of values: a 2-way covering array


def test_parameters_on_tier_cells_are_refused(avocado, workdir):
    """A tier's cell is wholly defined by the matrix: Avocado parameters
    would only run it again, so they are an error that says what to use."""
    job = run_job(avocado, "-p", "transport=tcp", "matrix.yaml:^q35-unix-precopy$", cwd=workdir)
    (test,) = job.results()["tests"]
    assert test["status"] == "ERROR"
    assert "--mharness-cells-from-variants" in test["fail_reason"]


def _qemus_of(proc: subprocess.Popen[bytes]) -> set[int]:
    return {p for p in descendants(proc.pid) if is_qemu(p)}


@pytest.mark.parametrize("how", ["ctrl-c", "job-timeout"])
def test_no_qemu_outlives_the_job(avocado, workdir, how):
    extra = ["--job-timeout", "25"] if how == "job-timeout" else []
    proc = subprocess.Popen(avocado.argv("run", *extra, "--mharness-tier", "crawl", "matrix.yaml"),
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and len(seen) < 2:
            seen |= _qemus_of(proc)
            time.sleep(0.05)
        assert len(seen) >= 2, "the cell never started its two QEMUs"
        if how == "ctrl-c":
            time.sleep(1.0)   # into the migration
            os.killpg(proc.pid, signal.SIGINT)   # what the terminal does on Ctrl-C
        else:
            # Avocado's own timeout: SIGTERM to the task, SIGKILL a second later.
            while proc.poll() is None and time.monotonic() < deadline + 60:
                seen |= _qemus_of(proc)
                time.sleep(0.05)
        out = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 8, out   # AVOCADO_JOB_INTERRUPTED
    assert "INTERRUPT" in out
    assert not still_running(seen, timeout=10), f"QEMUs {seen} outlived the job:\n{out}"


# --- the budget pool, without QEMU ----------------------------------------------------


def test_budget_pool_waits_in_order_and_frees_dead_holders(tmp_path):
    from harness.avocado.budget import BudgetPool

    pool = BudgetPool(tmp_path / "ledger.json", measure=lambda: Budget(2.0, 1000), interval=0.01)
    taken: list[str] = []

    def take(label: str, cpus: float, release: threading.Event) -> None:
        with pool.hold_share(cpus, 100, label):
            taken.append(label)
            release.wait(10)

    release = {name: threading.Event() for name in ("a", "big", "small")}
    a = threading.Thread(target=take, args=("a", 1.0, release["a"]))
    a.start()
    _wait_for(lambda: taken == ["a"])
    big = threading.Thread(target=take, args=("big", 2.0, release["big"]))
    big.start()
    _wait_for(lambda: len(pool.snapshot().queue) == 1)
    # It would fit beside "a", but "big" came first: it waits its turn.
    small = threading.Thread(target=take, args=("small", 1.0, release["small"]))
    small.start()
    _wait_for(lambda: len(pool.snapshot().queue) == 2)
    time.sleep(0.2)
    assert taken == ["a"]
    release["a"].set()
    _wait_for(lambda: taken == ["a", "big"])
    time.sleep(0.2)
    assert taken == ["a", "big"]   # "small" does not fit beside "big"
    release["big"].set()
    _wait_for(lambda: taken == ["a", "big", "small"])
    release["small"].set()
    for t in (a, big, small):
        t.join(10)
    assert pool.snapshot().holders == [] and pool.snapshot().queue == []

    # A task killed with SIGKILL cannot give its share back: it is dropped.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from harness.avocado.budget import BudgetPool\n"
        "from harness.run.runner import Budget\n"
        f"pool = BudgetPool(__import__('pathlib').Path({str(tmp_path / 'ledger.json')!r}),\n"
        "                  measure=lambda: Budget(2.0, 1000))\n"
        "with pool.hold_share(2.0, 100, 'doomed'):\n"
        "    print('held', flush=True); time.sleep(60)\n")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert [e.cell for e in pool.snapshot().holders] == ["doomed"]
        holder.kill()
        holder.wait()
        with pool.hold_share(2.0, 100, "next"):
            assert [e.cell for e in pool.snapshot().holders] == ["next"]
    finally:
        holder.kill()


def test_a_share_larger_than_the_budget_runs_alone(tmp_path):
    from harness.avocado.budget import BudgetPool

    pool = BudgetPool(tmp_path / "ledger.json", measure=lambda: Budget(1.0, 100), interval=0.01)
    with pool.hold_share(4.0, 10_000, "huge") as held:
        assert held.beside == () and held.budget == Budget(1.0, 100)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    poll_until_sync(condition, bool, timeout=timeout, what="the pool's state")
