"""The CI recipes in ci-recipes/ do what their README section says, for real.

Each recipe is loaded with PyYAML, and its shard job is run N times the way
the CI engine runs it: GitLab's ``parallel: N`` as jobs with CI_NODE_INDEX =
1..N and CI_NODE_TOTAL = N in the environment; GitHub Actions' matrix as one
job per ``shard`` value with ``${{ matrix.shard }}`` and
``${{ strategy.job-total }}`` substituted into the step before the shell sees
it.  Every job runs in a workspace of its own; its artifacts are carried to
the merge job's workspace as the engine carries them (GitLab: the paths as
they are, extracted into the merge job's checkout; upload-artifact v4 /
download-artifact v4: a directory's contents under ``PATH/<artifact name>/``).
Then the merge job's command runs, and the merged results.json must hold every
cell of the tier exactly once.

What is not run: the set-up lines (scripts/setup.sh installs packages; this
machine has them) and the actions themselves (checkout, upload/download,
emulated as above).  The tier is the recipes' own variable, overridden as a
CI user would (a CI/CD variable): a small TCG tier of six cells.
"""
from __future__ import annotations

import collections
import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from clihelp import MATRIX_HEAD, ROOT, mharness, write_matrix

RECIPES = ROOT / "ci-recipes"

MATRIX = MATRIX_HEAD + """\
targets:
  q35: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 128M,
        workload: {kind: dirtier, base: 2M, region: 16M}}
  pc: {arch: x86_64, machine: pc, accel: tcg, build: system, memory: 128M,
       workload: {kind: dirtier, base: 2M, region: 16M}}
  small: {arch: x86_64, machine: q35, accel: tcg, build: system, memory: 64M,
          workload: {kind: dirtier, base: 2M, region: 8M}}
transports: [unix, tcp]
capsets:
  precopy: {}
tiers:
  ci:
    product: {target: [q35, pc, small], transport: [unix, tcp], capset: [precopy]}
"""


@pytest.fixture
def setting(tmp_path: Path) -> dict[str, str]:
    """The environment every CI job gets here: ``mharness`` on PATH (this
    checkout's), and the recipe's matrix and tier variables pointed at the
    small matrix, as a CI/CD variable of the project would."""
    matrix = write_matrix(tmp_path, MATRIX)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "mharness"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m harness \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "MHARNESS_MATRIX": str(matrix), "MHARNESS_TIER": "ci"}


def _tier_ids(env: dict[str, str]) -> list[str]:
    out = mharness("list", "--matrix", env["MHARNESS_MATRIX"], "--tier", "ci", "--json")
    assert out.returncode == 0, out.stderr
    return [c["id"] for c in json.loads(out.stdout)["cells"]]


def _shell(lines: list[str] | str, cwd: Path, env: dict[str, str]) -> None:
    """Run a job's script as the engine's shell does: one bash, stop at the
    first failing line."""
    script = "\n".join(lines) if isinstance(lines, list) else lines
    p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{script}\n-> exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-3000:]}"


def _check_merged(folder: Path, ids: list[str], shards: list[Path]) -> None:
    per_shard = [[c["id"] for c in json.loads((d / "results.json").read_text())["cells"]]
                 for d in shards]
    assert all(per_shard), f"a shard ran no cell: {per_shard}"
    assert sorted(sum(per_shard, [])) == sorted(ids), "shards are not a partition of the tier"
    data = json.loads((folder / "results.json").read_text())
    counts = collections.Counter(c["id"] for c in data["cells"])
    assert counts == collections.Counter(ids), counts   # every cell exactly once
    assert {c["verdict"] for c in data["cells"]} == {"passed"}, data["cells"]
    assert (folder / "junit.xml").is_file() and (folder / "report.html").is_file()


# -- GitLab CI ------------------------------------------------------------------

