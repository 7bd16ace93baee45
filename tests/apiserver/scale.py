"""The ``autoscaling/v1`` Scale of a Deployment, as its ``/scale`` subresource answers. Pure."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def selector_text(selector: Obj | None) -> str:
    """A label selector as a string (``a=b,c in (d,e)``), as ``Scale.status.selector`` gives it."""
    parts = [f"{k}={v}" for k, v in sorted(((selector or {}).get("matchLabels") or {}).items())]
    for expression in (selector or {}).get("matchExpressions") or ():
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            sorted(expression.get("values") or ()),
        )
        if operator == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(sorted(parts))


def scale_of(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` Scale of a Deployment."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    scale_spec = {"replicas": spec["replicas"]} if spec.get("replicas") else {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": scale_spec,
        "status": {
            "replicas": int((obj.get("status") or {}).get("replicas", 0)),
            "selector": selector_text(spec.get("selector")),
        },
    }
