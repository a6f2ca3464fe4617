"""The model of a covering strategy: factors, their values, and the settings
they turn into.

A *factor* is one dimension of the array (the target, the transport, a
capability, a parameter...); a *setting* is one factor with one value.  The
rest of the package reasons about settings; :class:`SettingsModel` is the one
place that knows how a set of settings becomes the capabilities, parameters,
transport and mode that the :class:`~harness.matrix.covering.judge.Judge` is
asked about, so the oracle sees a row exactly as the cell would be configured.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Setting = tuple[str, Any]  # (factor name, value)

#: Kinds that select the context or the cell's shape, not what QEMU is told
#: (``dst-start``: the destination's command line, ``-S`` or not).
CONTEXT_KINDS = ("target", "transport", "src-build", "dst-build", "dst-start")
#: Of those, the kinds the oracle still judges (rules tie capabilities to the
#: transport: harness.migration.transports).
JUDGED_KINDS = ("transport", "mode")


@dataclass(frozen=True)
class Factor:
    """One dimension of a covering array.

    ``kind`` is ``target``, ``transport``, ``src-build``, ``dst-build``,
    ``capset``, ``paramset``, ``capability``, ``parameter``, ``mode`` or
    ``dst-start``.  A
    capability's values are ``(False, True)``; a parameter's are what the
    matrix lists (``None``: leave QEMU's default).
    """

    name: str
    kind: str
    values: tuple[Any, ...]


def judged(kind: str) -> bool:
    """Whether settings of this factor kind go to the oracle."""
    return kind not in CONTEXT_KINDS or kind in JUDGED_KINDS


def neutral(factor: Factor) -> Any:
    """The value that sends QEMU nothing: off for a capability, precopy for a
    mode, unset otherwise."""
    if factor.kind == "capability":
        return False
    return "" if factor.kind == "mode" else None


def fmt_setting(s: Setting) -> str:
    """A setting as the exclusion list and the coverage report spell it."""
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


class SettingsModel:
    """Turns settings into capabilities and parameters for the judge."""

    def __init__(self, factors: Sequence[Factor],
                 paramsets: Mapping[str, Mapping[str, Any]] | None = None, *,
                 base_caps: Mapping[str, bool] | None = None,
                 base_params: Mapping[str, Any] | None = None,
                 capsets: Mapping[str, Mapping[str, bool]] | None = None,
                 transport_params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.factors = {f.name: f for f in factors}
        self.paramsets = paramsets or {}
        self.capsets = capsets or {}
        #: What every cell gets before its factors (the matrix's defaults).
        self.base_caps = {k: True for k, v in (base_caps or {}).items() if v}
        self.base_params = dict(base_params or {})
        #: A transport's own parameters over those (defaults.transport-parameters).
        self.transport_params = {t: dict(p) for t, p in (transport_params or {}).items()}

    def split(self, settings: Iterable[Setting]
              ) -> tuple[dict[str, bool], dict[str, Any], str | None, str]:
        """Capabilities, parameters, and (if among the settings) the transport
        and the migration mode ("" = precopy)."""
        settings = list(settings)
        caps: dict[str, bool] = dict(self.base_caps)
        params: dict[str, Any] = dict(self.base_params)
        for name, value in settings:
            if self.factors[name].kind == "transport":
                params.update(self.transport_params.get(value, {}))
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


__all__ = ["CONTEXT_KINDS", "JUDGED_KINDS", "Factor", "Setting", "SettingsModel",
           "fmt_setting", "judged", "neutral"]
