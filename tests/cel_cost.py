"""A conservative static estimate of CEL rule costs, the way the API server estimates them at CRD create.

No API server runs here, and the emulator accepts any CRD. A real API server (apiextensions-apiserver's
CRD validation) compiles every ``rule`` and ``messageExpression`` of ``x-kubernetes-validations`` and
estimates its worst-case cost with cel-go's static estimator (``checker/cost.go``), from the bounds the
schema declares (``maxLength``, ``maxItems``, ``maxProperties``). It then refuses the CRD when

- one rule's estimate, multiplied by how many times it can run per object (its *cardinality*: the
  ``maxItems``/``maxProperties`` of every list and map above it), exceeds ``STATIC_EXPRESSION_LIMIT``;
- one ``messageExpression``'s estimate exceeds the same limit;
- the sum over the whole schema exceeds ``STATIC_CRD_LIMIT``.

This module reproduces cel-go's rules for the subset of CEL our CRD uses (literals, fields, ``has``,
comparisons, ``in``, ``&&``/``||``/``!``/``?:``, ``+``, ``size``, ``string``/``int``, ``contains``,
``startsWith``, ``endsWith``, ``matches``, indexing, list literals, and the ``all``/``exists``/
``exists_one``/``map``/``filter`` macros). It never guesses: an unknown function or syntax raises
:class:`Unsupported`, so a new construct in the CRD fails the guard until it is modelled here.

Where it is *more* conservative than the API server (so it can refuse what a server would accept, never
the reverse, as far as the model goes):
- a ``messageExpression`` is multiplied by its cardinality too;
- ``has()`` always costs 1 (newer servers may make presence tests free);
- a string without ``maxLength`` counts as the whole request size (3 MiB), whatever its ``format``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celpy import celparser
from lark import Token, Tree

# The API server's limits (k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation).
STATIC_EXPRESSION_LIMIT = 10_000_000  # StaticEstimatedCostLimit, per expression (times its cardinality)
STATIC_CRD_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit, the whole schema
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # what an unbounded string or list is assumed to be able to hold

UNKNOWN = 2**64 - 1  # cel-go's unknown size: math.MaxUint64, and every sum or product saturates there

# cel-go's cost constants (common/cost.go).
SELECT_AND_IDENT_COST = 1
CONST_COST = 0
LIST_CREATE_BASE_COST = 10
MAP_CREATE_BASE_COST = 30
STRING_TRAVERSAL_COST_FACTOR = 0.1
REGEX_STRING_LENGTH_COST_FACTOR = 0.25

Schema = dict[str, Any]


class Unsupported(ValueError):
    """A CEL construct this estimator does not model: extend the model before using it in the CRD."""


def add(*values: int) -> int:
    total = 0
    for value in values:
        total = UNKNOWN if value >= UNKNOWN - total else total + value
    return total


def mul(a: int, b: int) -> int:
    if a and b > UNKNOWN // a:
        return UNKNOWN
    return a * b


def by_factor(size: int, factor: float) -> int:
    """cel-go's MultiplyByCostFactor: ceil(size * factor), saturating."""
    if size >= UNKNOWN:
        return UNKNOWN
    return min(UNKNOWN, math.ceil(size * factor))


@dataclass(frozen=True)
class Shape:
    """What the estimator knows of a value: its kind, its largest size (``UNKNOWN`` when nothing bounds it),
    and the schema it comes from (to follow fields and items)."""

    kind: str  # string, list, map, object, int, number, bool, dyn
    size: int = UNKNOWN
    schema: Schema | None = None
    item: Shape | None = None  # for literal lists: what their items are


SCALAR = Shape("int", 1)
BOOL = Shape("bool", 1)


