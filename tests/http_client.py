"""Plain HTTP to the API emulator for its own tests (test helper): every status and body as the server sent them,
no client library in between that would raise, retry or fill in fields."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tests.kube import KubeCluster

JSON = "application/json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @property
    def message(self) -> str:
        return str((self.body or {}).get("message", ""))


@dataclass
class Http:
    kube: KubeCluster
    agent: str = "tester/1.0"

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        query = f"?{urllib.parse.urlencode(dict(params))}" if params else ""
        return f"{self.kube.url}{path}{query}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        params: Mapping[str, str] | None = None,
        agent: str | None = None,
    ) -> Reply:
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
        request = urllib.request.Request(self.url(path, params), data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("User-Agent", agent or self.agent)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, json.loads(response.read() or b"null"))
        except urllib.error.HTTPError as error:
            return Reply(error.code, json.loads(error.read() or b"null"))

    def get(self, path: str, **params: str) -> Reply:
        return self.call("GET", path, params=params or None)

    def post(self, path: str, body: Any, **kwargs: Any) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> Reply:
        return self.call("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any, content_type: str = MERGE, **kwargs: Any) -> Reply:
        return self.call("PATCH", path, body, content_type=content_type, **kwargs)

    def apply(self, path: str, body: Any, manager: str | None, force: bool = False, **kwargs: Any) -> Reply:
        params = {"fieldManager": manager} if manager else {}
        if force:
            params["force"] = "true"
        return self.call("PATCH", path, body, content_type=APPLY, params=params, **kwargs)

    def delete(self, path: str) -> Reply:
        return self.call("DELETE", path)

    def watch(self, path: str, timeout: int = 1, **params: str) -> Iterator[dict[str, Any]]:
        """The events of a watch, until the server ends it (``timeoutSeconds``, default 1 s) or after a 410."""
        query = {"watch": "true", "timeoutSeconds": str(timeout), **params}
        with urllib.request.urlopen(self.url(path, query), timeout=timeout + 30) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)
