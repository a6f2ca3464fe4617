"""From parsed tiers to cells, and choosing among cells.

Expansion is deterministic: a tier's cells are its included tiers' cells (in
``include`` order) followed by its own declarations in file order, deduplicated
by id.  A cell's id is made from the names it was built from, so it is the same
on every machine and survives unrelated edits to the matrix; the same id must
never mean two different cells anywhere in the file (history and result folders
are keyed by it).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn, Protocol

from harness.cell import BuildSpec, Cell, TargetSpec
from harness.errors import MatrixError
from harness.failpaths import TARGET as SCENARIO_TARGET
from harness.failpaths import scenario_cell
from harness.hosts.inventory import LOCAL, HostSpec
from harness.known_issues import KnownIssue, applicable
from harness.matrix.hosts import place
from harness.matrix.schema import DEFAULT_SET, CellDecl, Defaults, ScenarioDecl, TierSpec
from harness.migration.dst_start import PAUSED

log = logging.getLogger(__name__)

ARCH_PLACEHOLDER = "{arch}"


class Definitions(Protocol):
    """What expansion needs from a loaded matrix (``harness.matrix.load.Matrix``)."""

    path: str
    defaults: Defaults
    builds: Mapping[str, BuildSpec]
    targets: Mapping[str, TargetSpec]
    target_builds: Mapping[str, str]
    capsets: Mapping[str, tuple[tuple[str, bool], ...]]
    paramsets: Mapping[str, tuple[tuple[str, Any], ...]]
    known_issues: Sequence[KnownIssue]
    hosts: Mapping[str, HostSpec]
    target_hosts: Mapping[str, tuple[str, str]]


# --- ids and cells ----------------------------------------------------------


def cell_id(decl: CellDecl, default_build: str) -> str:
    """``{target}-{transport}-{capset}[-{paramset}][-{mode}][-{fault}][-autostart][-{src}-to-{dst} | -{build}]``.

    The paramset is left out when it is ``default``, the mode when it is precopy,
    the destination's start mode when it is ``paused``.  Builds appear only when
    they are not the target's default: ``-{src}-to-{dst}`` when the sides differ,
    ``-{build}`` when both sides use the same non-default build (so that cell
    does not collide with the default-build one).  ``name:`` replaces it all.
    """
    if decl.name:
        return decl.name
    parts = [decl.target, decl.transport, decl.capset]
    if decl.paramset != DEFAULT_SET:
        parts.append(decl.paramset)
    if decl.mode:
        parts.append(decl.mode)
    if decl.fault:
        parts.append(decl.fault)
    if decl.dst_start != PAUSED:
        # Paused is the default and no part of an id, so existing ids stay.
        parts.append(decl.dst_start)
    if decl.src_build != decl.dst_build:
        parts.append(f"{decl.src_build}-to-{decl.dst_build}")
    elif decl.src_build != default_build:
        parts.append(decl.src_build)
    return "-".join(parts)


def build_for_arch(build: BuildSpec, arch: str) -> BuildSpec:
    """Substitute ``{arch}`` in a build's binary and data dirs for one target."""
    return replace(
        build,
        binary=build.binary.replace(ARCH_PLACEHOLDER, arch),
        data_dirs=tuple(d.replace(ARCH_PLACEHOLDER, arch) for d in build.data_dirs),
    )


def make_cell(decl: CellDecl, tier: str, defs: Definitions) -> Cell:
    """Resolve one declaration against the matrix's definitions.

    Capabilities are ``defaults.capabilities`` overlaid with the capset, and
    parameters ``defaults.parameters`` overlaid with the transport's
    (``defaults.transport-parameters``), then with the paramset; both end as
    sorted tuples so equal cells compare (and hash, and seed) equal.
    """
    target = defs.targets[decl.target]
    capabilities = dict(defs.defaults.capabilities)
    capabilities.update(defs.capsets[decl.capset])
    parameters = defs.defaults.for_transport(decl.transport)
    parameters.update(defs.paramsets[decl.paramset])
    cid = cell_id(decl, defs.target_builds[decl.target])
    cell = Cell(
        id=cid,
        target=target,
        src_build=build_for_arch(defs.builds[decl.src_build], target.arch),
        dst_build=build_for_arch(defs.builds[decl.dst_build], target.arch),
        transport=decl.transport,
        capabilities=tuple(sorted(capabilities.items())),
        parameters=tuple(sorted(parameters.items())),
        timeout=decl.timeout if decl.timeout is not None else defs.defaults.timeout,
        downtime_tolerance_ms=(decl.downtime_tolerance_ms
                               if decl.downtime_tolerance_ms is not None
                               else defs.defaults.downtime_tolerance_ms),
        expect_fail=decl.expect_fail,
        repeat=decl.repeat,
        known_issues=applicable(defs.known_issues, cid, decl.target,
                                (decl.src_build, decl.dst_build)),
        tier=tier,
        origin=f"{defs.path}:{decl.line}",
        mode=decl.mode,
        fault=decl.fault,
        dst_start=decl.dst_start,
    )
    return place_on_hosts(cell, defs, decl.src_host, decl.dst_host)


