"""What the covering-array generator relies on in covertable, checked against
the installed covertable.

``harness/matrix/covering/covertable_adapter.py`` overrides two *private*
hooks of ``covertable.Controller`` (``_storable_check``, ``_forward_check``)
and reads some of its attributes; nothing in covertable promises them.  If an
upgrade renamed a hook, the override would simply never be called and the
arrays would quietly contain cells QEMU refuses.  So every assumption is
checked here, by name, by signature and by behaviour on a tiny model, and each
failure says what changed and where to adapt.
"""
from __future__ import annotations

import inspect
import itertools
from importlib.metadata import version
from typing import Any

import pytest
from covertable import Controller, criteria

from harness.matrix.covering.covertable_adapter import (
    CONTROLLER_ATTRIBUTES,
    HOOKS,
    CheckedController,
    FirstFit,
    SaltedSorter,
)
from harness.matrix.covering.exclusions import Analysis, Checker
from harness.matrix.covering.judge import Refusal

COVERTABLE = version("covertable")
ADAPTER = "harness/matrix/covering/covertable_adapter.py"


def changed(what: str) -> str:
    return (f"covertable {COVERTABLE} changed what the covering generator relies on: {what}. "
            f"Adapt {ADAPTER} (HOOKS, CONTROLLER_ATTRIBUTES, CheckedController) to it, "
            "or keep covertable within the range pinned in pyproject.toml.")


# A tiny model: a=2 conflicts with b=1; c=1 requires b=1 (so a=2 never meets c=1,
# and b=0 never meets c=1).
FACTORS: dict[str, list[Any]] = {"a": [0, 1, 2], "b": [0, 1], "c": [0, 1]}
ANALYSIS = Analysis(conflicts={(("a", 2), ("b", 1)): Refusal("test.conflict", "a=2 + b=1")},
                    requires={("c", 1): (("b", 1),)})


def allowed(row: dict[str, Any]) -> bool:
    return not (row["a"] == 2 and row["b"] == 1) and (row["c"] == 0 or row["b"] == 1)


def pairs(row: dict[str, Any]) -> set[tuple[tuple[str, Any], ...]]:
    return set(itertools.combinations(sorted(row.items()), 2))


#: Every pair some allowed row holds: what a complete 2-way array must cover.
REQUIRED = set().union(*(pairs(dict(zip(FACTORS, values)))
                         for values in itertools.product(*FACTORS.values())
                         if allowed(dict(zip(FACTORS, values)))))


# --- names and signatures -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_the_hook_exists_on_covertables_controller(name: str) -> None:
    hook = inspect.getattr_static(Controller, name, None)
    assert inspect.isfunction(hook), changed(
        f"Controller.{name} no longer exists, so CheckedController.{name} is never called "
        "and the oracle's constraints are not enforced")


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_the_hook_keeps_its_signature(name: str) -> None:
    hook = getattr(Controller, name, None)
    if hook is None:
        pytest.fail(changed(f"Controller.{name} no longer exists"))
    theirs = inspect.signature(hook)
    assert tuple(theirs.parameters) == HOOKS[name], changed(
        f"Controller.{name} is now {name}{theirs}; the adapter expects "
        f"({', '.join(HOOKS[name])})")
    ours = inspect.signature(getattr(CheckedController, name))
    assert tuple(ours.parameters) == HOOKS[name], \
        f"{ADAPTER}: CheckedController.{name}{ours} does not match HOOKS"
    if "row" in theirs.parameters:
        assert theirs.parameters["row"].default is None, changed(
            f"Controller.{name}'s 'row' no longer defaults to None (the row being built)")


def test_every_private_override_is_a_listed_hook() -> None:
    """A private method the adapter overrides but HOOKS does not list is a hook
    nobody checks."""
    overridden = {name for name, value in vars(CheckedController).items()
                  if name.startswith("_") and not name.startswith("__") and callable(value)}
    assert overridden == set(HOOKS), \
        f"{ADAPTER}: CheckedController overrides {sorted(overridden)}, HOOKS lists " \
        f"{sorted(HOOKS)}: list every private hook it relies on"


