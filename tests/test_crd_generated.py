"""crds/workerpool.yaml and the chart's files/workerpool-crd.yaml are generated from the model: neither is stale.

``make crd`` (workerpool_operator.crd) writes both. A stale file is reported field by field (a path and both
values), then byte for byte (the layout). The per-queue scaling block is checked to be the pool-wide one without
defaults. (Before the files were generated, the same comparison showed the hand-written CRD and the generated
one to differ only in the places its commit message justifies.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from tests import crd_rules
from workerpool_operator import crd

SCHEMA = ".spec.versions[0].schema.openAPIV3Schema.properties.spec.properties"
GENERATED = [crd_rules.CRD_PATH, crd_rules.REPO / "helm" / "workerpool-operator" / "files" / "workerpool-crd.yaml"]


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every place where two YAML documents differ (1 and 1.0 are the same number), as `path: what`."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(expected.keys() | actual.keys(), key=str):
            if key not in actual:
                found.append(f"{path}.{key}: only in the file: {expected[key]!r}")
            elif key not in expected:
                found.append(f"{path}.{key}: only generated: {actual[key]!r}")
            else:
                found += differences(expected[key], actual[key], f"{path}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            line
            for i, pair in enumerate(zip(expected, actual, strict=True))
            for line in differences(*pair, f"{path}[{i}]")
        ]
    same_number = isinstance(expected, int | float) and isinstance(actual, int | float)
    same_number = same_number and not isinstance(expected, bool) and not isinstance(actual, bool)
    if expected != actual or (type(expected) is not type(actual) and not same_number):
        return [f"{path}: {expected!r} in the file, {actual!r} generated"]
    return []


def test_the_comparison_reports_every_kind_of_difference() -> None:
    found = differences(
        {"a": 1, "b": [1, 2], "c": {"d": "x"}, "e": True}, {"a": 1.0, "b": [1], "c": {"d": "y"}, "f": 0}
    )
    assert found == [
        ".b: [1, 2] in the file, [1] generated",
        ".c.d: 'x' in the file, 'y' generated",
        ".e: only in the file: True",
        ".f: only generated: 0",
    ]
    assert differences({"a": True}, {"a": 1}) == [".a: True in the file, 1 generated"]


@pytest.mark.parametrize("path", GENERATED, ids=lambda path: str(path.relative_to(crd_rules.REPO)))
def test_the_generated_file_is_up_to_date(path: Path) -> None:
    """crds/workerpool.yaml and the chart's copy are the generator's output, byte for byte."""
    text = path.read_text()
    found = differences(yaml.safe_load(text), crd.crd())
    assert found == [], f"{path.name} is stale: run `make crd`\n" + "\n".join(found)
    assert text == crd.render(), f"{path.name} differs from the generator's output in its layout: run `make crd`"
    assert text.startswith(crd.HEADER)


def test_main_writes_each_file_it_is_given(tmp_path: Path) -> None:
    paths = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert crd.main([str(path) for path in paths]) == 0
    assert [path.read_text() for path in paths] == [crd.render()] * 2


def test_a_stale_file_is_reported_by_field() -> None:
    """The staleness test names what changed, not only that something did."""
    old = crd.crd()
    schema = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    schema["queues"]["maxItems"] = 64
    del schema["scaling"]["properties"]["paused"]
    assert differences(old, crd.crd()) == [
        f"{SCHEMA}.queues.maxItems: 64 in the file, 32 generated",
        f"{SCHEMA}.scaling.properties.paused: only generated: "
        + repr(crd.spec_schema()["properties"]["scaling"]["properties"]["paused"]),
    ]


def _without_defaults(node: Any) -> Any:
    """A schema without its defaults, down its object fields (a list's items keep theirs: the same type)."""
    if not isinstance(node, dict):
        return node
    kept = {key: value for key, value in node.items() if key != "default"}
    if "properties" in kept:
        kept["properties"] = {name: _without_defaults(child) for name, child in kept["properties"].items()}
    return kept


def test_the_per_queue_scaling_block_is_the_pool_wide_one_without_defaults() -> None:
    spec = crd.spec_schema()["properties"]
    pool_wide, per_queue = spec["scaling"], spec["queues"]["items"]["properties"]["scaling"]
    assert "default" in pool_wide["properties"]["scaleUp"]["properties"]["pods"]
    assert _without_defaults(pool_wide) | {"description": per_queue["description"]} == per_queue
    assert "required" not in per_queue


# --- the conversion from pydantic's JSON schema, on models made for the purpose ---------------------------------


class _Inner(BaseModel):
    """A docstring for Python readers only."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    size: Annotated[int, Field(ge=1, le=9)] = 3
    """How big."""
    note: Annotated[str, Field(max_length=8)] | None = None


class _Outer(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    inner: _Inner = _Inner()
    """Holds defaults: written `{}` so the API server fills them in."""
    empty: _Inner = _Inner(size=3)
    names: Annotated[list[Annotated[str, Field(max_length=8)]], Field(max_length=4)] = []
    ratio: float = 2.0
    kind: Literal["a", "b"] | None = None


def _structural(model: type[BaseModel]) -> dict[str, Any]:
    generated = model.model_json_schema(mode="validation")
    return crd.structural(generated, generated.get("$defs", {}))


def test_structural_inlines_unwraps_and_writes_defaults_as_the_api_server_applies_them() -> None:
    schema = _structural(_Outer)
    inner = schema["properties"]["inner"]
    assert inner == {
        "type": "object",
        "description": "Holds defaults: written `{}` so the API server fills them in.",
        "default": {},
        "properties": {
            "size": {"type": "integer", "description": "How big.", "default": 3, "minimum": 1, "maximum": 9},
            "note": {"type": "string", "maxLength": 8},
        },
    }
    assert "description" not in schema["properties"]["empty"]  # the model's docstring is not the field's
    assert "default" not in schema["properties"]["names"]  # an empty list: no default
    assert schema["properties"]["ratio"]["default"] == 2 and isinstance(schema["properties"]["ratio"]["default"], int)
    assert schema["properties"]["kind"] == {"type": "string", "enum": ["a", "b"]}
    assert "title" not in str(schema) and "additionalProperties" not in schema


def test_structural_refuses_what_a_structural_schema_cannot_say() -> None:
    class Open(BaseModel):
        anything: dict[str, Any] = {}

    class Constant(BaseModel):
        kind: Annotated[str, Field(json_schema_extra={"const": "x"})] = "x"

    with pytest.raises(ValueError, match=r"crd_keywords\.raw_object"):
        _structural(Open)
    with pytest.raises(ValueError, match="'const' has no place in a structural schema"):
        _structural(Constant)