def schema_shape(schema: Schema | None, path: str, touched: list[str]) -> Shape:
    """The shape of a value described by ``schema``; unbounded strings, lists and maps are recorded."""
    if schema is None:
        return Shape("dyn")
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        size = schema.get("maxLength")
        if size is None:
            touched.append(f"{path}: int-or-string without maxLength")
        return Shape("dyn", size if size is not None else MAX_REQUEST_BYTES, schema)
    if kind == "string":
        if "maxLength" in schema:
            return Shape("string", int(schema["maxLength"]), schema)
        if "enum" in schema:
            return Shape("string", max(len(str(v)) for v in schema["enum"]), schema)
        touched.append(f"{path}: string without maxLength")
        return Shape("string", MAX_REQUEST_BYTES, schema)
    if kind == "array":
        if "maxItems" not in schema:
            touched.append(f"{path}: list without maxItems")
        return Shape("list", int(schema.get("maxItems", MAX_REQUEST_BYTES)), schema)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        if "maxProperties" not in schema:
            touched.append(f"{path}: map without maxProperties")
        return Shape("map", int(schema.get("maxProperties", MAX_REQUEST_BYTES)), schema)
    if kind == "object":
        return Shape("object", UNKNOWN, schema)
    if kind in ("integer", "number", "boolean"):
        return Shape({"integer": "int", "number": "number", "boolean": "bool"}[kind], 1, schema)
    return Shape("dyn", UNKNOWN, schema)


def _root_metadata() -> Schema:
    """What CEL sees of ``self.metadata`` at the root: name and generateName (253 characters at most)."""
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 253},
            "generateName": {"type": "string", "maxLength": 253},
        },
    }


