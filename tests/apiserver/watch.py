"""Lists and watches as a real API server answers them (its watch cache), for the test and the bench emulators.

- Every change gets the next ``resourceVersion`` of one counter; a list answers with the latest in
  ``metadata.resourceVersion`` (and pages with ``limit``/``continue``).
- A watch without ``resourceVersion`` (or with ``0``) starts with an ADDED event per object, then sends changes;
  a watch from version N sends only the changes after N, from the kept history (:class:`History`, the last
  ``limit`` events of a resource), and answers an ERROR event with a 410 Status (reason ``Expired``, ``too old
  resource version``) when N is older than what the history keeps, then ends.
- ``timeoutSeconds`` ends the stream; ``allowWatchBookmarks=true`` adds a BOOKMARK (an object of the resource's
  kind carrying only ``metadata.resourceVersion``) every ``bookmark_interval`` seconds and before the timeout ends.
- ``labelSelector`` (``a=b``, ``a!=b``, ``a in (b,c)``, ``a notin (b)``, ``a``, ``!a``) and ``fieldSelector``
  (``metadata.name=x``, any dotted path, ``=``/``==``/``!=``) filter lists and watches; an object that stops (starts)
  matching reaches a watcher as DELETED (ADDED), as from the real watch cache.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
DEFAULT_HISTORY = 1000  # events kept per resource; the real watch cache keeps a time window (75 s and up)


@dataclass(frozen=True)
class Change:
    """One stored change: its version, its type, the object after (before, for a modification or deletion)."""

    version: int
    type: str  # ADDED, MODIFIED, DELETED
    object: Obj
    previous: Obj | None = None


@dataclass
class History:
    """The recent changes of one resource, oldest first, and the newest version no longer kept."""

    limit: int = DEFAULT_HISTORY
    changes: deque[Change] = field(default_factory=deque)
    forgotten: int = 0

    def add(self, change: Change) -> None:
        self.changes.append(change)
        while len(self.changes) > self.limit:
            self.forgotten = self.changes.popleft().version

    def since(self, version: int) -> list[Change] | None:
        """The changes after ``version``, or ``None`` when some of them are no longer kept (a 410)."""
        if version < self.forgotten:
            return None
        return [change for change in self.changes if change.version > version]


# --- selectors ---------------------------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<not>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


class SelectorError(ValueError):
    """A selector the server refuses (400)."""


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    if current.strip():
        parts.append(current)
    return parts


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def __call__(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op == "!=":
            return labels.get(self.key) not in self.values
        inside = labels.get(self.key) in self.values
        return inside if self.op in ("=", "in") else not inside


def label_matcher(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate over an object's labels."""
    requirements: list[_Requirement] = []
    for part in _split(selector or ""):
        found = _REQUIREMENT.match(part)
        if found is None:
            raise SelectorError(f"unable to parse requirement: {part!r}")
        key, op = found["key"], found["op"]
        if found["not"]:
            requirements.append(_Requirement(key, "!"))
        elif op:
            requirements.append(_Requirement(key, "!=" if op == "!=" else "=", frozenset({found["value"]})))
        elif found["set"]:
            values = frozenset(v.strip() for v in found["values"].split(",") if v.strip())
            requirements.append(_Requirement(key, found["set"], values))
        else:
            requirements.append(_Requirement(key, "exists"))
    return lambda labels: all(requirement(labels) for requirement in requirements)


@dataclass(frozen=True)
class _FieldRequirement:
    path: str
    value: str
    equal: bool

    def __call__(self, obj: Obj) -> bool:
        return (_dig(obj, self.path) == self.value) == self.equal


def field_matcher(selector: str | None) -> Callable[[Obj], bool]:
    """A predicate over an object's fields (``metadata.name=x``)."""
    requirements: list[_FieldRequirement] = []
    for part in _split(selector or ""):
        found = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if found is None:
            raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
        path, op, value = found.groups()
        requirements.append(_FieldRequirement(path, value, op != "!="))
    return lambda obj: all(requirement(obj) for requirement in requirements)


def _dig(obj: Any, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj).lower() if isinstance(obj, bool) else str(obj)


