"""The engine's fast NamedTuple builds are checked here, since nothing checks them when they run.

``decide`` runs for every due queue at every poll, so ``engine/`` builds its NamedTuples with ``tuple.__new__``
(``_new(Decision, (...))``): the same object as ``Decision(...)``, in C, at a third of the cost (Decision's 12
fields: 0.11 us, against 0.32 for ``Decision(...)`` and 0.19 for ``Decision._make``, which checks the length;
up to six builds per decision: for 10,000 decisions, 13 ms of a 50 ms budget the slow way). It takes any tuple:
a field left out, one too many or two swapped would only show where the value is read. This test reads every
such build in the engine's source and holds it to the class's ``_fields``: as many values as fields, and a value
named like a field (``plan.drain``, ``idle_since``) in that field's place.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "operator" / "workerpool_operator" / "engine"


def builds() -> Iterator[tuple[str, int, type, ast.Tuple]]:
    """(module, line, class, the values) for every ``_new(Class, (values...))`` in engine/."""
    for path in sorted(ENGINE.glob("*.py")):
        module = importlib.import_module(f"workerpool_operator.engine.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_new"):
                continue
            assert module.__dict__["_new"] is tuple.__new__, f"{path.name}: _new is tuple.__new__"
            kind, values = node.args
            assert isinstance(values, ast.Tuple), f"{path.name}:{node.lineno}: the values are a tuple literal"
            cls = resolve(kind, module.__dict__)
            assert isinstance(cls, type) and issubclass(cls, tuple), f"{path.name}:{node.lineno}: a NamedTuple"
            yield path.name, node.lineno, cls, values


def resolve(expression: ast.expr, names: dict[str, object]) -> object:
    """What a build names: ``Decision``, or ``drain.Plan``, looked up in the module's namespace."""
    if isinstance(expression, ast.Name):
        return names[expression.id]
    assert isinstance(expression, ast.Attribute), ast.dump(expression)
    return getattr(resolve(expression.value, names), expression.attr)


def named(value: ast.expr) -> str | None:
    """The name a value goes by: ``idle_since``, ``plan.drain`` -> ``drain``; None for anything else."""
    if isinstance(value, ast.Name):
        return value.id
    if isinstance(value, ast.Attribute):
        return value.attr
    return None


BUILDS = list(builds())


def test_the_engine_builds_its_namedtuples_fast_in_several_places() -> None:
    assert len(BUILDS) >= 10
    assert {cls.__name__ for _, _, cls, _ in BUILDS} >= {"Decision", "QueueState", "Learned", "Plan", "Sizes"}


@pytest.mark.parametrize(("where", "line", "cls", "values"), BUILDS, ids=[f"{w}:{n}" for w, n, _, _ in BUILDS])
def test_every_fast_build_gives_each_field_its_value(where: str, line: int, cls: type, values: ast.Tuple) -> None:
    fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    assert len(values.elts) == len(fields), f"{where}:{line}: {cls.__name__} has {len(fields)} fields"
    for place, value in enumerate(values.elts):
        name = named(value)
        if name in fields:
            assert fields.index(name) == place, f"{where}:{line}: {name} is field {fields.index(name)}, not {place}"


def test_the_check_catches_a_missing_and_a_swapped_value() -> None:
    _, _, cls, values = next(b for b in BUILDS if b[2].__name__ == "QueueState")
    fields = cls._fields  # type: ignore[attr-defined]
    short = values.elts[:-1]
    assert len(short) != len(fields)
    swapped = list(values.elts)
    first, second = [place for place, value in enumerate(swapped) if named(value) in fields][:2]
    swapped[first], swapped[second] = swapped[second], swapped[first]
    assert any(named(v) in fields and fields.index(named(v)) != i for i, v in enumerate(swapped))
