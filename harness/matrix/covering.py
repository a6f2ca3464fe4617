"""N-wise covering arrays over migration settings, constrained by the rule oracle.

A covering strategy names *factors* -- the target, the transport, the builds,
capsets (one factor), each capability (a boolean factor), each parameter (a
list of values) and paramsets -- and an order ``t``.  The cells it produces contain every
combination of ``t`` factor values that QEMU would accept together (a "required
tuple"), in far fewer cells than the full product.

Constraints are not written by hand: they are computed from the rule oracle
(``harness.rules``), per *context* -- the source and destination QEMU versions
and the accelerator, which is what the oracle's verdicts depend on.  For each
context we ask the oracle about every setting alone and every pair of settings,
exactly as the cell flow would send them (``migrate-set-capabilities`` with
``events`` on, then ``migrate-set-parameters``, on an idle source and on a
destination started with ``-incoming defer``), and classify:

- a setting refused alone and by every partner is *excluded* with the rule
  that refuses it (``dirty-limit`` under TCG) -- or, when the build does not
  have it at all (``compress`` on 10.0), excluded as absent;
- a setting refused alone but accepted with a partner *requires* one of those
  partners (``zero-copy-send`` needs ``multifd``);
- two settings accepted apart but refused together *conflict*: the pair goes
  to the error-path list with its rule id (``multifd`` + ``xbzrle`` on 8.1+),
  where the probe suite (``mharness probe``) tests the refusal.

``covertable`` builds the array (greedy criterion for small models, a
first-fit criterion for large ones); its constraint hooks are given a checker
over these tables (covertable's generic constraint evaluator is far too slow at
order 3: minutes where this takes about a second).  Every
generated row is then judged by the oracle again as a whole; a row it refuses
(a rule involving three settings, which pair analysis cannot see) is shrunk to
a minimal refused set, which becomes one more constraint, and the array is
regenerated.  So no cell the oracle refuses is ever produced.

Everything is deterministic: the same factors, versions and seed give the same
rows in the same order on every machine (``covertable`` with a hash sorter
salted by the seed; no ``PYTHONHASHSEED``-dependent iteration anywhere).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from covertable import Controller, criteria

from harness.rules import (
    CAPS_COMMAND,
    PARAMS_COMMAND,
    HostFacts,
    Phase,
    ProbeState,
    Side,
    apply,
    default_book,
    expected,
)
from harness.rules.model import Version
from harness.migration.modes import CANCEL_RETRY, mode_needs
from harness.migration.transports import (FLOW_TRANSPORT_UNSUPPORTED, SAVE_RESTORE,
                                         transport_refusal)

#: The harness turns this on for every cell (driver.BASE_CAPABILITIES).
ALWAYS_ON = ("events",)

#: Capabilities the cell flow cannot run meaningfully, and why.  A covering
#: strategy in matrix.yaml that names one gets it excluded with this reason
#: (``mharness list`` shows it); :func:`generate` itself takes any capability
#: (the scale benchmark uses them all).
FLOW_UNSUPPORTED_CAPS: dict[str, str] = {
    "background-snapshot": "a snapshot to a file, not a migration to a destination",
    "x-colo": "needs a COLO setup (primary and secondary with replication)",
    "rdma-pin-all": "needs the rdma transport",
    "release-ram": "discards source RAM as it is sent, which the exact RAM comparison reads",
    "x-ignore-shared": "skips shared RAM, and the harness backs guest RAM with a shared file",
}
#: Above this many required tuples covertable's greedy criterion is too slow
#: (it rescans every uncovered tuple for every value it places); the simple
#: criterion is used instead (a few more rows, much faster).
GREEDY_MAX_TUPLES = 2000
#: Rounds of "judge every row, learn the refused sets, regenerate".
MAX_REPAIR_ROUNDS = 4

Setting = tuple[str, Any]  # (factor name, value)


# --- the oracle, asked as the cell flow asks -----------------------------------


@dataclass(frozen=True)
class Context:
    """What the oracle's verdicts depend on besides the settings themselves."""

    src_version: Version
    dst_version: Version
    accel: str

    def describe(self) -> str:
        v = lambda x: f"{x[0]}.{x[1]}"  # noqa: E731
        ver = v(self.src_version) if self.src_version == self.dst_version \
            else f"{v(self.src_version)}->{v(self.dst_version)}"
        return f"QEMU {ver}, {self.accel}"