@dataclass
class Estimator:
    """Estimates one expression evaluated with ``self`` bound to a value of ``schema``."""

    schema: Schema
    at_root: bool = False
    touched: list[str] = field(default_factory=list)  # unbounded strings, lists and maps the rule reaches

    def estimate(self, expression: str) -> tuple[int, Shape]:
        tree = celparser.CELParser().parse(expression)
        return self._node(tree, {"self": schema_shape(self.schema, "self", self.touched)})

    # --- the grammar -------------------------------------------------------------------------------

    def _node(self, node: Tree[Token] | Token, scope: dict[str, Shape]) -> tuple[int, Shape]:
        if isinstance(node, Token):
            raise Unsupported(f"unexpected token {node!r}")
        handler = getattr(self, f"_{node.data}", None)
        if handler is None:
            raise Unsupported(f"CEL syntax {node.data!r} is not modelled")
        result: tuple[int, Shape] = handler(node.children, scope)
        return result

    def _passthrough(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) != 1:
            raise Unsupported(f"unexpected arity {len(children)}")
        return self._node(children[0], scope)

    def _expr(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) == 1:
            return self._node(children[0], scope)
        cond, _ = self._node(children[0], scope)
        yes, yes_shape = self._node(children[1], scope)
        no, no_shape = self._node(children[2], scope)
        return add(cond, max(yes, no)), _union(yes_shape, no_shape)

    def _logical(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) == 1:
            return self._node(children[0], scope)
        left, _ = self._node(children[0], scope)
        right, _ = self._node(children[1], scope)
        return add(left, right), BOOL  # no cost of its own; the most is both sides

    _conditionalor = _logical
    _conditionaland = _logical

    def _relation(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) == 1:
            return self._node(children[0], scope)
        operator = children[0]
        left, left_shape = self._node(operator.children[0], scope)
        right, right_shape = self._node(children[1], scope)
        if operator.data == "relation_in":
            return add(left, right, by_factor(right_shape.size, 1)), BOOL
        if operator.data in ("relation_eq", "relation_ne") or left_shape.kind == "string":
            smallest = min(left_shape.size, right_shape.size)
            return add(left, right, by_factor(smallest, STRING_TRAVERSAL_COST_FACTOR)), BOOL
        return add(left, right, 1), BOOL

    def _addition(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) == 1:
            return self._node(children[0], scope)
        operator = children[0]
        left, left_shape = self._node(operator.children[0], scope)
        right, right_shape = self._node(children[1], scope)
        if operator.data == "addition_add" and left_shape.kind in ("string", "list"):
            size = add(left_shape.size, right_shape.size)
            shape = Shape(left_shape.kind, size, item=left_shape.item or right_shape.item)
            if left_shape.kind == "list":
                return add(left, right, 1), shape
            return add(left, right, by_factor(size, STRING_TRAVERSAL_COST_FACTOR)), shape
        return add(left, right, 1), Shape(left_shape.kind if left_shape.kind != "dyn" else "int", 1)

    def _multiplication(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) == 1:
            return self._node(children[0], scope)
        operator = children[0]
        left, _ = self._node(operator.children[0], scope)
        right, _ = self._node(children[1], scope)
        return add(left, right, 1), SCALAR

    def _unary(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        if len(children) == 1:
            return self._node(children[0], scope)
        cost, shape = self._node(children[1], scope)
        return add(cost, 1), shape

    def _member(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        return self._passthrough(children, scope)

    _primary = _member
    _paren_expr = _member

    def _literal(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        text = str(children[0])
        if text[:1] in ("'", '"') or text[:2].lower() in ("r'", 'r"'):
            value = text[1:-1] if text[0] in "'\"" else text[2:-1]
            return CONST_COST, Shape("string", len(value))
        if text in ("true", "false"):
            return CONST_COST, BOOL
        return CONST_COST, SCALAR

    def _ident(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        name = str(children[0])
        if name not in scope:
            raise Unsupported(f"unknown variable {name!r}")
        return SELECT_AND_IDENT_COST, scope[name]

    def _list_lit(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        elements = children[0].children if children else []
        cost = LIST_CREATE_BASE_COST
        item: Shape | None = None
        for element in elements:
            element_cost, element_shape = self._node(element, scope)
            cost = add(cost, element_cost)
            item = element_shape if item is None else _union(item, element_shape)
        return cost, Shape("list", len(elements), item=item)

    def _member_dot(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        cost, shape = self._node(children[0], scope)
        return add(cost, SELECT_AND_IDENT_COST), self._field(shape, str(children[1]))

    def _member_index(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        cost, shape = self._node(children[0], scope)
        index_cost, _ = self._node(children[1], scope)
        return add(cost, index_cost, 1), self._item(shape)

    def _ident_arg(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        name = str(children[0])
        args = children[1].children if len(children) > 1 else []
        if name == "has":
            (arg,) = args
            target = _unwrap(arg)
            if target.data != "member_dot":
                raise Unsupported("has() needs a field selection")
            operand, _ = self._node(target.children[0], scope)
            return add(operand, 1), BOOL
        costs = [self._node(arg, scope) for arg in args]
        total = add(*(c for c, _ in costs))
        if name == "size":
            return add(total, 1), SCALAR
        if name in ("int", "uint", "double", "bool", "dyn"):
            return add(total, 1), SCALAR if name != "dyn" else costs[0][1]
        if name == "string":
            # cel-go has no size estimate for string(x): the result may be of any length.
            return add(total, 1), Shape("string", UNKNOWN)
        raise Unsupported(f"function {name}() is not modelled")

    def _member_dot_arg(self, children: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        target_node, name = children[0], str(children[1])
        args = children[2].children if len(children) > 2 else []
        if name in MACROS:
            return self._macro(name, target_node, args, scope)
        target, target_shape = self._node(target_node, scope)
        costs = [self._node(arg, scope) for arg in args]
        total = add(target, *(c for c, _ in costs))
        if name == "matches":
            text = by_factor(add(target_shape.size, 1), STRING_TRAVERSAL_COST_FACTOR)
            regex = by_factor(costs[0][1].size, REGEX_STRING_LENGTH_COST_FACTOR)
            return add(total, mul(text, regex)), BOOL
        if name == "contains":
            text = by_factor(target_shape.size, STRING_TRAVERSAL_COST_FACTOR)
            needle = by_factor(costs[0][1].size, STRING_TRAVERSAL_COST_FACTOR)
            return add(total, mul(text, needle)), BOOL
        if name in ("startsWith", "endsWith"):
            return add(total, by_factor(costs[0][1].size, STRING_TRAVERSAL_COST_FACTOR)), BOOL
        if name == "size":
            return add(total, 1), SCALAR
        raise Unsupported(f"method .{name}() is not modelled")

    def _macro(self, name: str, target_node: Any, args: list[Any], scope: dict[str, Shape]) -> tuple[int, Shape]:
        """cel-go expands each macro into a comprehension; these are the costs of its parts."""
        if len(args) != 2:
            raise Unsupported(f"{name}() with {len(args)} arguments is not modelled")
        range_cost, range_shape = self._node(target_node, scope)
        variable = str(_unwrap(args[0]).children[0])
        body_cost, body_shape = self._node(args[1], {**scope, variable: self._item(range_shape)})
        init, per_item, result, shape = MACROS[name](body_cost, range_shape, body_shape)
        return add(range_cost, init, result, mul(range_shape.size, per_item)), shape

    # --- navigating values ----------------------------------------------------------------------------

    def _field(self, shape: Shape, name: str) -> Shape:
        schema = shape.schema
        if schema is None:
            return Shape("dyn")
        if self.at_root and schema is self.schema and name == "metadata":
            return schema_shape(_root_metadata(), "self.metadata", self.touched)
        properties = schema.get("properties") or {}
        if name in properties:
            return schema_shape(properties[name], f"...{name}", self.touched)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return schema_shape(extra, f"...{name}", self.touched)
        raise Unsupported(f"field {name!r} is not declared in the schema")

    def _item(self, shape: Shape) -> Shape:
        if shape.item is not None:
            return shape.item
        schema = shape.schema or {}
        if shape.kind == "list" and isinstance(schema.get("items"), dict):
            return schema_shape(schema["items"], "...[*]", self.touched)
        if shape.kind == "map" and isinstance(schema.get("additionalProperties"), dict):
            return schema_shape({"type": "string", "maxLength": 253}, "...{key}", self.touched)
        return Shape("dyn")


def _unwrap(node: Any) -> Any:
    """The innermost node under a chain of single-child nodes."""
    while isinstance(node, Tree) and len(node.children) == 1 and isinstance(node.children[0], Tree):
        node = node.children[0]
    return node


def _union(a: Shape, b: Shape) -> Shape:
    size = max(a.size, b.size)
    return Shape(a.kind if a.kind == b.kind else "dyn", size, a.schema or b.schema, a.item or b.item)


# Each macro as (cost before the loop, cost per item, cost after the loop, result shape), from cel-go's
# expansions: all -> loop condition @not_strictly_false(accu) (2), step accu && p (1 + p), result accu (1);
# exists -> @not_strictly_false(!accu) (3), accu || p (1 + p); exists_one -> step p ? accu + 1 : accu
# (p + 2), result accu == 1 (2); map -> init [] (10), step accu + [f] (12 + f); filter -> step
# p ? accu + [x] : accu (p + 13).
MACROS: dict[str, Any] = {
    "all": lambda p, rng, body: (0, add(3, p), 1, BOOL),
    "exists": lambda p, rng, body: (0, add(4, p), 1, BOOL),
    "exists_one": lambda p, rng, body: (0, add(2, p), 2, BOOL),
    "map": lambda p, rng, body: (LIST_CREATE_BASE_COST, add(12, p), 1, Shape("list", rng.size, item=body)),
    "filter": lambda p, rng, body: (LIST_CREATE_BASE_COST, add(13, p), 1, Shape("list", rng.size, item=rng.item)),
}


# --- the whole schema -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleCost:
    path: str  # where the rule is declared, as the API server names it
    kind: str  # "rule" or "messageExpression"
    expression: str
    cost: int  # the estimate of one evaluation
    cardinality: int  # how many times it can run per object
    under_list: bool  # declared inside a list's items (or a map's values)
    unbounded: tuple[str, ...]  # unbounded strings, lists and maps it reaches

    @property
    def total(self) -> int:
        return mul(self.cost, self.cardinality)


def walk(
    schema: Schema, path: str = "openAPIV3Schema", cardinality: int = 1, under_list: bool = False
) -> Iterator[tuple[str, Schema, int, bool]]:
    """Every schema node with its API-server path, its cardinality and whether it is inside a list."""
    yield path, schema, cardinality, under_list
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.properties[{name}]", cardinality, under_list)
    items = schema.get("items")
    if isinstance(items, dict):
        bound = int(schema.get("maxItems", MAX_REQUEST_BYTES))
        yield from walk(items, f"{path}.items", mul(cardinality, bound), True)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        bound = int(schema.get("maxProperties", MAX_REQUEST_BYTES))
        yield from walk(extra, f"{path}.additionalProperties", mul(cardinality, bound), True)


def rule_costs(schema: Schema) -> list[RuleCost]:
    """The estimate of every rule and messageExpression of an ``openAPIV3Schema``."""
    costs = []
    for path, node, cardinality, under_list in walk(schema):
        for index, rule in enumerate(node.get("x-kubernetes-validations") or ()):
            for kind in ("rule", "messageExpression"):
                expression = rule.get(kind)
                if not expression:
                    continue
                estimator = Estimator(node, at_root=node is schema)
                cost, _ = estimator.estimate(expression)
                where = f"{path}.x-kubernetes-validations[{index}].{kind}"
                costs.append(RuleCost(where, kind, expression, cost, cardinality, under_list, tuple(estimator.touched)))
    return costs
