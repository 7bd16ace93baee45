"""The API server's validation (422 Invalid) of the kinds we write, for the rules our objects can break. Pure.

From k8s.io/kubernetes ``pkg/apis/core/validation`` and ``pkg/apis/apps/validation`` and apimachinery's
``ValidateObjectMeta``; the messages are theirs:

- names: a DNS-1123 subdomain (Services: a DNS-1035 label; containers, ports and volumes: DNS-1123 labels);
- labels: qualified-name keys and values of at most 63 characters of ``[A-Za-z0-9._-]`` starting and ending
  alphanumeric; annotations: at most 256 KiB in all;
- Deployments: a selector that selects the template's labels (immutable once created), ``replicas`` and
  ``revisionHistoryLimit`` not negative, ``restartPolicy`` Always, no ``rollingUpdate`` with Recreate;
- pod specs: at least one container, each with a unique name and an image; every volume mount names a volume;
  unique volume names; requests not above limits; ports 1-65535;
- Services: ports 1-65535 (at least one unless headless), each named when there are several;
- Secrets: data keys of ``[-._a-zA-Z0-9]`` and values in base64;
- custom resources: their CRD's schema, list-map keys and CEL rules (tests/crd_rules.py), ratcheted on update
  by top-level field.

The rest of the API server's validation is not modelled (see tests/apiserver/__init__.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from typing import Any

from tests import crd_rules
from tests.apiserver import quantity

SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
ANNOTATIONS_LIMIT = 256 * 1024

Error = tuple[str, str]


def _value(value: Any) -> str:
    return (
        json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    )


def invalid(path: str, value: Any, detail: str) -> Error:
    return path, f"Invalid value: {_value(value)}: {detail}"


def subdomain(path: str, name: str) -> Iterator[Error]:
    if len(name) > 253:
        yield invalid(path, name, "must be no more than 253 characters")
    if not SUBDOMAIN.match(name):
        yield invalid(
            path,
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
            "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )


def label_1123(path: str, name: str) -> Iterator[Error]:
    if len(name) > 63:
        yield invalid(path, name, "must be no more than 63 characters")
    if not LABEL_1123.match(name):
        yield invalid(
            path,
            name,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
            "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        )


def label_1035(path: str, name: str) -> Iterator[Error]:
    if len(name) > 63:
        yield invalid(path, name, "must be no more than 63 characters")
    if not LABEL_1035.match(name):
        yield invalid(
            path,
            name,
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
            "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
            "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        )


def labels(path: str, found: dict[str, Any]) -> Iterator[Error]:
    for key, value in found.items():
        name = key.rsplit("/", 1)[-1]
        prefix = key.rsplit("/", 1)[0] if "/" in key else ""
        if not name or len(name) > 63 or not QUALIFIED_NAME.match(name) or (prefix and not SUBDOMAIN.match(prefix)):
            yield invalid(path, key, "name part must consist of alphanumeric characters, '-', '_' or '.'")
        if len(str(value)) > 63:
            yield invalid(f"{path}", value, "must be no more than 63 characters")
        elif not LABEL_VALUE.match(str(value)):
            yield invalid(
                f"{path}",
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
                "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            )


def metadata(obj: dict[str, Any], *, name_rule: str = "subdomain") -> Iterator[Error]:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        yield "metadata.name", "Required value: name or generateName is required"
    else:
        check = {"subdomain": subdomain, "1035": label_1035, "1123": label_1123}[name_rule]
        yield from check("metadata.name", str(name))
    yield from labels("metadata.labels", meta.get("labels") or {})
    size = sum(len(k) + len(str(v)) for k, v in (meta.get("annotations") or {}).items())
    if size > ANNOTATIONS_LIMIT:
        yield "metadata.annotations", f"Too long: may not be more than {ANNOTATIONS_LIMIT} bytes"


def _selects(selector: dict[str, Any], found: dict[str, Any]) -> bool:
    if any(found.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or ():
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and found.get(key) not in values:
            return False
        if operator == "NotIn" and found.get(key) in values:
            return False
        if operator == "Exists" and key not in found:
            return False
        if operator == "DoesNotExist" and key in found:
            return False
    return True


def deployment(obj: dict[str, Any], old: dict[str, Any] | None) -> Iterator[Error]:
    yield from metadata(obj)
    spec = obj.get("spec") or {}
    for field in ("replicas", "revisionHistoryLimit"):
        if isinstance(spec.get(field), int) and spec[field] < 0:
            yield invalid(f"spec.{field}", spec[field], "must be greater than or equal to 0")
    selector = spec.get("selector")
    template = spec.get("template") or {}
    template_labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector:
        yield "spec.selector", "Required value"
    elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
        yield invalid("spec.selector", selector, "empty selector is invalid for deployment")
    elif not _selects(selector, template_labels):
        yield invalid("spec.template.metadata.labels", template_labels, "`selector` does not match template `labels`")
    if old is not None and selector != (old.get("spec") or {}).get("selector"):
        yield invalid("spec.selector", selector, "field is immutable")
    yield from labels("spec.template.metadata.labels", template_labels)
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate" and "rollingUpdate" in strategy:
        yield "spec.strategy.rollingUpdate", "Forbidden: may not be specified when strategy `type` is 'Recreate'"
    pod = template.get("spec") or {}
    if pod.get("restartPolicy", "Always") != "Always":
        yield (
            "spec.template.spec.restartPolicy",
            f'Unsupported value: "{pod["restartPolicy"]}": supported values: "Always"',
        )
    yield from pod_spec("spec.template.spec", pod)


def pod(obj: dict[str, Any], old: dict[str, Any] | None) -> Iterator[Error]:
    yield from metadata(obj)
    yield from pod_spec("spec", obj.get("spec") or {})


def pod_spec(path: str, spec: dict[str, Any]) -> Iterator[Error]:
    volumes = [v.get("name") for v in spec.get("volumes") or ()]
    for index, name in enumerate(volumes):
        yield from label_1123(f"{path}.volumes[{index}].name", str(name))
        if volumes.index(name) != index:
            yield f"{path}.volumes[{index}].name", f"Duplicate value: {_value(name)}"
    containers = spec.get("containers") or []
    if not containers:
        yield f"{path}.containers", "Required value"
    names: list[str] = []
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or ()):
            where = f"{path}.{key}[{index}]"
            name = str(container.get("name") or "")
            if not name:
                yield f"{where}.name", "Required value"
            else:
                yield from label_1123(f"{where}.name", name)
                if name in names:
                    yield f"{where}.name", f"Duplicate value: {_value(name)}"
                names.append(name)
            if not container.get("image"):
                yield f"{where}.image", "Required value"
            for number, mount in enumerate(container.get("volumeMounts") or ()):
                if mount.get("name") not in volumes:
                    yield f"{where}.volumeMounts[{number}].name", f"Not found: {_value(mount.get('name'))}"
            for number, port in enumerate(container.get("ports") or ()):
                if not 0 < int(port.get("containerPort") or 0) < 65536:
                    yield invalid(
                        f"{where}.ports[{number}].containerPort",
                        port.get("containerPort"),
                        "must be between 1 and 65535, inclusive",
                    )
            yield from _requests_within_limits(f"{where}.resources", container.get("resources") or {})


def _requests_within_limits(path: str, resources: dict[str, Any]) -> Iterator[Error]:
    limits = resources.get("limits") or {}
    for name, request in (resources.get("requests") or {}).items():
        if name in limits and quantity.value_of(request) > quantity.value_of(limits[name]):
            yield invalid(f"{path}.requests", request, f"must be less than or equal to {name} limit of {limits[name]}")


def service(obj: dict[str, Any], old: dict[str, Any] | None) -> Iterator[Error]:
    yield from metadata(obj, name_rule="1035")
    spec = obj.get("spec") or {}
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        yield "spec.ports", "Required value"
    for index, port in enumerate(ports):
        if not 0 < int(port.get("port") or 0) < 65536:
            yield invalid(f"spec.ports[{index}].port", port.get("port"), "must be between 1 and 65535, inclusive")
        if len(ports) > 1 and not port.get("name"):
            yield f"spec.ports[{index}].name", "Required value"
    if old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        if before and spec.get("clusterIP") != before:
            yield invalid("spec.clusterIPs[0]", spec.get("clusterIP"), "may not change once set")


def secret(obj: dict[str, Any], old: dict[str, Any] | None) -> Iterator[Error]:
    yield from metadata(obj)
    for key, value in (obj.get("data") or {}).items():
        if not SECRET_KEY.match(key):
            yield invalid(
                f"data[{key}]", key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
            )
        try:
            base64.b64decode(str(value), validate=True)
        except binascii.Error:
            yield invalid(f"data[{key}]", "<secret contents redacted>", "illegal base64 data")


def custom(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None, *, cel: bool = True) -> list[Error]:
    """A custom resource against its CRD's schema: types, list-map keys, then CEL rules (tests/crd_rules.py).

    An update is validated as a server that ratchets (validation ratcheting, on by default since 1.30): a rule
    runs where the value changed. Here by top-level field, and the root's own rules whenever anything changed: a
    status write checks the status and the root's rules, not the spec."""
    if old is None:
        parts = {"": (obj, schema)}
        root_rules: dict[str, Any] = {}
    else:
        properties = schema.get("properties") or {}
        changed = [k for k in obj.keys() | old.keys() if k not in ("apiVersion", "kind", "metadata")]
        parts = {k: (obj[k], properties[k]) for k in changed if k in obj and k in properties and obj[k] != old.get(k)}
        rules = schema.get("x-kubernetes-validations")
        root_rules = {"x-kubernetes-validations": rules} if rules and obj != old else {}
    found: list[Error] = []
    for key, (value, part) in sorted(parts.items()):
        structural = crd_rules.schema_errors(value, part) + crd_rules.duplicate_keys(value, part)
        found += [_located(key, e) for e in structural]
    if cel and not found:
        for key, (value, part) in sorted(parts.items()):
            found += [_located(key, e) for e in crd_rules.cel_errors(value, part)]
        if root_rules:
            found += [_located("", e) for e in crd_rules.cel_errors(obj, root_rules)]
    return found + list(metadata(obj))


def _located(key: str, error: str) -> Error:
    path, _, detail = error.partition(": ")
    if key:
        path = f"{key}.{path}" if path else key
    return path, detail


def generic(obj: dict[str, Any], old: dict[str, Any] | None) -> Iterator[Error]:
    yield from metadata(obj)


VALIDATORS = {
    ("apps/v1", "Deployment"): deployment,
    ("v1", "Pod"): pod,
    ("v1", "Service"): service,
    ("v1", "Secret"): secret,
}


def errors(api_version: str, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Error]:
    validator = VALIDATORS.get((api_version, kind), generic)
    return list(validator(obj, old))


def message(kind: str, group: str, name: str, found: list[Error]) -> str:
    """``Deployment.apps "shop" is invalid: spec.replicas: Invalid value: ...`` (several in brackets)."""
    qualified = f"{kind}.{group}" if group else kind
    parts = [f"{path}: {detail}" for path, detail in found]
    listed = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return f'{qualified} "{name}" is invalid: {listed}'
