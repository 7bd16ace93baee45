"""Kubernetes RBAC, evaluated in Python: is a recorded API request allowed by a set of rendered RBAC objects?

Pure. :func:`parse_request` turns an HTTP method and URL into the request attributes the API server's
authorizer sees (verb, API group, resource, subresource, namespace, name, or a non-resource path), the way
the API server's RequestInfo resolver does. :func:`grants_for` collects what a ServiceAccount is granted by
the Roles, ClusterRoles and bindings given, plus the discovery endpoints every authenticated user may read
(the ``system:discovery`` and ``system:public-info-viewer`` bootstrap roles). :func:`allows` matches one
request the way the RBAC authorizer does (verbs, API groups, resources and ``*/subresource``, resource
names, non-resource URLs with a trailing ``*``, and the namespace a binding applies to).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})

# What the bootstrap ClusterRoles system:discovery and system:public-info-viewer grant to every authenticated
# user (bound to the group system:authenticated on every cluster).
DISCOVERY_URLS = (
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/version/",
    "/openapi",
    "/openapi/*",
)


@dataclass(frozen=True)
class ApiRequest:
    """What the authorizer sees of one HTTP request."""

    verb: str
    path: str
    api_group: str | None = None  # None: a non-resource request (discovery, /version, ...)
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None

    @property
    def is_resource(self) -> bool:
        return self.resource is not None

    @property
    def group_resource(self) -> str:
        """``group/resource[/subresource]``, with ``core`` for the empty group, e.g. ``apps/deployments``."""
        resource = f"{self.resource}/{self.subresource}" if self.subresource else f"{self.resource}"
        return f"{self.api_group or 'core'}/{resource}"

    def __str__(self) -> str:
        if not self.is_resource:
            return f"{self.verb} {self.path}"
        where = f" in {self.namespace}" if self.namespace else " (cluster scope)"
        named = f" {self.name!r}" if self.name else ""
        return f"{self.verb} {self.group_resource}{named}{where}"


def parse_request(method: str, url: str) -> ApiRequest:
    """The authorizer's view of ``method url`` (``url`` is a path with an optional query string)."""
    split = urlsplit(url)
    path = split.path.rstrip("/") or "/"
    query = {key: values[-1] for key, values in parse_qs(split.query).items()}
    method = method.upper()
    parts = [part for part in path.split("/") if part]

    # /api/v1/... (core group) or /apis/<group>/<version>/...; anything else is a non-resource path.
    if len(parts) >= 2 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        rest = []
    if not rest:
        return ApiRequest(verb=method.lower(), path=split.path)

    watch_path = rest[0] == "watch"  # the deprecated /watch/ prefix
    if watch_path:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    if resource == "namespaces" and name is not None:
        namespace = name  # a namespace object lives in itself, as far as the authorizer is concerned

    watching = watch_path or query.get("watch", "").lower() in ("true", "1")
    if method in ("GET", "HEAD"):
        verb = "watch" if watching else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    if verb in ("list", "watch") and name is None:
        # A list or watch of one object by field selector is authorized by that name.
        for selector in query.get("fieldSelector", "").split(","):
            key, _, value = selector.partition("=")
            if key.strip() == "metadata.name" and value:
                name = value.lstrip("=")
    return ApiRequest(
        verb=verb,
        path=split.path,
        api_group=group,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a Role or ClusterRole."""

    verbs: frozenset[str]
    api_groups: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    resource_names: frozenset[str] = frozenset()
    non_resource_urls: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, rule: Mapping[str, Any]) -> Rule:
        return cls(
            verbs=frozenset(rule.get("verbs") or ()),
            api_groups=frozenset(rule.get("apiGroups") or ()),
            resources=frozenset(rule.get("resources") or ()),
            resource_names=frozenset(rule.get("resourceNames") or ()),
            non_resource_urls=frozenset(rule.get("nonResourceURLs") or ()),
        )

    @property
    def has_wildcard(self) -> bool:
        fields = (self.verbs, self.api_groups, self.resources, self.non_resource_urls)
        return any("*" in value for field in fields for value in field)

    def matches(self, request: ApiRequest) -> bool:
        if "*" not in self.verbs and request.verb not in self.verbs:
            return False
        if not request.is_resource:
            return any(
                url == request.path or (url.endswith("*") and request.path.startswith(url[:-1]))
                for url in self.non_resource_urls
            )
        if "*" not in self.api_groups and request.api_group not in self.api_groups:
            return False
        if not any(_resource_matches(pattern, request) for pattern in self.resources):
            return False
        return not self.resource_names or request.name in self.resource_names


def _resource_matches(pattern: str, request: ApiRequest) -> bool:
    if pattern == "*":
        return True
    combined = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    if pattern == combined:
        return True
    return request.subresource is not None and pattern == f"*/{request.subresource}"


@dataclass(frozen=True)
class Grant:
    """A rule, and where it applies: one namespace, or everywhere (``namespace is None``)."""

    rule: Rule
    namespace: str | None
    source: str

    def allows(self, request: ApiRequest) -> bool:
        if self.namespace is not None and request.namespace != self.namespace:
            return False
        return self.rule.matches(request)


DISCOVERY_GRANT = Grant(
    rule=Rule(verbs=frozenset({"get"}), non_resource_urls=frozenset(DISCOVERY_URLS)),
    namespace=None,
    source="ClusterRole/system:discovery via system:authenticated",
)


def _binds(binding: Mapping[str, Any], service_account: str, namespace: str) -> bool:
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "ServiceAccount" and name == service_account and subject.get("namespace", namespace) == namespace:
            return True
        if kind == "Group" and name in ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"):
            return True
    return False


def grants_for(
    documents: Iterable[Mapping[str, Any]], service_account: str, namespace: str, *, discovery: bool = True
) -> list[Grant]:
    """Every rule ``documents`` grant to ServiceAccount ``namespace/service_account``.

    A binding that refers to a role missing from ``documents`` raises ``LookupError``: a rendered chart must
    be self-contained.
    """
    documents = [doc for doc in documents if doc]
    roles = {
        (
            doc["kind"],
            (doc["metadata"].get("namespace") if doc["kind"] == "Role" else None),
            doc["metadata"]["name"],
        ): doc
        for doc in documents
        if doc.get("kind") in ("Role", "ClusterRole")
    }
    grants = [DISCOVERY_GRANT] if discovery else []
    for binding in documents:
        kind = binding.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding") or not _binds(binding, service_account, namespace):
            continue
        binding_ns = binding["metadata"].get("namespace") if kind == "RoleBinding" else None
        ref = binding["roleRef"]
        key = (ref["kind"], binding_ns if ref["kind"] == "Role" else None, ref["name"])
        if key not in roles:
            raise LookupError(f"{kind} {binding['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}")
        source = f"{ref['kind']}/{ref['name']} via {kind}/{binding['metadata']['name']}"
        grants += [
            Grant(rule=Rule.from_dict(rule), namespace=binding_ns, source=source)
            for rule in roles[key].get("rules") or []
        ]
    return grants


def allows(grants: Iterable[Grant], request: ApiRequest) -> bool:
    return any(grant.allows(request) for grant in grants)


def denied(grants: Iterable[Grant], requests: Iterable[ApiRequest]) -> list[ApiRequest]:
    """The requests no grant allows, each once, in order."""
    grants = list(grants)
    seen: dict[ApiRequest, None] = {}
    for request in requests:
        if request not in seen and not allows(grants, request):
            seen[request] = None
    return list(seen)


def granted_permissions(grants: Iterable[Grant]) -> set[tuple[str, str, str | None]]:
    """Every ``(verb, group/resource, namespace)`` the resource grants name (no wildcards expanded)."""
    return {
        (verb, f"{group or 'core'}/{resource}", grant.namespace)
        for grant in grants
        for verb in grant.rule.verbs
        for group in grant.rule.api_groups
        for resource in grant.rule.resources
    }


# Kubernetes' user-facing roles aggregate each other: `edit` carries the label that aggregates it into `admin`,
# `view` the one into `edit`, so a rule aggregated to `view` reaches all three.
BUILT_IN_ROLES = ("view", "edit", "admin")


def aggregated_grants(documents: Iterable[Mapping[str, Any]], role: str, namespace: str) -> list[Grant]:
    """What a user bound to the built-in ClusterRole ``role`` in ``namespace`` gains from the ClusterRoles in
    ``documents`` that aggregate into it (``rbac.authorization.k8s.io/aggregate-to-<role>: "true"``)."""
    below = BUILT_IN_ROLES[: BUILT_IN_ROLES.index(role) + 1]
    grants = []
    for doc in documents:
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if doc.get("kind") != "ClusterRole" or not any(
            labels.get(f"rbac.authorization.k8s.io/aggregate-to-{r}") == "true" for r in below
        ):
            continue
        source = f"ClusterRole/{doc['metadata']['name']} aggregated into {role}"
        grants += [Grant(rule=Rule.from_dict(rule), namespace=namespace, source=source) for rule in doc["rules"]]
    return grants
