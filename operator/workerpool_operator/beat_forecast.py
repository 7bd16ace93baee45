"""The beat forecast format: when beat will send which periodic task to which queue, published to the broker.

Beat (``workerpool-worker beat``) loads the app and knows its schedule. While it holds the beat lock it publishes,
every few seconds, the next fire times of every periodic task and the queue each one's message goes to::

    <global_keyprefix>workerpool:beat:forecast:<app>     a Redis STRING with an EXPIRE of ``ttl`` seconds

    {"version": 1, "beat": "<pod name>", "published": <unix time>, "horizon": <seconds>,
     "entries": [{"name": "<beat_schedule key>", "task": "<task name>", "queue": "<queue>",
                  "fires": [<unix time>, ...], "until": <unix time>}, ...]}

``fires`` lists at most :data:`DEFAULT_FIRES_PER_ENTRY` times, ascending, within ``published + horizon``;
``until`` is the time up to which that list is complete (the horizon's end, or the last fire when the list was
cut short: an every-2-seconds task does not get 1,800 fire times). The key expires when beat stops publishing
(a stopped or dead beat), so a reader never plans on a forecast nobody keeps current.

The key is the app's, not the pool's: the key that beat and the reader (the scaling side, which knows the pool's
app and broker) can both name. Two pools of one app on one broker share it; they also share the beat lock, so
only one of their beats runs.

Pure (JSON and arithmetic): both the beat process and the observer import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FORECAST_PREFIX = "workerpool:beat:forecast:"
LOCK_PREFIX = "workerpool:beat:lock:"
FORMAT_VERSION = 1
DEFAULT_TTL = 60.0  # seconds a forecast stays in Redis without being published again
DEFAULT_HORIZON = 3600.0  # seconds ahead the forecast looks
DEFAULT_FIRES_PER_ENTRY = 20


def forecast_key(app: str, global_keyprefix: str = "") -> str:
    """The Redis key of the forecast of ``app`` (``spec.app``, as ``celery -A`` takes it)."""
    return f"{global_keyprefix}{FORECAST_PREFIX}{app}"


def lock_key(app: str, global_keyprefix: str = "") -> str:
    """The Redis key of the lock that lets one beat of ``app`` run on a broker at a time."""
    return f"{global_keyprefix}{LOCK_PREFIX}{app}"


@dataclass(frozen=True, slots=True)
class ForecastEntry:
    """One periodic task: its name in the schedule, the task, the queue it is sent to, its next fire times."""

    name: str
    task: str
    queue: str
    fires: tuple[float, ...]
    until: float  # the fire times are complete up to here


@dataclass(frozen=True, slots=True)
class BeatForecast:
    """What one beat published."""

    beat: str
    published: float
    horizon: float
    entries: tuple[ForecastEntry, ...] = field(default=())

    def fires_by_queue(self, now: float, within: float) -> dict[str, tuple[tuple[float, str], ...]]:
        """The fires in ``(now, now + within]`` as ``(time, entry name)``, merged per queue and ascending (what
        the engine takes as ``QueueObservation.fires``). A queue whose entries' lists end before ``now + within``
        (cut short) gets what is known."""
        end = now + within
        merged: dict[str, list[tuple[float, str]]] = {}
        for entry in self.entries:
            merged.setdefault(entry.queue, []).extend((t, entry.name) for t in entry.fires if now < t <= end)
        return {queue: tuple(sorted(fires)) for queue, fires in merged.items() if fires}


def encode_forecast(forecast: BeatForecast) -> str:
    return json.dumps(
        {
            "version": FORMAT_VERSION,
            "beat": forecast.beat,
            "published": forecast.published,
            "horizon": forecast.horizon,
            "entries": [
                {"name": e.name, "task": e.task, "queue": e.queue, "fires": list(e.fires), "until": e.until}
                for e in forecast.entries
            ],
        },
        separators=(",", ":"),
    )


def decode_forecast(raw: str | bytes | None) -> BeatForecast | None:
    """A forecast from the key's value; ``None`` when there is none, or it is not one this version reads."""
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            return None
        entries = tuple(_entry(e) for e in data.get("entries") or ())
        return BeatForecast(
            beat=str(data["beat"]),
            published=_finite(data["published"]),
            horizon=_finite(data["horizon"]),
            entries=entries,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _entry(data: Mapping[str, Any]) -> ForecastEntry:
    return ForecastEntry(
        name=str(data["name"]),
        task=str(data["task"]),
        queue=str(data["queue"]),
        fires=tuple(sorted(_finite(t) for t in data["fires"])),
        until=_finite(data["until"]),
    )


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def entry_forecast(
    name: str, task: str, queue: str, fires: Iterable[float], *, now: float, horizon: float, limit: int
) -> ForecastEntry:
    """An entry from fire times in ascending order (as a schedule yields them): those within the horizon, at most
    ``limit``, and how far that list is complete."""
    end = now + horizon
    kept: list[float] = []
    for fire in fires:
        if fire > end:
            return ForecastEntry(name, task, queue, tuple(kept), end)
        if len(kept) == limit:
            return ForecastEntry(name, task, queue, tuple(kept), kept[-1])
        kept.append(fire)
    return ForecastEntry(name, task, queue, tuple(kept), end)
