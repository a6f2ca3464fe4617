"""``known-issues:`` in matrix.yaml: a build's own defects, read with the same
file/line/key errors as the rest of the matrix.

Each entry is keyed by the issue's id::

    known-issues:
      e2k-cpu-vmstate:
        title: "e2k: CPU state not migrated"       # one line, for summaries
        build: {name: e2k, versions: "6.0"}         # or build: e2k, or {versions: ">=7.2"}
        targets: [e2k-tcg-pattern, e2k-tcg-dirtier] # and/or cells: [ids or globs]
        checks: [cpu-state, liveness]               # the checks it makes fail
        intermittent: false                         # true: fails in some runs only
        reference: >-                               # why, since when, QEMU file/function
          ...

A build name is matched against the builds the cell is declared with (so it
still holds under ``--qemu PATH``); versions against the builds the cell
really ran on, when it is judged (harness.known_issues).  Why this is not
``expect-fail``: see harness.known_issues.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

from harness.known_issues import KnownIssue, VersionSpec
from harness.matrix import schema as s
from harness.matrix.schema import Where
from harness.matrix.yamlpos import YEntry, YMap, YNode, YScalar

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


def parse_known_issues(entry: YEntry | None, where: Where, builds: Iterable[str],
                       targets: Iterable[str]) -> tuple[KnownIssue, ...]:
    """The ``known-issues:`` section; () when absent or empty."""
    if entry is None or (isinstance(entry.value, YScalar) and entry.value.value is None):
        return ()
    node = s.as_map(entry.value, where)
    build_names, target_names = list(builds), list(targets)
    issues = []
    for kid, item in node.entries.items():
        s.check_name(kid, item.key_line, where.key(kid), "known issue id")
        issues.append(_issue(kid, item, where.key(kid), build_names, target_names))
    return tuple(issues)


def _issue(kid: str, item: YEntry, where: Where, builds: list[str],
           targets: list[str]) -> KnownIssue:
    m = s.as_map(item.value, where)
    e = s.check_keys(m, where, s.KNOWN_ISSUE_KEYS, s.KNOWN_ISSUE_REQUIRED)
    title = _text(e["title"].value, where.key("title"))
    reference = _text(e["reference"].value, where.key("reference"))
    name, versions = _build(e["build"].value, where.key("build"), builds)
    checks = s.as_name_list(e["checks"].value, where.key("checks"), "check")
    target_globs = _patterns(e.get("targets"), where.key("targets"), "target")
    for pattern, line, w in target_globs:
        if not any(fnmatch.fnmatchcase(t, pattern) for t in targets):
            raise w.error(f"'{pattern}' matches no target (defined: {', '.join(targets)})", line)
    cells = _patterns(e.get("cells"), where.key("cells"), "cell")
    intermittent = s.as_bool(e["intermittent"].value, where.key("intermittent")) \
        if "intermittent" in e else False
    return KnownIssue(
        id=kid, title=title, reference=reference, checks=tuple(n for n, _, _ in checks),
        cells=tuple(p for p, _, _ in cells), targets=tuple(p for p, _, _ in target_globs),
        build=name, versions=versions, intermittent=intermittent,
        origin=f"{where.file}:{item.key_line}")


def _text(node: YNode, where: Where) -> str:
    text = " ".join(s.as_str(node, where).split())
    if not text:
        raise where.error("expected some text, got an empty string", node.line)
    return text


def _build(node: YNode, where: Where, builds: list[str]) -> tuple[str | None, VersionSpec]:
    """``build: NAME`` or ``build: {name: NAME, versions: SPEC}`` (at least one)."""
    if isinstance(node, YScalar):
        return s.as_ref(node, where, "build", builds), VersionSpec()
    m = s.as_map(node, where)
    e = s.check_keys(m, where, s.KNOWN_ISSUE_BUILD_KEYS)
    if not e:
        raise where.error("give the build's 'name', its 'versions', or both", m.line)
    name = s.as_ref(e["name"].value, where.key("name"), "build", builds) if "name" in e \
        else None
    versions = VersionSpec()
    if "versions" in e:
        vnode = e["versions"].value
        try:
            versions = VersionSpec.parse(s.as_str(vnode, where.key("versions")))
        except ValueError as exc:
            raise where.key("versions").error(str(exc), vnode.line) from None
    return name, versions


def _patterns(entry: YEntry | None, where: Where, what: str) -> list[tuple[str, int, Where]]:
    """Names or globs (``e2k-*``), each with its line."""
    if entry is None:
        return []
    node = entry.value
    items = [node] if isinstance(node, YScalar) else list(s.as_list(node, where).items)
    out = []
    for i, item in enumerate(items):
        w = where if isinstance(node, YScalar) else where.index(i)
        text = s.as_str(item, w)
        if not text or any(ch.isspace() for ch in text):
            raise w.error(f"expected a {what} name or glob, got {text!r}", item.line)
        out.append((text, item.line, w))
    if not out:
        raise where.error(f"expected at least one {what} name or glob", node.line)
    return out


def check_cell_names(node: YNode | None, where: Where, issues: Iterable[KnownIssue],
                     cell_ids: Iterable[str]) -> None:
    """A ``cells:`` entry without glob characters must be the id of a cell of
    some tier: a typo would otherwise leave the defect unexplained and the
    cell failing, with no word on why.  Globs are not checked here: they may
    name covering-array cells, which exist only once a tier is planned."""
    if not isinstance(node, YMap):
        return
    ids = {i.lower() for i in cell_ids}
    for ki in issues:
        entry = node.entries[ki.id]
        cells = entry.value.entries.get("cells") if isinstance(entry.value, YMap) else None
        if cells is None:
            continue
        for pattern, line, w in _patterns(cells, where.key(ki.id).key("cells"), "cell"):
            if not _GLOB_CHARS & set(pattern) and pattern.lower() not in ids:
                raise w.error(f"no cell has the id '{pattern}' (a covering-array cell is "
                              f"named when its tier is planned: match it with a glob such as "
                              f"'{pattern}*')", line)


__all__ = ["check_cell_names", "parse_known_issues"]