def place_on_hosts(cell: Cell, defs: Definitions, src: str = "", dst: str = "") -> Cell:
    """The cell on the hosts it names, else its target's, else ``local``
    (harness.matrix.hosts.place: ids of local cells unchanged)."""
    t_src, t_dst = defs.target_hosts.get(cell.target.name, (LOCAL, LOCAL))
    src, dst = src or t_src, dst or t_dst
    if src == dst == LOCAL:
        return cell
    return place(cell, defs.hosts[src], defs.hosts[dst])


# --- tiers ------------------------------------------------------------------


def expand_tiers(tiers: Mapping[str, TierSpec], defs: Definitions
                 ) -> dict[str, tuple[Cell, ...]]:
    """Expand every tier (include cycles must already have been refused).

    Each cell's ``tier`` is the tier that declares it, also when it is reached
    through ``include``.  Raises ``MatrixError`` for duplicate ids in one tier
    and for one id naming different cells anywhere in the file.
    """
    done: dict[str, tuple[Cell, ...]] = {}
    declared: dict[str, Cell] = {}

    def expand(name: str) -> tuple[Cell, ...]:
        if name not in done:
            done[name] = _expand_one(tiers[name], expand, declared, defs)
        return done[name]

    for name in tiers:
        expand(name)
    return done


def _expand_one(tier: TierSpec, expand: Callable[[str], tuple[Cell, ...]],
                declared: dict[str, Cell], defs: Definitions) -> tuple[Cell, ...]:
    """One tier: included cells first, then its own; ``declared`` spans all tiers."""
    cells: dict[str, Cell] = {}
    for i, (included, line) in enumerate(zip(tier.include, tier.include_lines)):
        for cell in expand(included):
            key = cell.id.lower()
            if key in cells and not _same(cells[key], cell):
                raise MatrixError(
                    f"included tiers define cell id '{cell.id}' differently "
                    f"({cells[key].origin} and {cell.origin})",
                    defs.path, line, f"tiers.{tier.name}.include[{i}]")
            cells.setdefault(key, cell)
    own: dict[str, CellDecl] = {}
    for decl in tier.cells:
        cell = make_cell(decl, tier.name, defs)
        key = cell.id.lower()
        if key in own:
            raise MatrixError(
                f"duplicate cell id '{cell.id}' (also declared at line "
                f"{own[key].line}); give one of them a 'name:'",
                defs.path, decl.line, decl.where)
        own[key] = decl
        first = declared.setdefault(key, cell)
        if first is not cell and not _same(first, cell):
            raise MatrixError(
                f"cell id '{cell.id}' already names a different cell at "
                f"{first.origin}; give one of them a 'name:'",
                defs.path, decl.line, decl.where)
        cells.setdefault(key, cell)
    _add_scenarios(tier, cells, own, declared, defs)
    return tuple(cells.values())


def make_scenario_cell(decl: ScenarioDecl, tier: str, defs: Definitions) -> Cell:
    """A failure-path scenario on one build: the cell the runner hands to
    ``harness.scenarios`` instead of the migration flow."""
    build = build_for_arch(defs.builds[decl.build], SCENARIO_TARGET.arch)
    cell = scenario_cell(decl.scenario, build, decl.label, tier=tier,
                         origin=f"{defs.path}:{decl.line}")
    return replace(cell, known_issues=applicable(defs.known_issues, cell.id, cell.target.name,
                                                 (decl.build, decl.build)))