@dataclass(frozen=True)
class Filter:
    """What one list or watch asks for: a namespace (``None``: all), a name, selectors."""

    namespace: str | None = None
    name: str | None = None
    labels: Callable[[dict[str, str]], bool] = lambda _labels: True
    fields: Callable[[Obj], bool] = lambda _obj: True

    @classmethod
    def of(cls, namespace: str | None, name: str | None, params: dict[str, str]) -> Filter:
        return cls(
            namespace, name, label_matcher(params.get("labelSelector")), field_matcher(params.get("fieldSelector"))
        )

    def __call__(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(obj)


def event_for(change: Change, wanted: Filter) -> dict[str, Any] | None:
    """The event a watcher with ``wanted`` gets for a change, if any."""
    now, before = wanted(change.object), wanted(change.previous)
    if change.type == "MODIFIED" and now != before:
        return {"type": "ADDED" if now else "DELETED", "object": change.object}
    if now or (change.type == "DELETED" and before):
        return {"type": change.type, "object": change.object}
    return None


# --- pages ---------------------------------------------------------------------------------------------------------


def page(items: list[Obj], limit: str | None, token: str | None, version: int) -> tuple[list[Obj], dict[str, Any]]:
    """One page of a list sorted by (namespace, name), and the list's metadata (``continue`` when more follow)."""
    start = ""
    if token:
        try:
            start = str(json.loads(base64.b64decode(token))["start"])
        except (ValueError, KeyError, TypeError):
            raise SelectorError("continue key is not valid") from None
    ordered = sorted(items, key=_sort_key)
    if start:
        ordered = [item for item in ordered if _sort_key(item) > start]
    meta: dict[str, Any] = {"resourceVersion": str(version)}
    size = int(limit) if limit and limit.isdigit() and int(limit) > 0 else 0
    if size and len(ordered) > size:
        ordered, rest = ordered[:size], len(ordered) - size
        last = _sort_key(ordered[-1])
        meta["continue"] = base64.b64encode(json.dumps({"start": last, "rv": version}).encode()).decode()
        meta["remainingItemCount"] = rest
    return ordered, meta


def _sort_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


# --- watching --------------------------------------------------------------------------------------------------------


def gone(version: int, oldest: int) -> dict[str, Any]:
    """The ERROR event of a watch from a version the history no longer keeps."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {version} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }
    return {"type": "ERROR", "object": status}


@dataclass
class Hub:
    """Who watches what: each watcher's queue of changes, fed as the store changes (synchronously)."""

    watchers: dict[Any, set[asyncio.Queue[Change]]] = field(default_factory=dict)

    def publish(self, resource: Any, change: Change) -> None:
        for queue in self.watchers.get(resource, ()):
            queue.put_nowait(change)

    def subscribe(self, resource: Any) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self.watchers.setdefault(resource, set()).add(queue)
        return queue

    def unsubscribe(self, resource: Any, queue: asyncio.Queue[Change]) -> None:
        self.watchers.get(resource, set()).discard(queue)


@dataclass(frozen=True)
class WatchRequest:
    since: int | None  # None: start with every object as ADDED
    timeout: float | None
    bookmarks: bool
    wanted: Filter

    @classmethod
    def of(cls, namespace: str | None, name: str | None, params: dict[str, str]) -> WatchRequest:
        raw = params.get("resourceVersion") or ""
        since = int(raw) if raw.isdigit() and int(raw) > 0 else None
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds", "").isdigit() else None
        bookmarks = params.get("allowWatchBookmarks") == "true"
        return cls(since, timeout, bookmarks, Filter.of(namespace, name, params))


async def stream(
    request: WatchRequest,
    *,
    hub: Hub,
    resource: Any,
    history: History,
    current: Callable[[], Iterable[Obj]],
    latest: Callable[[], int],
    bookmark: Callable[[int], Obj],
    bookmark_interval: float,
) -> AsyncIterator[dict[str, Any]]:
    """The events of one watch (see the module's docstring); ends at the timeout or after a 410."""
    loop = asyncio.get_running_loop()
    deadline = None if request.timeout is None else loop.time() + request.timeout
    queue = hub.subscribe(resource)  # before reading the past: nothing falls between the two
    try:
        if request.since is None:
            start = latest()
            initial: list[dict[str, Any]] = [{"type": "ADDED", "object": o} for o in current() if request.wanted(o)]
        else:
            replay = history.since(request.since)
            if replay is None:
                yield gone(request.since, history.forgotten)
                return
            start = max([request.since, *(change.version for change in replay)])
            initial = []
            for change in replay:
                replayed = event_for(change, request.wanted)
                if replayed is not None:
                    initial.append(replayed)
        for first in initial:
            yield first
        next_bookmark = loop.time() + bookmark_interval
        while True:
            now = loop.time()
            if deadline is not None and now >= deadline:
                if request.bookmarks:
                    yield {"type": "BOOKMARK", "object": bookmark(latest())}
                return
            wakes = [t for t in (deadline, next_bookmark if request.bookmarks else None) if t is not None]
            wake = min(wakes) if wakes else None
            try:
                change = await asyncio.wait_for(queue.get(), None if wake is None else max(0.0, wake - now))
            except TimeoutError:
                if request.bookmarks and loop.time() >= next_bookmark:
                    yield {"type": "BOOKMARK", "object": bookmark(latest())}
                    next_bookmark = loop.time() + bookmark_interval
                continue
            if change.version <= start:
                continue
            sent = event_for(change, request.wanted)
            if sent is not None:
                yield sent
    finally:
        hub.unsubscribe(resource, queue)
