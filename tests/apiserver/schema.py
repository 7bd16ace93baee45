"""The shapes of the objects the emulator stores: Kubernetes 1.36's OpenAPI for built-in kinds, a CRD's
``openAPIV3Schema`` for custom resources.

Everything the API server does by type comes from here: decoding (a string where an integer belongs is refused),
quantities, which fields a JSON omits when empty, and for Server-Side Apply which lists are associative (merged
item by item, keyed by ``x-kubernetes-list-map-keys``), sets or atomic, and which maps are atomic
(``x-kubernetes-map-type``). The built-in definitions are the Kubernetes OpenAPI as kubernetes-validate ships it
(``v1.36.0-local/_definitions.json``), so list keys are Kubernetes' own, not a copy of ours.

A :class:`Node` is one schema node, resolved (``$ref`` followed); walking an object walks nodes beside it. Pure
apart from reading that file once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal, cast

KUBERNETES_VERSION = "v1.36.0"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# Defaults of list-map keys, which structured-merge-diff uses for an item that leaves its key out (``ports`` without
# ``protocol`` is keyed ``{"containerPort":80,"protocol":"TCP"}``). The API server's OpenAPI carries them
# (``+default="TCP"`` in k8s.io/api/core/v1/types.go); kubernetes-validate's copy does not.
KEY_DEFAULTS = {
    ("io.k8s.api.core.v1.ContainerPort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.ServicePort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.EndpointPort", "protocol"): "TCP",
}

Kind = Literal["string", "integer", "number", "boolean", "quantity", "int-or-string", "struct", "map", "list", "any"]
ListType = Literal["atomic", "map", "set"]


@dataclass(frozen=True, eq=False)
class Node:
    """One resolved schema node. ``go_type`` names it in decoding errors (``int32``, ``v1.EnvVar``...)."""

    kind: Kind
    raw: dict[str, Any]
    definitions: Definitions
    name: str = ""  # the definition this node is (``io.k8s.api.apps.v1.DeploymentSpec``), if it is one

    # --- maps and structs ---------------------------------------------------------------------------------

    @property
    def fields(self) -> dict[str, Any]:
        properties: dict[str, Any] = self.raw.get("properties") or {}
        return properties

    def field(self, key: str) -> Node | None:
        """The node of a struct's field or a map's values; ``None`` for a field the schema does not know."""
        if key in self.fields:
            return self.definitions.node(self.fields[key])
        extra = self.raw.get("additionalProperties")
        if isinstance(extra, dict):
            return self.definitions.node(extra)
        if self.kind == "any" or self.raw.get("x-kubernetes-preserve-unknown-fields"):
            return self.definitions.any
        return None

    def is_named_field(self, key: str) -> bool:
        """A struct's declared field (Server-Side Apply treats those apart from a map's keys)."""
        return key in self.fields

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self.raw.get("required") or ())

    @property
    def atomic(self) -> bool:
        if self.kind == "list":
            return self.list_type == "atomic"
        return self.raw.get("x-kubernetes-map-type") == "atomic"

    # --- lists --------------------------------------------------------------------------------------------

    @property
    def items(self) -> Node:
        items = self.raw.get("items")
        return self.definitions.node(items) if isinstance(items, dict) else self.definitions.any

    @property
    def list_type(self) -> ListType:
        declared = self.raw.get("x-kubernetes-list-type")
        if declared in ("atomic", "map", "set"):
            return declared  # type: ignore[no-any-return]
        return "atomic"

    @property
    def map_keys(self) -> tuple[str, ...]:
        return tuple(self.raw.get("x-kubernetes-list-map-keys") or ())

    @property
    def patch_merge_key(self) -> str | None:
        """Strategic merge patch's key for this list (``x-kubernetes-patch-merge-key``), if it merges."""
        if self.raw.get("x-kubernetes-patch-strategy") and "merge" in self.raw["x-kubernetes-patch-strategy"]:
            key = self.raw.get("x-kubernetes-patch-merge-key")
            return str(key) if key else ""
        return None

    @property
    def nullable(self) -> bool:
        return bool(self.raw.get("nullable"))

    @property
    def go_type(self) -> str:
        if self.name:
            short = self.name.rsplit(".", 2)
            return f"{short[-2]}.{short[-1]}" if len(short) == 3 else self.name
        fmt = self.raw.get("format")
        return {"integer": str(fmt or "int64"), "number": "float64", "boolean": "bool", "list": "[]"}.get(
            self.kind, "string" if self.kind == "string" else "map[string]string" if self.kind == "map" else self.kind
        )


class Definitions:
    """A set of schema definitions (``$defs``) and the nodes made of them."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.any = Node("any", {}, self)
        self._nodes: dict[int, tuple[dict[str, Any], Node]] = {}  # by the raw schema's id (it is kept alive)
        self._by_kind: dict[tuple[str, str], str] = {}
        for name, definition in defs.items():
            for gvk in definition.get("x-kubernetes-group-version-kind") or ():
                api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                self._by_kind[(api_version, gvk["kind"])] = name

    def kind(self, api_version: str, kind: str) -> Node | None:
        """The root node of a built-in kind (``("apps/v1", "Deployment")``)."""
        name = self._by_kind.get((api_version, kind))
        return None if name is None else self.named(name)

    def named(self, name: str) -> Node:
        return self.node({"$ref": f"#/$defs/{name}"})

    def node(self, raw: dict[str, Any]) -> Node:
        cached = self._nodes.get(id(raw))
        if cached is not None and cached[0] is raw:
            return cached[1]
        made = self._resolved(raw)
        self._nodes[id(raw)] = (raw, made)
        return made

    def _resolved(self, raw: dict[str, Any]) -> Node:
        name = ""
        ref = raw.get("$ref") or next((part.get("$ref") for part in raw.get("allOf") or () if "$ref" in part), None)
        if ref is not None:
            name = str(ref).rsplit("/", 1)[-1]
            raw = {**self.defs[name], **{k: v for k, v in raw.items() if k.startswith("x-kubernetes-")}}
        return Node(_kind_of(raw, name), raw, self, name)


def _kind_of(raw: dict[str, Any], name: str) -> Kind:
    if name == QUANTITY:
        return "quantity"
    if name == INT_OR_STRING or raw.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    declared = raw.get("type")
    types = [declared] if isinstance(declared, str) else [t for t in declared or () if t != "null"]
    if not types:
        return "struct" if "properties" in raw else "any"
    first = types[0]
    if first == "object":
        if "properties" in raw or "additionalProperties" not in raw:
            return "struct" if "properties" in raw or not raw.get("x-kubernetes-preserve-unknown-fields") else "any"
        return "map"
    if first == "array":
        return "list"
    if first in ("string", "integer", "number", "boolean"):
        return cast(Kind, first)
    return "any"


@cache
def kubernetes() -> Definitions:
    """Kubernetes 1.36's definitions (read once)."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{KUBERNETES_VERSION}-local"
    defs = json.loads((folder / "_definitions.json").read_text())["$defs"]
    for (name, field), default in KEY_DEFAULTS.items():
        defs[name]["properties"][field]["default"] = default
    return Definitions(defs)


def custom_resource(open_api_v3_schema: dict[str, Any]) -> Node:
    """The root node of a custom resource: its CRD's schema, with the standard ``metadata``."""
    root = dict(open_api_v3_schema)
    properties = dict(root.get("properties") or {})
    properties["metadata"] = {"$ref": f"#/$defs/{OBJECT_META}"}
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    root["properties"] = properties
    return kubernetes().node(root)
