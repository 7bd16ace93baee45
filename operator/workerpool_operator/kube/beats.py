"""Which pools of a namespace run beat for the same app on the same broker. Pure.

Two such beats would send every periodic task twice. The beat entrypoint's lock keeps all but one of them
waiting, but the spec is still wrong: each of those pools gets ``BeatReady=False`` (reason ``DuplicateBeat``)
naming the others, and a Warning Event when that starts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from workerpool_operator.scaling_types import PoolKey


def duplicate_beats(identities: Mapping[PoolKey, Hashable | None]) -> dict[PoolKey, tuple[str, ...]]:
    """For every pool, the other pools of its namespace whose beat has the same identity (app and broker);
    ``None`` (no beat) never matches. Pools without such others map to ``()``."""
    groups: dict[tuple[str, Hashable], list[str]] = {}
    for (namespace, name), identity in identities.items():
        if identity is not None:
            groups.setdefault((namespace, identity), []).append(name)
    found: dict[PoolKey, tuple[str, ...]] = {}
    for (namespace, name), identity in identities.items():
        names = groups.get((namespace, identity), []) if identity is not None else []
        found[(namespace, name)] = tuple(sorted(n for n in names if n != name))
    return found