_GITLAB_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _gitlab_expand(text: str, env: dict[str, str]) -> str:
    """$VAR / ${VAR} in an artifacts path, as GitLab expands job variables."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, f"artifacts path uses ${name}, not a job variable"
        return env[name]
    return _GITLAB_VAR.sub(one, text)


def test_gitlab_parallel_shards_then_merge(tmp_path: Path, setting: dict[str, str]) -> None:
    doc = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())
    shard, merge = doc["mharness-shard"], doc["mharness-merge"]
    n = shard["parallel"]
    assert isinstance(n, int) and n >= 2
    assert [s for s in doc["stages"]].index(shard["stage"]) < doc["stages"].index(merge["stage"])
    needs = [j["job"] if isinstance(j, dict) else j for j in merge["needs"]]
    assert needs == ["mharness-shard"] and merge["when"] == "always"
    assert shard["artifacts"]["when"] == "always"
    variables = {k: str(v) for k, v in doc["variables"].items()}
    ids = _tier_ids(setting)
    assert len(ids) > n, "more cells than shards, or some shard would run nothing"

    merge_ws = tmp_path / "gitlab-merge"
    merge_ws.mkdir()
    shard_dirs = []
    for k in range(1, n + 1):
        ws = tmp_path / f"gitlab-shard-{k}"
        ws.mkdir()
        env = {**variables, **setting, "CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": str(n)}
        _shell(shard["script"], ws, env)
        for path in shard["artifacts"]["paths"]:   # carried to the merge job as they are
            rel = _gitlab_expand(path, env).rstrip("/")
            shutil.copytree(ws / rel, merge_ws / rel, dirs_exist_ok=True)
        junit = list(ws.glob(_gitlab_expand(shard["artifacts"]["reports"]["junit"], env)))
        assert len(junit) == 1, junit
        shard_dirs.append(merge_ws / "results" / f"shard-{k}")
    _shell(merge["script"], merge_ws, {**variables, **setting})
    out = merge_ws / merge["artifacts"]["paths"][0]
    assert merge_ws / merge["artifacts"]["reports"]["junit"] == out / "junit.xml"
    _check_merged(out, ids, shard_dirs)


# -- GitHub Actions -------------------------------------------------------------

_EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def _actions_expand(value: Any, context: dict[str, str]) -> Any:
    """``${{ expr }}`` substituted as Actions does before a step runs; an
    expression this emulation does not know fails the test."""
    if isinstance(value, dict):
        return {k: _actions_expand(v, context) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        assert m.group(1) in context, f"expression {m.group(0)} not emulated"
        return context[m.group(1)]
    return _EXPR.sub(one, value)


def _step(steps: list[dict[str, Any]], *, uses: str = "", id: str = "") -> dict[str, Any]:
    found = [s for s in steps if (uses and s.get("uses", "").startswith(uses + "@"))
             or (id and s.get("id") == id)]
    assert len(found) == 1, (uses or id, steps)
    return found[0]


def test_github_matrix_shards_then_merge(tmp_path: Path, setting: dict[str, str]) -> None:
    doc = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    # YAML 1.1 (PyYAML) reads the bare key `on` as True; Actions reads it as "on"
    assert doc.get("on", doc.get(True)), "no triggers"
    shard, merge = doc["jobs"]["shard"], doc["jobs"]["merge"]
    strategy = shard["strategy"]
    assert list(strategy["matrix"]) == ["shard"] and strategy["fail-fast"] is False
    values = strategy["matrix"]["shard"]
    n = len(values)   # strategy.job-total: one job per combination
    assert values == list(range(1, n + 1)), values
    assert merge["needs"] in ("shard", ["shard"]) and merge["if"] == "always()"
    workflow_env = {k: str(v) for k, v in doc.get("env", {}).items()}
    ids = _tier_ids(setting)
    assert len(ids) > n

    artifacts: dict[str, Path] = {}
    for index, k in enumerate(values):
        context = {"matrix.shard": str(k), "strategy.job-total": str(n),
                   "strategy.job-index": str(index)}
        ws = tmp_path / f"github-shard-{k}"
        ws.mkdir()
        run = _actions_expand(_step(shard["steps"], id="shard"), context)
        env = {**workflow_env, **shard.get("env", {}), **run.get("env", {}), **setting}
        _shell(run["run"], ws, env)
        upload = _actions_expand(_step(shard["steps"], uses="actions/upload-artifact"), context)
        assert upload["if"] == "always()"
        # upload-artifact v4: one directory's contents are the artifact's root
        name, path = upload["with"]["name"], ws / upload["with"]["path"]
        assert path.is_dir() and name not in artifacts, (path, name)
        artifacts[name] = tmp_path / "artifacts" / name
        shutil.copytree(path, artifacts[name])

    merge_ws = tmp_path / "github-merge"
    merge_ws.mkdir()
    download = _step(merge["steps"], uses="actions/download-artifact")["with"]
    assert not download.get("merge-multiple")
    matched = [a for a in artifacts if fnmatch.fnmatchcase(a, download["pattern"])]
    assert sorted(matched) == sorted(artifacts)
    for name in matched:   # download-artifact v4: PATH/<artifact name>/
        shutil.copytree(artifacts[name], merge_ws / download["path"] / name)
    run = _actions_expand(_step(merge["steps"], id="merge"), {})
    _shell(run["run"], merge_ws, {**workflow_env, **merge.get("env", {}), **setting})
    upload = _step(merge["steps"], uses="actions/upload-artifact")["with"]
    _check_merged(merge_ws / upload["path"], ids,
                  [merge_ws / download["path"] / name for name in sorted(matched)])