def test_the_constructor_takes_the_keywords_the_adapter_passes() -> None:
    params = inspect.signature(Controller.__init__).parameters
    missing = [k for k in ("factors", "strength", "sorter", "criterion", "salt")
               if k not in params]
    assert not missing, changed(f"Controller() no longer takes {', '.join(missing)}")
    assert hasattr(criteria, "greedy") and callable(getattr(criteria.greedy, "extract", None)), \
        changed("covertable.criteria.greedy.extract(ctrl) is gone")


def test_the_controller_attributes_the_adapter_reads() -> None:
    ctrl = Controller(FACTORS, strength=2, sorter=SaltedSorter, criterion=criteria.greedy,
                      salt="0")
    absent = [a for a in CONTROLLER_ATTRIBUTES if not hasattr(ctrl, a)]
    assert not absent, changed(f"Controller has no attribute {', '.join(absent)}")
    # serials: factor -> one integer per value, in the values' order; parents: back.
    assert list(ctrl.serials) == list(FACTORS) and all(
        len(ctrl.serials[k]) == len(v) and all(isinstance(s, int) for s in ctrl.serials[k])
        for k, v in FACTORS.items()), changed(f"Controller.serials is now {ctrl.serials!r}")
    assert all(ctrl.parents[s] == k for k, ss in ctrl.serials.items() for s in ss), \
        changed("Controller.parents no longer maps a serial to its factor")
    assert ctrl.factors == FACTORS and ctrl.factor_length == len(FACTORS), \
        changed("Controller.factors/factor_length no longer hold the model as given")
    # incomplete: every 2-tuple of serials, sorted within, in the sorter's order.
    tuples = [tuple(sorted(p)) for x, y in itertools.combinations(FACTORS, 2)
              for p in itertools.product(ctrl.serials[x], ctrl.serials[y])]
    assert list(ctrl.incomplete) == SaltedSorter.sort(tuples, salt="0"), changed(
        "Controller.incomplete is no longer the sorted serial tuples in the order "
        "sorter.sort(pairs, salt=...) returns")
    assert isinstance(ctrl.row, dict) and hasattr(ctrl.row, "invalid_pairs"), \
        changed("Controller.row is no longer a dict with invalid_pairs")


# --- behaviour ---------------------------------------------------------------------------


class Spy(CheckedController):
    """Counts how often covertable asks each hook."""

    calls: dict[str, int]

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.calls = dict.fromkeys(HOOKS, 0)
        super().__init__(*args, **kw)

    def _storable_check(self, candidate: Any, row: Any = None) -> bool:
        self.calls["_storable_check"] += 1
        return super()._storable_check(candidate, row)

    def _forward_check(self, snapshot: Any) -> bool:
        self.calls["_forward_check"] += 1
        return super()._forward_check(snapshot)


@pytest.mark.parametrize("criterion", [criteria.greedy, FirstFit], ids=["greedy", "first-fit"])
def test_a_tiny_model_honours_the_constraints_and_covers_every_pair(criterion: Any) -> None:
    ctrl = Spy(FACTORS, Checker(ANALYSIS), strength=2, sorter=SaltedSorter,
               criterion=criterion, salt="0")
    rows = ctrl.make()
    assert rows and all(isinstance(r, dict) and set(r) == set(FACTORS) for r in rows), \
        changed(f"make() no longer returns complete rows as dicts: {rows!r}")
    never = {k for k, n in ctrl.calls.items() if n == 0}
    assert not never, changed(f"make() never called {', '.join(sorted(never))}: the "
                              "override does not enforce the constraints any more")
    refused = [r for r in rows if not allowed(r)]
    assert not refused, changed(f"rows break a constraint the hooks refused: {refused}")
    covered = set().union(*(pairs(r) for r in rows))
    assert covered == REQUIRED, changed(
        f"not every pair covered: missing {sorted(REQUIRED - covered)}")


def test_the_same_salt_gives_the_same_rows() -> None:
    def rows(salt: str) -> list[dict[str, Any]]:
        return CheckedController(FACTORS, Checker(ANALYSIS), strength=2, sorter=SaltedSorter,
                                 criterion=criteria.greedy, salt=salt).make()

    assert rows("0") == rows("0"), changed("the same model and salt give different rows")
