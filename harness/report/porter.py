"""The porter's summary: what a port's migration carries and what it does not.

A porter running ``mharness run --tier e2k --qemu PATH`` wants one answer
more than a verdict per cell: which state of the machine arrives on the
destination.  Everything needed is already in the cells' check figures
(results.json), so this reads only :class:`CellResult`s and works the same on
a live run and on a recorded one:

- ``ram``/``pattern``/``guest``: RAM arrived intact (or pages differ);
- ``coverage``: devices with VMState (``covered``), without (``not_covered``),
  and for a saved stream (exec/file cells) the devices without a section
  in it (``stream.not_in_stream``: no VMState, CPU with cpu_common only,
  VMState not sent);
- ``cpu-state``: registers that differ between the paused sides
  (``differences``, ``diagnosis``), or identical;
- ``liveness``: a guest restarted from reset on the destination (boots
  counter) or running on;
- the known issues that applied (``CellResult.known_issues``).

It is printed for runs on a target other than x86 (a port), grouped by
source build and architecture.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from harness.results import PASSED, SKIPPED, CellResult, CheckResult, Verdict
from harness.state.coverage import CPU_COMMON_ONLY, NO_VMSTATE, NOT_SENT

log = logging.getLogger(__name__)

#: Architectures that are not a port (the harness's home targets).
HOME_ARCHES = frozenset({"x86_64", "i386"})
#: Registers named per cell in the summary (all are in results.json).
REGISTERS_SHOWN = 6


def _arch(r: CellResult) -> str:
    return str(((r.inputs or {}).get("target") or {}).get("arch") or "")


def _build_label(r: CellResult) -> str:
    src = (r.builds or {}).get("source") or {}
    name = src.get("name") or (r.inputs or {}).get("src_build") or "?"
    version = src.get("version")
    return f"build '{name}'" + (f" (QEMU {version})" if version else "")


def porter_summary(results: Iterable[CellResult]) -> str:
    """The summary text, or "" when no cell of a ported architecture ran."""
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for r in results:
        arch = _arch(r)
        if r.verdict == SKIPPED or not arch or arch in HOME_ARCHES:
            continue
        groups.setdefault((arch, _build_label(r)), []).append(r)
    return "\n\n".join(_group(arch, build, cells) for (arch, build), cells in groups.items())


def _names(entries: Iterable[dict[str, Any]], cpu_word: bool = True) -> str:
    """'e8c CPU, apic, iohub x2' from device entries, in first-seen order."""
    counts: dict[str, int] = {}
    for e in entries:
        cpu = e.get("cpu") or "CPU" in str(e.get("why", ""))
        label = f"{e['type']} CPU" if cpu and cpu_word else str(e["type"])
        if e.get("state") == CPU_COMMON_ONLY:
            label += " (cpu_common only)"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(n if c == 1 else f"{n} x{c}" for n, c in counts.items())


def _never_ran(r: CellResult) -> bool:
    """A pattern-paused cell: the source CPU never ran, so identical
    registers say nothing about whether CPU state migrates."""
    workload = ((r.inputs or {}).get("target") or {}).get("workload") or {}
    return workload.get("kind") == "pattern-paused"


def _checks(cells: list[CellResult], name: str) -> list[tuple[CellResult, CheckResult]]:
    return [(r, c) for r in cells for c in r.checks if c.name == name]


def _group(arch: str, build: str, cells: list[CellResult]) -> str:
    verdicts: dict[str, int] = {}
    for r in cells:
        verdicts[str(r.verdict)] = verdicts.get(str(r.verdict), 0) + 1
    out = [f"Porter's summary: {arch} on {build}, {len(cells)} cells ran ("
           + ", ".join(f"{n} {v}" for v, n in verdicts.items()) + ")"]
    migrated: list[str] = []
    missing: list[str] = []

    # RAM, and the guest's own view of it.
    ram = _checks(cells, "ram")
    if ram:
        good = [c for _, c in ram if c.passed]
        if len(good) == len(ram):
            migrated.append(f"RAM: identical in {len(ram)} of {len(ram)} cells "
                            f"({good[0].summary})")
        else:
            bad = [(r, c) for r, c in ram if not c.passed]
            migrated.append(f"RAM: identical in {len(good)} of {len(ram)} cells")
            missing += [f"RAM: {r.id}: {c.summary}" for r, c in bad]
    for name, what in (("pattern", "pattern intact"), ("guest", "guest invariant held")):
        found = _checks(cells, name)
        if found:
            ok = sum(c.passed for _, c in found)
            line = f"{what} in {ok} of {len(found)} cells"
            (migrated if ok == len(found) else missing).append(
                line + ("" if ok == len(found) else ": " + "; ".join(
                    f"{r.id}: {c.summary}" for r, c in found if not c.passed)))

    # Devices: the build's VMState (all cells agree: one build, one machine).
    cov = _checks(cells, "coverage")
    if cov:
        _, c = cov[0]
        covered = c.figures.get("covered") or []
        not_covered = c.figures.get("not_covered") or []
        total = len(covered) + len(not_covered) + len(c.figures.get("not_covered_fine") or [])
        if covered:
            migrated.append(f"devices with VMState ({len(covered)} of {total}): "
                            + _names(covered, cpu_word=False))
        if not_covered:
            missing.append(f"devices without VMState ({len(not_covered)} of {total}): "
                           + _names(not_covered))
        streams = [(r, c.figures["stream"]) for r, c in cov if c.figures.get("stream")]
        for r, st in streams[:1]:
            absent = [e for e in st.get("not_in_stream") or []
                      if e.get("state") in (NO_VMSTATE, CPU_COMMON_ONLY)]
            unsent = [e for e in st.get("not_in_stream") or [] if e.get("state") == NOT_SENT]
            if absent:
                missing.append(f"sections absent from the saved stream ({r.id}): "
                               + _names(absent))
            if unsent:
                missing.append("VMState not sent in that stream (needed() false; advisory): "
                               + _names(unsent, cpu_word=False))
            if not st.get("complete", True):
                missing.append(f"saved stream undecodable ({r.id}): {st.get('error')}")

    # CPU state.
    cpu = _checks(cells, "cpu-state")
    same = [(r, c) for r, c in cpu if c.passed]
    differ = [(r, c) for r, c in cpu if not c.passed]
    if same:
        migrated.append("CPU state identical in " + ", ".join(
            f"{r.id} ({c.summary}" + ("; the CPU never ran" if _never_ran(r) else "") + ")"
            for r, c in same))
    for r, c in differ:
        diffs = c.figures.get("differences") or []
        regs = ", ".join(f"{d['register']} {d['src']} -> {d['dst']}"
                         for d in diffs[:REGISTERS_SHOWN])
        more = len(diffs) - REGISTERS_SHOWN
        diagnosis = {"not-migrated": "not migrated",
                     "registers-differ": "registers differ"}.get(
            str(c.figures.get("diagnosis")), str(c.figures.get("diagnosis") or "differs"))
        missing.append(f"CPU registers ({r.id}): {diagnosis}, "
                       f"{c.figures.get('differing', len(diffs))} of "
                       f"{c.figures.get('registers_compared', '?')} differ"
                       + (f": {regs}" if regs else "")
                       + (f" and {more} more" if more > 0 else ""))

    # The guest after cont.
    for r, c in _checks(cells, "liveness"):
        if not c.passed:
            missing.append(f"guest after cont ({r.id}): {c.summary}")

    out.append("  migrated:")
    out += [f"    {line}" for line in migrated] or ["    (nothing judged)"]
    out.append("  not migrated:")
    out += [f"    {line}" for line in missing] or ["    nothing: every check passed"]
    out += _known(cells)
    return "\n".join(out)


def _known(cells: list[CellResult]) -> list[str]:
    issues: dict[str, dict[str, Any]] = {}
    where: dict[str, list[str]] = {}
    for r in cells:
        for ki in r.known_issues:
            issues.setdefault(ki["id"], ki)
            if ki.get("reproduced"):
                where.setdefault(ki["id"], []).append(r.id)
    if not issues:
        return []
    lines = ["  known issues:"]
    for kid, ki in issues.items():
        cells_hit = where.get(kid, [])
        status = (f"reproduced in {len(cells_hit)} cell{'s' if len(cells_hit) != 1 else ''}"
                  if cells_hit else "did not reproduce: remove it?")
        lines.append(f"    {kid} ({ki.get('title')}): {status}"
                     + (" [intermittent]" if ki.get("intermittent") else ""))
        if ki.get("reference"):
            lines.append(f"      {ki['reference']}")
    fixed = [r.id for r in cells if r.verdict == PASSED and any(
        not k.get("reproduced") for k in r.known_issues)]
    if fixed:
        lines.append(f"    (passed where a known issue did not reproduce: {', '.join(fixed)})")
    stray = [r for r in cells if r.verdict not in (PASSED, Verdict.KNOWN_FAILURE)]
    if stray:
        lines.append("    beyond the known issues: " + "; ".join(
            f"{r.id} {r.verdict}" for r in stray))
    return lines


__all__ = ["HOME_ARCHES", "porter_summary"]
