"""The rule oracle asked as the cell flow asks: would QEMU take these settings?

A covering array must never hold a cell QEMU would refuse, and the constraints
that keep such cells out are not written by hand: they come from here.  The
:class:`Judge` mirrors what ``harness.migration.driver.configure`` sends on each
side, so its verdict is the verdict the real cell would meet; a refusal names
the rule (``Refusal.rule``) so the exclusion list can say why, and the probe
suite can test the same refusal against a real QEMU.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.migration.modes import CANCEL_RETRY, mode_needs
from harness.migration.transports import (FLOW_TRANSPORT_UNSUPPORTED, SAVE_RESTORE,
                                          transport_refusal)
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

log = logging.getLogger(__name__)

#: The harness turns this on for every cell (driver.BASE_CAPABILITIES).
ALWAYS_ON = ("events",)


@dataclass(frozen=True)
class Context:
    """What the oracle's verdicts depend on besides the settings themselves."""

    src_version: Version
    dst_version: Version
    accel: str

    def describe(self) -> str:
        ver = _v(self.src_version) if self.src_version == self.dst_version \
            else f"{_v(self.src_version)}->{_v(self.dst_version)}"
        return f"QEMU {ver}, {self.accel}"


@dataclass(frozen=True)
class Refusal:
    """Why a set of settings cannot make a cell: a rule id and a sentence."""

    rule: str
    reason: str


def _v(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


@functools.lru_cache(maxsize=None)
def version_of(text: str) -> Version:
    """``"10.0"`` or ``"10.0.2"`` -> ``(10, 0)``: the oracle's rules change
    with major.minor only."""
    parts = text.strip().split(".")
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)


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


__all__ = ["ALWAYS_ON", "Context", "Judge", "Refusal", "version_of"]
