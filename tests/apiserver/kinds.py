"""Per kind: its schema, its subresources and the strategy the API server applies to it (k8s.io/kubernetes
``pkg/registry/*/strategy.go``). Pure.

- ``metadata.generation`` (1 on create) moves on a Deployment when its spec or annotations change (annotations
  are copied to its ReplicaSets), on a custom resource when anything but metadata (and status, with a status
  subresource) changes, never through ``/status``; other kinds we use have none.
- On create, the status of a kind with a status subresource is dropped (a built-in kind's is then its Go zero
  value: ``{}`` for a Deployment, ``{phase: Pending}`` for a Pod, ``{loadBalancer: {}}`` for a Service); a write
  to the main resource keeps the old status; a write to ``/status`` keeps all but status for a custom resource,
  and for a built-in kind what its status strategy keeps (a Deployment's spec and labels, a Pod's spec and
  owner references, a Service's spec: a controller writes a Deployment's revision annotation with its status).
- :data:`ZERO_OBJECTS`: what a new object of a built-in kind looks like as a Go value (structs are never
  absent), which the managed fields of a create are computed against: a create owns ``spec.template.spec``'s
  fields, not ``spec.template`` itself (no ``.`` there in ``fieldsV1``), as on a real server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.apiserver import schema
from tests.apiserver.fieldpath import Path
from tests.apiserver.schema import Node

DEPLOYMENT = ("apps/v1", "Deployment")
STATUS_KEEPS: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    DEPLOYMENT: (("spec",), ("metadata", "labels")),
    ("v1", "Pod"): (("spec",), ("metadata", "ownerReferences")),
    ("v1", "Service"): (("spec",),),
}
ZERO_OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    DEPLOYMENT: {"metadata": {}, "spec": {"template": {"metadata": {}, "spec": {}}, "strategy": {}}, "status": {}},
    ("v1", "Pod"): {"metadata": {}, "spec": {}, "status": {"phase": "Pending"}},
    ("v1", "Service"): {"metadata": {}, "spec": {}, "status": {"loadBalancer": {}}},
    ("v1", "Secret"): {"metadata": {}},
    ("v1", "Event"): {"metadata": {}, "involvedObject": {}, "source": {}},
    ("v1", "Namespace"): {"metadata": {}, "spec": {}, "status": {}},
    ("coordination.k8s.io/v1", "Lease"): {"metadata": {}, "spec": {}},
}


@dataclass(frozen=True)
class KindInfo:
    api_version: str
    kind: str
    plural: str
    namespaced: bool
    root: Node
    custom_schema: dict[str, Any] | None  # a custom resource's openAPIV3Schema
    status_subresource: bool
    scale_subresource: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.api_version, self.kind)

    @property
    def group(self) -> str:
        return self.api_version.rsplit("/", 1)[0] if "/" in self.api_version else ""

    @property
    def builtin(self) -> bool:
        return self.custom_schema is None

    @property
    def qualified(self) -> str:
        """``deployments.apps`` (``pods``), as errors name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def zero(self) -> dict[str, Any]:
        return copy.deepcopy(ZERO_OBJECTS.get(self.key, {}))

    # --- generation ---------------------------------------------------------------------------------------

    @property
    def has_generation(self) -> bool:
        return not self.builtin or self.key == DEPLOYMENT

    def bumps_generation(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        if self.key == DEPLOYMENT:
            return bool(
                old.get("spec") != new.get("spec")
                or (old.get("metadata") or {}).get("annotations") != (new.get("metadata") or {}).get("annotations")
            )
        if self.builtin:
            return False
        skip = {"metadata", "status"} if self.status_subresource else {"metadata"}
        return {k: v for k, v in old.items() if k not in skip} != {k: v for k, v in new.items() if k not in skip}

    # --- subresources ---------------------------------------------------------------------------------------

    def reset(self, subresource: str | None, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        """``new`` with what this write may not change put back from ``old`` (the strategy's PrepareFor*)."""
        if not self.status_subresource:
            return new
        result = dict(new)
        if old is None:  # a built-in kind's status is a Go struct: present, empty
            result.pop("status", None)
            if self.builtin:
                result["status"] = copy.deepcopy(ZERO_OBJECTS.get(self.key, {}).get("status", {}))
            return result
        if subresource != "status":
            if "status" in old:
                result["status"] = old["status"]
            else:
                result.pop("status", None)
            return result
        if not self.builtin:
            kept = {k: v for k, v in old.items() if k != "status"}
            return {**kept, **({"status": new["status"]} if "status" in new else {})}
        for path in STATUS_KEEPS.get(self.key, (("spec",),)):
            _put(result, path, _get(old, path))
        return result

    def ignored(self, subresource: str | None) -> Callable[[Path], bool]:
        """The fields a write through ``subresource`` cannot own (they are reset)."""
        if subresource == "scale":
            return lambda path: path != ("f:spec", "f:replicas")
        if not self.status_subresource:
            return lambda _path: False
        if subresource != "status":
            return lambda path: path[:1] == ("f:status",)
        if not self.builtin:
            return lambda path: path[:1] != ("f:status",)
        kept = [tuple(f"f:{part}" for part in p) for p in STATUS_KEEPS.get(self.key, (("spec",),))]
        return lambda path: any(path[: len(k)] == k for k in kept)


_MISSING = object()


def _get(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = obj
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _put(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    current = obj
    for part in path[:-1]:
        current[part] = dict(current.get(part) or {})
        current = current[part]
    if value is _MISSING:
        current.pop(path[-1], None)
    else:
        current[path[-1]] = value


def info(
    api_version: str,
    kind: str,
    plural: str,
    namespaced: bool,
    subresources: set[str],
    custom_schema: dict[str, Any] | None,
) -> KindInfo:
    root = (
        schema.custom_resource(custom_schema)
        if custom_schema is not None
        else schema.kubernetes().kind(api_version, kind)
    )
    return KindInfo(
        api_version=api_version,
        kind=kind,
        plural=plural,
        namespaced=namespaced,
        root=root if root is not None else schema.kubernetes().any,
        custom_schema=custom_schema,
        status_subresource="status" in subresources,
        scale_subresource="scale" in subresources,
    )