def _add_scenarios(tier: TierSpec, cells: dict[str, Cell], own: dict[str, CellDecl],
                   declared: dict[str, Cell], defs: Definitions) -> None:
    """A tier's scenario cells, after its explicit ones, with the same
    rule on ids: one id, one cell, across the whole file."""
    mine: dict[str, ScenarioDecl] = {}
    for decl in tier.scenarios:
        cell = make_scenario_cell(decl, tier.name, defs)
        key = cell.id.lower()
        if key in mine or key in own:
            other = mine[key] if key in mine else own[key]
            same_scenario = key in mine and mine[key].scenario == decl.scenario
            if same_scenario and mine[key].build == decl.build:
                raise MatrixError(f"scenario '{decl.scenario}' on build '{decl.build}' is "
                                  f"already declared at line {other.line}",
                                  defs.path, decl.line, decl.where)
            why = (f"builds '{mine[key].build}' and '{decl.build}' are both labelled "
                   f"'{decl.label}' (their declared version)") if same_scenario \
                else "another cell has this id"
            raise MatrixError(f"duplicate cell id '{cell.id}' (also declared at line "
                              f"{other.line}): {why}", defs.path, decl.line, decl.where)
        mine[key] = decl
        first = declared.setdefault(key, cell)
        if first is not cell and not _same(first, cell):
            raise MatrixError(f"cell id '{cell.id}' already names a different cell at "
                              f"{first.origin}", defs.path, decl.line, decl.where)
        cells.setdefault(key, cell)


def _same(a: Cell, b: Cell) -> bool:
    """Same inputs (tier and origin aside): safe to run once under one id."""
    return a.fingerprint() == b.fingerprint() and a.repeat == b.repeat


# --- builds and capabilities ------------------------------------------------


def with_build(cells: Iterable[Cell], build: BuildSpec) -> list[Cell]:
    """The cells with both sides on ``build``; ids and everything else unchanged."""
    return [replace(cell, src_build=build_for_arch(build, cell.target.arch),
                    dst_build=build_for_arch(build, cell.target.arch))
            for cell in cells]


def unknown_capabilities(cell: Cell, supported: set[str]) -> list[str]:
    """Capabilities the cell names that a build does not know, sorted.

    A capability set to ``false`` counts too: QEMU refuses an unknown name in
    ``migrate-set-capabilities`` whatever its value (e.g. ``compress`` on 9.1+).
    """
    return sorted(name for name, _ in cell.capabilities if name not in supported)


def unknown_parameters(cell: Cell, supported: set[str]) -> list[str]:
    """Migration parameters the cell sets that a build does not know, sorted."""
    return sorted(name for name, _ in cell.parameters if name not in supported)


# --- -k selection -----------------------------------------------------------

_TOKEN_RE = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[^\s()]+))")
_KEYWORDS = {"and", "or", "not"}


def select(cells: Iterable[Cell], expr: str) -> list[Cell]:
    """Cells whose id matches a pytest-style ``-k`` expression, in order.

    Grammar (as pytest's): ``expr := and ('or' and)*``, ``and := not ('and'
    not)*``, ``not := 'not' not | '(' expr ')' | word``.  A word matches when it
    is a case-insensitive substring of the cell id.  An empty expression
    selects everything.  Raises ``MatrixError`` for a malformed expression.
    """
    cells = list(cells)
    if not expr.strip():
        return cells
    matcher = _Parser(expr).parse()
    return [cell for cell in cells if matcher(cell.id.lower())]


class _Parser:
    """Recursive-descent parser producing a predicate over a lower-cased id."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens: list[tuple[str, int]] = []
        pos = 0
        while pos < len(expr):
            match = _TOKEN_RE.match(expr, pos)
            assert match is not None
            if match.lastgroup:
                self.tokens.append((match.group(match.lastgroup),
                                    match.start(match.lastgroup)))
            pos = match.end()
        self.pos = 0

    def parse(self) -> Any:
        result = self._or()
        if self.pos < len(self.tokens):
            self._fail(f"unexpected {self.tokens[self.pos][0]!r}")
        return result

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def _fail(self, what: str) -> NoReturn:
        column = self.tokens[self.pos][1] + 1 if self.pos < len(self.tokens) \
            else len(self.expr) + 1
        raise MatrixError(f"bad -k expression {self.expr!r}: {what} at column {column}")

    def _or(self) -> Any:
        terms = [self._and()]
        while self._peek() == "or":
            self.pos += 1
            terms.append(self._and())
        return terms[0] if len(terms) == 1 else (lambda s: any(t(s) for t in terms))

    def _and(self) -> Any:
        terms = [self._not()]
        while self._peek() == "and":
            self.pos += 1
            terms.append(self._not())
        return terms[0] if len(terms) == 1 else (lambda s: all(t(s) for t in terms))

    def _not(self) -> Any:
        token = self._peek()
        if token == "not":
            self.pos += 1
            inner = self._not()
            return lambda s: not inner(s)
        if token == "(":
            self.pos += 1
            inner = self._or()
            if self._peek() != ")":
                self._fail("expected ')'")
            self.pos += 1
            return inner
        if token is None or token == ")" or token in _KEYWORDS:
            self._fail("expected a word, 'not' or '('" if token is None
                       else f"unexpected {token!r}")
        self.pos += 1
        word = token.lower()  # type: ignore[union-attr]
        return lambda s: word in s