@dataclass(frozen=True)
class Refusal:
    """Why a set of settings cannot make a cell: a rule id and a sentence."""

    rule: str
    reason: str


def _v(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


class Judge:
    """The rule oracle's verdict on one cell's capabilities and parameters.

    Mirrors what ``harness.migration.driver.configure`` does on each side: one
    ``migrate-set-capabilities`` with ``events`` plus the cell's capabilities,
    then (if any) one ``migrate-set-parameters``, then a read-back that must
    match.  The source is idle; the destination runs with ``-incoming defer``
    and has not had ``migrate-incoming`` yet.  Host facts are the oracle's
    defaults (not this machine's), so the answer is the same everywhere.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.book = default_book()
        self._cache: dict[frozenset[tuple[str, Any]], Refusal | None] = {}

    def verdict(self, caps: Mapping[str, bool], params: Mapping[str, Any],
                transport: str | None = None, mode: str = "") -> Refusal | None:
        """``transport`` None: judged as if any transport would do (the
        capability and parameter rules only).  ``mode``: what the harness does
        with the migration (harness.migration.modes; "" = precopy)."""
        caps = {k: True for k, v in caps.items() if v}
        key = frozenset([("c", k, v) for k, v in caps.items()] +
                        [("p", k, json.dumps(v, sort_keys=True)) for k, v in params.items()] +
                        [("t", transport, None), ("m", mode, None)])
        if key not in self._cache:
            self._cache[key] = self._verdict(caps, params, transport, mode)
        return self._cache[key]

    def _verdict(self, caps: Mapping[str, bool], params: Mapping[str, Any],
                 transport: str | None = None, mode: str = "") -> Refusal | None:
        refusal = self._settings_verdict(caps, params)
        if refusal is not None:
            return refusal
        if mode:
            needs = mode_needs(mode, caps)
            if needs:
                return Refusal(f"unsupported.mode.{mode}", needs)
            if mode == CANCEL_RETRY and transport in SAVE_RESTORE:
                return Refusal(f"unsupported.mode.{mode}.{transport}",
                               f"mode {mode} needs a live transport, not {transport}")
        if transport is None:
            return None
        # What the cell flow cannot run on this transport, then what QEMU's
        # ``migrate`` refuses on it.
        for cap in sorted(caps):
            why = FLOW_TRANSPORT_UNSUPPORTED.get((cap, transport))
            if why:
                return Refusal(f"unsupported.{cap}.{transport}", why)
        said = transport_refusal(self.ctx.src_version, caps, transport)
        if said is not None:
            return Refusal(said[0], f"source {_v(self.ctx.src_version)} refuses migrate over "
                                    f"{transport}: \"{said[1]}\"")
        return None

    def _settings_verdict(self, caps: Mapping[str, bool], params: Mapping[str, Any]
                          ) -> Refusal | None:
        stage = self._caps_stage(frozenset(caps))
        if isinstance(stage, Refusal):
            return stage
        for where, version, state in stage:
            for name in params:
                if self.book.param_spec(version, name) is None:
                    return Refusal("absent.parameter", f"{where} has no parameter {name}")
        for where, version, state in stage:
            for name, value in params.items():
                spec = self.book.param_spec(version, name)
                if spec is None:
                    return Refusal("absent.parameter", f"{where} has no parameter {name}")
                if spec.ignored(version):
                    return Refusal("ignored.parameter",
                                   f"{where} accepts {name} but ignores it (not applied, so "
                                   f"the read-back would differ)")
            if params:
                v = expected(version, PARAMS_COMMAND, dict(params), state)
                if not v.accept:
                    return Refusal(v.rule_id or "?", f"{where} refuses migrate-set-parameters "
                                                     f"({v.rule_id})")
        return None

    @functools.lru_cache(maxsize=None)  # noqa: B019 -- one Judge per context, few cap sets
    def _caps_stage(self, caps: frozenset[str]
                    ) -> Refusal | list[tuple[str, Version, ProbeState]]:
        """``migrate-set-capabilities`` on both sides: a refusal, or each side's
        state afterwards (what ``migrate-set-parameters`` is then judged in)."""
        sides = ((Side.SOURCE, Phase.IDLE, self.ctx.src_version),
                 (Side.DESTINATION, Phase.INCOMING_DEFERRED, self.ctx.dst_version))
        out = []
        for side, phase, version in sides:  # absence first: it is the real reason
            names = self.book.cap_names(version)
            for cap in sorted(caps):
                if cap not in names:
                    return Refusal("absent.capability", f"{side.value} {_v(version)} has no "
                                   f"capability {cap}{_lifetime(self.book, cap)}")
        for side, phase, version in sides:
            where = f"{side.value} {_v(version)}"
            state = ProbeState(side=side, phase=phase, accel=self.ctx.accel, host=HostFacts())
            wanted = {**dict.fromkeys(ALWAYS_ON, True), **dict.fromkeys(sorted(caps), True)}
            args = {"capabilities": [{"capability": k, "state": v} for k, v in wanted.items()]}
            v = expected(version, CAPS_COMMAND, args, state)
            if not v.accept:
                return Refusal(v.rule_id or "?", f"{where} refuses migrate-set-capabilities "
                                                 f"({v.rule_id})")
            out.append((where, version, apply(version, CAPS_COMMAND, args, state)))
        return out


def _lifetime(book: Any, cap: str) -> str:
    for spec in book.caps:
        if spec.name == cap:
            if spec.until:
                return f" (removed in {_v(spec.until)})"
            if spec.since != (0, 0):
                return f" (added in {_v(spec.since)})"
    return " (unknown to the rule oracle)"


# --- the model -------------------------------------------------------------------


@dataclass(frozen=True)
class Factor:
    """One dimension of a covering array.

    ``kind`` is ``target``, ``transport``, ``src-build``, ``dst-build``,
    ``capset``, ``paramset``, ``capability`` or ``parameter``.  A capability's values are
    ``(False, True)``; a parameter's are what the matrix lists (``None``: leave
    QEMU's default).
    """

    name: str
    kind: str
    values: tuple[Any, ...]


#: Kinds that select the context or the cell's shape, not what QEMU is told.
CONTEXT_KINDS = ("target", "transport", "src-build", "dst-build")
#: Of those, the kinds the oracle still judges (rules tie capabilities to the
#: transport: harness.rules.transport).
JUDGED_KINDS = ("transport", "mode")


def _judged(kind: str) -> bool:
    """Whether settings of this factor kind go to the oracle."""
    return kind not in CONTEXT_KINDS or kind in JUDGED_KINDS


def neutral(factor: Factor) -> Any:
    """The value that sends QEMU nothing: off for a capability, precopy for a
    mode, unset otherwise."""
    if factor.kind == "capability":
        return False
    return "" if factor.kind == "mode" else None


@dataclass(frozen=True)
class Exclusion:
    """A value or combination no cell gets, and why.

    ``kind``: ``unsupported`` (the cell flow cannot run it), ``absent`` (the
    build does not have it), ``error-path`` (the oracle says QEMU refuses it:
    the probe suite tests that refusal), ``unusable`` (refused here whatever
    it is combined with, e.g. needs a host feature).
    """

    kind: str
    what: str
    context: str
    rule: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "context": self.context,
                "rule": self.rule, "reason": self.reason}

    def describe(self) -> str:
        rule = f" [{self.rule}]" if self.rule else ""
        ctx = f" ({self.context})" if self.context else ""
        return f"{self.kind}: {self.what}{ctx}: {self.reason}{rule}"


def fmt_setting(s: Setting) -> str:
    name, value = s
    if value is True:
        return f"{name}=on"
    if value is False:
        return f"{name}=off"
    if value is None:
        return f"{name}=default"
    if name == "mode" and value == "":
        return "mode=precopy"
    return f"{name}={value}"


@dataclass
class Analysis:
    """The oracle's constraints for one context, over the active settings."""

    unusable: dict[Setting, Refusal] = field(default_factory=dict)
    requires: dict[Setting, tuple[Setting, ...]] = field(default_factory=dict)
    conflicts: dict[tuple[Setting, Setting], Refusal] = field(default_factory=dict)
    #: Minimal refused sets of three or more, learnt from whole rows.
    nogoods: dict[tuple[Setting, ...], Refusal] = field(default_factory=dict)
    #: Why each setting with requirements is refused on its own.
    alone: dict[Setting, Refusal] = field(default_factory=dict)
    oracle_calls: int = 0


class SettingsModel:
    """Turns settings into capabilities and parameters for the judge."""

    def __init__(self, factors: Sequence[Factor],
                 paramsets: Mapping[str, Mapping[str, Any]] | None = None, *,
                 base_caps: Mapping[str, bool] | None = None,
                 base_params: Mapping[str, Any] | None = None,
                 capsets: Mapping[str, Mapping[str, bool]] | None = None) -> None:
        self.factors = {f.name: f for f in factors}
        self.paramsets = paramsets or {}
        self.capsets = capsets or {}
        #: What every cell gets before its factors (the matrix's defaults).
        self.base_caps = {k: True for k, v in (base_caps or {}).items() if v}
        self.base_params = dict(base_params or {})

    def split(self, settings: Iterable[Setting]
              ) -> tuple[dict[str, bool], dict[str, Any], str | None, str]:
        """Capabilities, parameters, and (if among the settings) the transport
        and the migration mode ("" = precopy)."""
        caps: dict[str, bool] = dict(self.base_caps)
        params: dict[str, Any] = dict(self.base_params)
        transport: str | None = None
        mode = ""
        for name, value in settings:
            kind = self.factors[name].kind
            if kind == "transport":
                transport = value
            elif kind == "mode":
                mode = value
            elif kind == "capability":
                if value:
                    caps[name] = True
            elif kind == "parameter":
                if value is not None:
                    params[name] = value
            elif kind == "paramset":
                params.update(self.paramsets.get(value, {}))
            elif kind == "capset":
                caps.update({k: True for k, v in self.capsets.get(value, {}).items() if v})
        return caps, params, transport, mode


def analyse(judge: Judge, model: SettingsModel, factors: Sequence[Factor]) -> Analysis:
    """Classify every active setting and pair of settings with the oracle."""
    out = Analysis()
    calls = [0]

    def verdict(settings: Iterable[Setting]) -> Refusal | None:
        calls[0] += 1
        return judge.verdict(*model.split(settings))

    # A transport is always set (no neutral value); judging its values alone
    # and in pairs finds the capabilities a transport cannot carry.
    active = [(f.name, v) for f in factors if _judged(f.kind)
              for v in f.values if v != neutral(f) or f.kind in JUDGED_KINDS]
    for s in active:
        refusal = verdict([s])
        if refusal is None:
            continue
        rescues = tuple(t for t in active if t[0] != s[0] and verdict([s, t]) is None)
        if rescues:
            out.requires[s] = rescues
            out.alone[s] = refusal
        else:
            out.unusable[s] = refusal
    usable = [s for s in active if s not in out.unusable]
    for i, s in enumerate(usable):
        for t in usable[i + 1:]:
            if s[0] == t[0]:
                continue
            refusal = _pair_refusal(s, t, out.requires, verdict)
            if refusal is None:
                continue
            # A transport pair that one more capability makes acceptable
            # (file: + multifd needs mapped-ram) is refused only without it.
            rescue = _single_rescue(s, t, usable, model, verdict) \
                if model.factors[s[0]].kind in JUDGED_KINDS \
                or model.factors[t[0]].kind in JUDGED_KINDS else None
            if rescue is not None:
                out.nogoods[(s, t, (rescue, False))] = refusal
            else:
                out.conflicts[(s, t)] = refusal
    _through_judged(out, usable, factors)
    out.oracle_calls = calls[0]
    return out


def _through_judged(out: Analysis, usable: Sequence[Setting], factors: Sequence[Factor]
                    ) -> None:
    """Pairs no value of a judged factor can carry (mapped-ram needs file:,
    cancel-retry a live transport: no transport takes both) become conflicts
    too, so the generator never chases a tuple no row can hold."""
    def clash(a: Setting, b: Setting) -> bool:
        return (a, b) in out.conflicts or (b, a) in out.conflicts

    for f in factors:
        if f.kind not in JUDGED_KINDS:
            continue
        values = [(f.name, v) for v in f.values if (f.name, v) not in out.unusable]
        for i, s in enumerate(usable):
            for t in usable[i + 1:]:
                if f.name in (s[0], t[0]) or s[0] == t[0] or clash(s, t):
                    continue
                if values and all(clash(s, v) or clash(t, v) for v in values):
                    out.conflicts[(s, t)] = Refusal(
                        f"via.{f.name}", f"no {f.name} takes both: " + "; ".join(
                            f"{v[1] or 'precopy'}: {fmt_setting(s if clash(s, v) else t)}"
                            for v in values))


def _single_rescue(s: Setting, t: Setting, usable: Sequence[Setting], model: SettingsModel,
                   verdict: Callable[[Iterable[Setting]], Refusal | None]) -> str | None:
    """The one capability whose being on makes the refused pair ``s`` + ``t``
    acceptable, or None (no rescue, or several: then the pair counts as refused)."""
    rescuers = {r[0] for r in usable
                if r[0] not in (s[0], t[0]) and model.factors[r[0]].kind == "capability"
                and r[1] is True and verdict([s, t, r]) is None}
    return next(iter(rescuers)) if len(rescuers) == 1 else None


def _pair_refusal(s: Setting, t: Setting, requires: Mapping[Setting, tuple[Setting, ...]],
                  verdict: Callable[[Iterable[Setting]], Refusal | None]) -> Refusal | None:
    """None when some way of satisfying both settings' requirements is accepted."""
    first: Refusal | None = None

    def options(x: Setting, other: Setting) -> list[Setting | None]:
        need = requires.get(x)
        if not need or other in need:
            return [None]
        return [r for r in need if r[0] not in (s[0], t[0])][:4] or [None]

    for a in options(s, t):
        for b in options(t, s):
            extra = [x for x in (a, b) if x is not None]
            if len({x[0] for x in extra}) < len(extra):
                continue
            refusal = verdict([s, t, *extra])
            if refusal is None:
                return None
            first = first or refusal
    return first


# --- generation --------------------------------------------------------------------


class _FirstFit:
    """covertable criterion: the uncovered tuples in covertable's (seeded)
    order, each one that fits the row being built -- covertable's ``simple``
    criterion without its per-tuple list copies and candidate objects, which
    dominate at order 3 (``simple`` and this give the same rows)."""

    @staticmethod
    def extract(ctrl: Controller) -> Iterable[tuple[int, ...]]:
        row = ctrl.row
        parents = ctrl.parents
        width = ctrl.factor_length
        invalid = row.invalid_pairs
        storable = ctrl._storable_check
        for key in ctrl.incomplete:
            if len(row) == width:
                return
            new = 0
            for serial in key:
                have = row.get(parents[serial])
                if have is None:
                    new += 1
                elif have != serial:
                    break
            else:
                if new and key not in invalid and \
                        storable([(parents[x], x) for x in key]):
                    yield key


class _SaltedSorter:
    """covertable sorter: a deterministic integer hash of each tuple's value
    serials mixed with the seed (covertable's own FNV-over-strings sorter costs
    about a second per 170k tuples at order 3)."""

    @staticmethod
    def sort(pairs: list[tuple[int, ...]], salt: str = "", indices: Any = None,
             **_: Any) -> list[tuple[int, ...]]:
        mix = int.from_bytes(hashlib.sha256(str(salt).encode()).digest()[:8], "little")
        mask = (1 << 64) - 1

        def key(pair: tuple[int, ...]) -> int:
            h = mix
            for n in pair:
                h = ((h ^ (n + 0x9E3779B97F4A7C15)) * 0xBF58476D1CE4E5B9) & mask
                h ^= h >> 31
            return h

        return sorted(pairs, key=key)


@dataclass
class Generated:
    rows: list[dict[str, Any]]
    analysis: Analysis
    seconds: float
    criterion: str
    repair_rounds: int


def generate(factors: Sequence[Factor], order: int, judge: Judge, model: SettingsModel,
             seed: int = 0) -> Generated:
    """A covering array of ``order`` over ``factors`` in one context.

    ``factors`` must already have their context values restricted to this
    context (and unsupported values removed).  Returns rows as ``{factor:
    value}`` for every factor, each accepted by the oracle.
    """
    t0 = time.perf_counter()
    analysis = analyse(judge, model, factors)
    rounds = 0
    while True:
        domains = {f.name: [v for v in f.values if (f.name, v) not in analysis.unusable]
                   for f in factors}
        fixed = {n: vs[0] for n, vs in domains.items() if len(vs) == 1}
        free = {n: vs for n, vs in domains.items() if len(vs) > 1}
        if any(not vs for vs in domains.values()):
            empty = [n for n, vs in domains.items() if not vs]
            raise ValueError(f"no usable value left for {', '.join(empty)}")
        strength = min(order, len(free))
        crit_name = "greedy"
        if not free:
            rows = [dict(fixed)]
        else:
            estimate = _tuple_estimate(list(free.values()), strength)
            crit: Any = criteria.greedy
            if estimate > GREEDY_MAX_TUPLES:
                crit, crit_name = _FirstFit, "first-fit"
            checker = Checker(analysis, fixed)
            ctrl = _Controller(free, checker, strength=max(strength, 1),
                               sorter=_SaltedSorter, criterion=crit, salt=str(seed))
            rows = [{**fixed, **row} for row in ctrl.make()]
        bad = []
        for row in rows:
            settings = [(n, row[n]) for n in model.factors if n in row
                        and _judged(model.factors[n].kind)]
            refusal = judge.verdict(*model.split(settings))
            if refusal is not None:
                bad.append((settings, refusal))
        if not bad:
            return Generated(rows, analysis, time.perf_counter() - t0, crit_name, rounds)
        rounds += 1
        if rounds > MAX_REPAIR_ROUNDS:
            raise RuntimeError(f"the oracle still refuses {len(bad)} generated rows after "
                               f"{MAX_REPAIR_ROUNDS} rounds, e.g. {bad[0]}")
        for settings, refusal in bad:
            group = _shrink(settings, refusal, judge, model, factors)
            analysis.nogoods[tuple(group)] = refusal


class Checker:
    """The analysis's constraints, indexed by setting, for :class:`_SerialChecker`.

    A partial row can still become a row the oracle accepts when it holds no
    unusable setting, no conflicting pair and no learnt refused set, and each
    requirement is met inside the row or still possible through a factor not
    yet set, to a partner that conflicts with nothing in the row.  Pair
    analysis lists implied conflicts too (``zero-copy-send`` + ``xbzrle`` both
    directly and through ``multifd``), so this check is as strong as
    covertable's generic forward checking for these constraints, at a
    fraction of its cost.
    """

    def __init__(self, analysis: Analysis, fixed: Mapping[str, Any] | None = None) -> None:
        self.unusable = set(analysis.unusable)
        self.conflicts: dict[Setting, set[Setting]] = {}
        for a, b in analysis.conflicts:
            self.conflicts.setdefault(a, set()).add(b)
            self.conflicts.setdefault(b, set()).add(a)
        self.requires = dict(analysis.requires)
        self.nogoods: dict[Setting, list[frozenset[Setting]]] = {}
        for group in analysis.nogoods:
            g = frozenset(group)
            for x in g:
                self.nogoods.setdefault(x, []).append(g)
        self.fixed = dict(fixed or {})


def _hashable(v: Any) -> Any:
    return v if not isinstance(v, (list, dict)) else json.dumps(v, sort_keys=True)


class _Controller(Controller):
    """covertable's Controller with the constraint checks delegated to a
    :class:`Checker` (covertable 3.2's generic evaluator re-evaluates every
    declarative constraint for every candidate value of every factor: 9 ms a
    call on the 10.0 model, minutes for one array).  Construction, the choice
    of tuples, row completion and bookkeeping stay covertable's.  The hooks
    overridden are covertable 3.2's ``_storable_check`` and ``_forward_check``
    (pinned in pyproject.toml); they work on covertable's value serials.
    """

    def __init__(self, factors: Mapping[str, list[Any]], checker: Checker, **kw: Any) -> None:
        super().__init__(factors, **kw)
        self._sc = _SerialChecker(checker, self.serials, self.factors)
        # covertable prunes infeasible tuples only when given declarative
        # constraints; do it with the checker.
        before = len(self.incomplete)
        ok, touched = self._sc.ok, self._sc.touched
        for key in list(self.incomplete):
            if not touched.isdisjoint(key) and not ok(key, set(key)):
                del self.incomplete[key]
        self._pruned_pairs = before - len(self.incomplete)

    _sc: "_SerialChecker | None" = None

    def _storable_check(self, candidate: Any, row: Any = None) -> bool:
        if self._sc is None:  # during covertable's own construction
            return True
        base = self.row if row is None else row
        on = set(base.values())
        new = [s for _, s in candidate]
        on.update(new)
        return self._sc.ok(new, on)

    def _forward_check(self, snapshot: Any) -> bool:
        if self._sc is None:
            return True
        on = set(snapshot.values())
        return self._sc.ok(on, on)


class _SerialChecker:
    """:class:`Checker` over covertable's integer value serials.

    ``ok(new, on)``: may the serials ``on`` (a row, already consistent except
    for ``new``) stand together?  Only ``new`` is checked against the rest,
    plus every requirement in the row (adding ``new`` may close its last way).
    """

    def __init__(self, checker: Checker, serials: Mapping[str, list[int]],
                 factors: Mapping[str, list[Any]]) -> None:
        code: dict[Setting, int] = {}
        self.factor_of: dict[int, str] = {}
        for name, ss in serials.items():
            for serial, value in zip(ss, factors[name]):
                code[(name, _hashable(value))] = serial
                self.factor_of[serial] = name
        # Fixed (single-valued) factors are not covertable's: settle them now.
        fixed = {(n, _hashable(v)) for n, v in checker.fixed.items()}
        self.bad: set[int] = {code[s] for s in checker.unusable if s in code}
        for s in fixed:
            for other in checker.conflicts.get(s, ()):
                if other in code:
                    self.bad.add(code[other])
        self.conflicts: dict[int, frozenset[int]] = {}
        for s, others in checker.conflicts.items():
            if s in code:
                self.conflicts[code[s]] = frozenset(code[o] for o in others if o in code)
        self.nogoods: dict[int, list[frozenset[int]]] = {}
        for s, groups in checker.nogoods.items():
            if s not in code:
                continue
            for g in groups:
                rest = [x for x in g if x not in fixed]
                if all(x in code for x in rest):
                    self.nogoods.setdefault(code[s], []).append(frozenset(code[x] for x in rest))
        #: serial -> (rescue serials present in covertable, satisfied by a fixed factor)
        self.requires: dict[int, tuple[tuple[int, ...], bool]] = {}
        for s, need in checker.requires.items():
            if s in code:
                met = any(r in fixed for r in need)
                self.requires[code[s]] = (tuple(code[r] for r in need if r in code
                                                and r not in checker.unusable), met)

        #: Every serial some constraint mentions (tuples without one are free).
        self.touched: frozenset[int] = frozenset(
            self.bad | set(self.conflicts) | set(self.nogoods) | set(self.requires)
            | {r for need, _ in self.requires.values() for r in need})

    def ok(self, new: Iterable[int], on: set[int]) -> bool:
        for s in new:
            if s in self.bad:
                return False
            c = self.conflicts.get(s)
            if c is not None and not c.isdisjoint(on):
                return False
            for g in self.nogoods.get(s, ()):
                if g <= on:
                    return False
        if self.requires:
            names = None
            for s, (need, met) in self.requires.items():
                if met or s not in on:
                    continue
                if any(r in on for r in need):
                    continue
                if names is None:
                    names = {self.factor_of[x] for x in on}
                if not any(self.factor_of[r] not in names and
                           self.conflicts.get(r, frozenset()).isdisjoint(on) for r in need):
                    return False
        return True


def _shrink(settings: list[Setting], refusal: Refusal, judge: Judge, model: SettingsModel,
            factors: Sequence[Factor]) -> list[Setting]:
    """A minimal subset of the row's non-neutral settings still refused by the same rule."""
    kinds = {f.name: f for f in factors}
    group = [s for s in settings if s[1] != neutral(kinds[s[0]])]
    i = 0
    while i < len(group):
        trial = group[:i] + group[i + 1:]
        again = judge.verdict(*model.split(trial))
        if again is not None and again.rule == refusal.rule:
            group = trial
        else:
            i += 1
    return group


def _tuple_estimate(domains: list[list[Any]], t: int) -> int:
    sizes = [len(d) for d in domains]
    if t <= 0 or t > len(sizes):
        return 0
    # Sum over factor combinations of the product of their sizes (elementary
    # symmetric polynomial), computed incrementally.
    e = [1] + [0] * t
    for s in sizes:
        for k in range(t, 0, -1):
            e[k] += e[k - 1] * s
    return e[t]


# --- coverage ------------------------------------------------------------------------


@dataclass
class Coverage:
    """How many required t-tuples the rows contain."""

    order: int
    required: int
    covered: int
    #: Up to 20 required tuples no row contains (empty when complete).
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.covered == self.required

    def describe(self) -> str:
        return f"{self.order}-way: {self.covered}/{self.required}"


@dataclass
class ContextPart:
    """One context's slice of a covering strategy: its factors and its analysis."""

    context: Context
    factors: list[Factor]
    analysis: Analysis


def feasible(tup: Sequence[Setting], analysis: Analysis, domains: Mapping[str, Sequence[Any]]
             ) -> bool:
    """Whether a tuple of settings can appear in a row the oracle accepts.

    Each setting usable and in its factor's domain, no conflicting pair or
    learnt refused set inside, and each requirement met inside the tuple or by
    a usable partner outside it that conflicts with none of the tuple.
    """
    names = {s[0] for s in tup}
    for s in tup:
        if s in analysis.unusable or s[1] not in domains.get(s[0], (s[1],)):
            return False
    for a, b in itertools.combinations(tup, 2):
        if (a, b) in analysis.conflicts or (b, a) in analysis.conflicts:
            return False
    on = set(tup)
    for g in analysis.nogoods:
        if all(x in on for x in g):
            return False
    for s in tup:
        need = analysis.requires.get(s)
        if not need or any(r in on for r in need):
            continue
        if not any(r[0] not in names and r not in analysis.unusable and
                   not any((r, x) in analysis.conflicts or (x, r) in analysis.conflicts
                           for x in tup) for r in need):
            return False
    return True


def coverage(rows: Sequence[Mapping[str, Any]], factors: Sequence[Factor],
             parts: Sequence[ContextPart], order: int) -> Coverage:
    """Required tuples (feasible in some context) against the tuples the rows hold.

    Factors with one value are left out (every row has them).  Rows are coded
    as value indices so the covered side is counted with numpy, one factor
    combination at a time.
    """
    multi = [f for f in factors if len(f.values) > 1]
    t = min(order, len(multi))
    if t == 0:
        return Coverage(order, 0, 0)
    index = [{_key(v): i for i, v in enumerate(f.values)} for f in multi]
    coded = np.array([[index[j].get(_key(r.get(f.name)), -1) for j, f in enumerate(multi)]
                      for r in rows], dtype=np.int64).reshape(len(rows), len(multi))
    part_domains = [{f.name: f.values for f in p.factors} for p in parts]
    required = covered = 0
    missing: list[str] = []
    for combo in itertools.combinations(range(len(multi)), t):
        fs = [multi[j] for j in combo]
        sizes = [len(f.values) for f in fs]
        if len(rows):
            code = np.zeros(len(rows), dtype=np.int64)
            valid = np.ones(len(rows), dtype=bool)
            for j, size in zip(combo, sizes):
                code = code * size + coded[:, j]
                valid &= coded[:, j] >= 0
            have = set(np.unique(code[valid]).tolist())
        else:
            have = set()
        for values in itertools.product(*(range(s) for s in sizes)):
            tup = [(f.name, f.values[v]) for f, v in zip(fs, values)]
            if not any(_feasible_in(tup, p, d) for p, d in zip(parts, part_domains)):
                continue
            required += 1
            code_v = 0
            for v, size in zip(values, sizes):
                code_v = code_v * size + v
            if code_v in have:
                covered += 1
            elif len(missing) < 20:
                missing.append(" + ".join(fmt_setting(s) for s in tup))
    return Coverage(order, required, covered, missing)


def _feasible_in(tup: Sequence[Setting], part: ContextPart,
                 domains: Mapping[str, Sequence[Any]]) -> bool:
    for name, value in tup:
        if name not in domains or value not in domains[name]:
            return False
    settings = [s for s in tup if s[0] not in _context_names(part)]
    # A judged factor (the transport) is in every row: the tuple is only
    # possible with some value of it (mapped-ram + return-path is not: one
    # needs file:, the other a live peer).
    names = {s[0] for s in settings}
    for f in part.factors:
        if f.kind in JUDGED_KINDS and f.name not in names:
            options = [v for v in domains.get(f.name, f.values)
                       if feasible(settings + [(f.name, v)], part.analysis, domains)]
            if not options:
                return False
    return feasible(settings, part.analysis, domains)


def _context_names(part: ContextPart) -> set[str]:
    return {f.name for f in part.factors if not _judged(f.kind)}


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# --- ids -------------------------------------------------------------------------------


def settings_digest(params: Mapping[str, Any]) -> str:
    """Six hex digits naming a parameter assignment (stable across machines)."""
    text = json.dumps(dict(sorted(params.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


@functools.lru_cache(maxsize=None)
def version_of(text: str) -> Version:
    """``"10.0"`` or ``"10.0.2"`` -> ``(10, 0)``."""
    parts = text.strip().split(".")
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)


__all__ = [
    "ALWAYS_ON", "Analysis", "Context", "ContextPart", "Coverage", "Exclusion", "Factor",
    "FLOW_UNSUPPORTED_CAPS", "Generated", "Judge",
    "Refusal", "SettingsModel", "analyse", "coverage", "feasible", "fmt_setting", "generate",
    "neutral", "settings_digest", "version_of",
]
