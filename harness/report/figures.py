"""The few figures of a cell that people compare across runs, and where the
cell sits in the report's grid.

results.json keeps everything a cell measured; the HTML report, the history
database and ``mharness compare`` all need the same handful of numbers
(QEMU's downtime, the total time, the bytes sent, the guest-observed gap,
the limit and tolerance they were judged against).  Reading them in one place
keeps the three readers agreeing on what "downtime" means.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from harness.results import CellResult

log = logging.getLogger(__name__)

#: Verdicts that count as a cell not working (flaky passed on rerun).
FAILING = ("failed", "error")


@dataclass(frozen=True)
class KeyFigures:
    """A cell's headline figures; None where the cell did not get that far."""

    downtime_ms: float | None = None
    total_time_ms: float | None = None
    setup_time_ms: float | None = None
    transferred_bytes: int | None = None
    guest_gap_ms: float | None = None
    downtime_limit_ms: float | None = None
    tolerance_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: this runs for every cell of every report.
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    return None


def key_figures(result: CellResult) -> KeyFigures:
    """The headline figures of ``result``: QEMU's own (from ``query-migrate``
    after completion) and the downtime check's (limit, tolerance, guest gap)."""
    f = result.figures
    dt = result.check("downtime")
    dtf = dt.figures if dt else {}
    transferred = _num(f.get("ram_transferred"))
    return KeyFigures(
        downtime_ms=_num(f.get("downtime_ms")) if _num(f.get("downtime_ms")) is not None
        else _num(dtf.get("qemu_downtime_ms")),
        total_time_ms=_num(f.get("total_time_ms")),
        setup_time_ms=_num(f.get("setup_time_ms")),
        transferred_bytes=int(transferred) if transferred is not None else None,
        guest_gap_ms=_num(dtf.get("guest_gap_ms")),
        downtime_limit_ms=_num(dtf.get("downtime_limit_ms")),
        tolerance_ms=_num(dtf.get("tolerance_ms")),
    )


def capabilities_label(inputs: dict[str, Any]) -> str:
    """The capabilities a cell turned on, ``events`` left out (every cell has it)."""
    caps = inputs.get("capabilities") or {}
    on = sorted(k for k, v in caps.items() if v and k != "events")
    return "+".join(on) or "plain"


def grid_row(inputs: dict[str, Any], cell_id: str) -> str:
    """The grid's row: the target, with the builds when they are not one."""
    target = inputs.get("target")
    name = target.get("name") if isinstance(target, dict) else None
    if not name:
        return cell_id.split("-")[0]
    src, dst = inputs.get("src_build"), inputs.get("dst_build")
    builds = src if src == dst else f"{src}\u2192{dst}"
    return f"{name} \u00b7 {builds}" if builds else str(name)


def grid_column(inputs: dict[str, Any]) -> str:
    """The grid's column: capabilities, mode and transport."""
    if not inputs:
        return "?"
    return " \u00b7 ".join([capabilities_label(inputs), str(inputs.get("mode") or "precopy"),
                            str(inputs.get("transport") or "?")])
