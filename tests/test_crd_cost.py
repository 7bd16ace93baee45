"""Guard: the CRD fits the API server's CEL cost budget (the emulator accepts any CRD, a real server does not).

What this catches: a ``messageExpression`` under a list's items (the rule that got the first release
refused); a rule that reaches an unbounded string, list or map; a rule or message expression whose
estimated worst-case cost, times how often it can run per object, exceeds a tenth of the API server's
per-expression limit; a schema whose rules together exceed a tenth of the whole-CRD limit. The estimate
(``tests/cel_cost.py``) follows cel-go's static estimator for every construct the CRD uses, is more
conservative where it simplifies, and refuses constructs it does not model, so a new kind of rule fails
here until it is modelled.

What it cannot catch: type errors that only the API server's CEL type-checker finds (cel-python compiles
without the schema's types); cost rules of the Kubernetes CEL libraries (``quantity``, ``url``, ``ip``:
``test_crd.py`` forbids them); a future Kubernetes release changing cel-go's cost constants or the
limits; and every other refusal of a real server that is not about CEL (the structural-schema checks of
``test_crd.py`` cover the known ones). The release is also checked on a real cluster.
"""

from __future__ import annotations

import copy

import pytest

from tests import cel_cost, crd_rules

SCHEMA = crd_rules.openapi_schema(crd_rules.load_crd())
MARGIN = 10  # the CRD must fit in a tenth of each budget
RULE_BUDGET = cel_cost.STATIC_EXPRESSION_LIMIT // MARGIN
SCHEMA_BUDGET = cel_cost.STATIC_CRD_LIMIT // MARGIN


def budget_problems(schema: crd_rules.Schema) -> list[str]:
    """Everything a real API server's cost check would hold against ``schema``, with a margin."""
    problems = []
    costs = cel_cost.rule_costs(schema)
    for rule in costs:
        if rule.kind == "messageExpression" and rule.under_list:
            problems.append(f"{rule.path}: a messageExpression under a list's items (use a static message)")
        problems += [f"{rule.path}: reaches an unbounded value: {where}" for where in rule.unbounded]
        if rule.total > RULE_BUDGET:
            problems.append(
                f"{rule.path}: estimated cost {rule.cost} x {rule.cardinality} exceeds {RULE_BUDGET}: {rule.expression}"
            )
    total = cel_cost.add(*(rule.total for rule in costs))
    if total > SCHEMA_BUDGET:
        problems.append(f"the schema's rules together cost {total}, over {SCHEMA_BUDGET}")
    return problems


def test_the_crd_fits_the_cel_cost_budget_with_a_margin() -> None:
    assert budget_problems(SCHEMA) == []


def test_the_crd_has_rules_to_estimate() -> None:
    costs = cel_cost.rule_costs(SCHEMA)
    assert len(costs) >= 15
    assert all(rule.kind == "rule" for rule in costs), "a messageExpression crept back in: is it bounded?"


def test_the_first_release_crd_is_refused() -> None:
    """The messageExpression the real API server refused ("more than 100x" over budget) fails the guard."""
    schema = copy.deepcopy(SCHEMA)
    queue = schema["properties"]["spec"]["properties"]["queues"]["items"]
    queue["x-kubernetes-validations"][0]["messageExpression"] = (
        "'minReplicas (' + string(self.minReplicas) + ') must not exceed maxReplicas ('"
        " + string(self.maxReplicas) + ')'"
    )
    problems = budget_problems(schema)
    assert any("messageExpression under a list's items" in p for p in problems), problems
    assert any("estimated cost 18446744073709551615" in p for p in problems), problems  # unknown size: saturated
    assert any("together cost" in p for p in problems), problems


def test_an_unbounded_string_in_a_rule_is_refused() -> None:
    schema = copy.deepcopy(SCHEMA)
    del schema["properties"]["spec"]["properties"]["app"]["maxLength"]
    problems = budget_problems(schema)
    assert any("string without maxLength" in p and "properties[app]" in p for p in problems), problems


def test_a_rule_that_is_quadratic_in_the_queues_is_refused() -> None:
    """Every queue compared with every queue, under the queue items: 32 x 32 x 32 string comparisons."""
    schema = copy.deepcopy(SCHEMA)
    queue = schema["properties"]["spec"]["properties"]["queues"]
    queue["maxItems"] = 1000
    schema["properties"]["spec"]["x-kubernetes-validations"].append(
        {"rule": "self.queues.all(a, self.queues.all(b, a.name.matches(b.name)))", "message": "quadratic"}
    )
    problems = budget_problems(schema)
    assert any("quadratic" in p or "self.queues.all(a" in p for p in problems), problems


# --- the estimator itself, against costs worked out by hand from cel-go's rules --------------------------


@pytest.mark.parametrize(
    ("expression", "cost"),
    [
        ("true", 0),
        ("self.minReplicas <= self.maxReplicas", 5),  # two selects (2 each: ident + field) and a comparison
        ("has(self.url)", 2),  # the presence test and the ident
        ("!has(self.url) || self.url.startsWith('sentinel://')", 3 + 2 + 2),  # startsWith: ceil(11 * 0.1) = 2
        ("self.url.matches('^a+$')", 2 + 11 * 1),  # ceil((100 + 1) * 0.1) = 11 times ceil(4 * 0.25) = 1
        ("self.names.all(n, n.contains('x'))", 2 + 1 + 10 * (3 + 2)),  # range, result, 10 x (loop + body)
        ("self.names.exists(n, n == 'a')", 2 + 1 + 10 * (4 + 2)),
        ("'a' + string(self.minReplicas)", cel_cost.UNKNOWN),
        ("size(self.names) <= 10", 2 + 1 + 1),
        ("self.url in ['a', 'b']", 2 + 10 + 2),
    ],
)
def test_estimates_follow_cel_go(expression: str, cost: int) -> None:
    schema = {
        "type": "object",
        "properties": {
            "minReplicas": {"type": "integer"},
            "maxReplicas": {"type": "integer"},
            "url": {"type": "string", "maxLength": 100},
            "names": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 10}},
        },
    }
    estimated, _ = cel_cost.Estimator(schema).estimate(expression)
    assert estimated == cost


def test_unknown_functions_are_refused_not_guessed() -> None:
    with pytest.raises(cel_cost.Unsupported):
        cel_cost.Estimator({"type": "string", "maxLength": 5}).estimate("self.lowerAscii() == 'a'")


def test_cardinality_multiplies_through_nested_lists() -> None:
    schema = {
        "type": "object",
        "properties": {
            "outer": {
                "type": "array",
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {
                        "inner": {
                            "type": "array",
                            "maxItems": 5,
                            "items": {
                                "type": "object",
                                "x-kubernetes-validations": [{"rule": "self.a < 3"}],
                                "properties": {"a": {"type": "integer"}},
                            },
                        }
                    },
                },
            }
        },
    }
    (rule,) = cel_cost.rule_costs(schema)
    assert (rule.cost, rule.cardinality, rule.total) == (3, 20, 60)
