"""Scheduled capacity for known spikes: windows that set a replica floor, started one start-up delay early. Pure.

A **window** is ``Window(start, end, replicas, tasks)`` in unix seconds: from ``start`` to ``end`` the queue
keeps at least ``replicas`` workers, or enough workers for ``tasks`` tasks (sized by the caller, who knows the
queue's throughput). The floor applies from ``start - lead`` (``lead``: the start-up delay, so the workers are
ready when the window opens) until ``end``.

Windows come from sources. ``cron_windows`` makes them from ``scaling.schedules`` (cron expressions, as
KEDA's cron scaler); any other source that knows upcoming spikes (Celery beat's next fire times, a batch
calendar) hands its own ``Window`` values to the same :func:`floor`.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple
from zoneinfo import ZoneInfo

from cronsim import CronSim


@dataclass(frozen=True, slots=True)
class Schedule:
    """One entry of ``scaling.schedules``: a cron window with a replica floor."""

    cron: str  # five fields, minute hour day-of-month month day-of-week
    duration: float  # seconds the window lasts from each fire time
    replicas: int  # the floor inside the window
    timezone: str = "UTC"  # an IANA zone name the cron expression is read in


class Window(NamedTuple):
    start: float  # unix seconds
    end: float
    replicas: int = 0  # floor of workers
    tasks: int = 0  # or: tasks expected in the window, for the caller to size
    source: str = ""  # where it came from, for the reason (a cron expression, "beat: <task>")


@functools.lru_cache(maxsize=4096)
def _fires(cron: str, timezone: str, minute: float) -> tuple[float, float]:
    """The last fire time at or before ``minute`` and the first after it (unix seconds)."""
    zone = datetime.UTC if timezone == "UTC" else ZoneInfo(timezone)
    at = datetime.datetime.fromtimestamp(minute, zone)
    before = next(CronSim(cron, at + datetime.timedelta(seconds=1), reverse=True)).timestamp()
    after = next(CronSim(cron, at)).timestamp()
    return before, after


def cron_windows(schedules: Iterable[Schedule], now: float, lead: float) -> tuple[Window, ...]:
    """The windows of ``schedules`` that are open at ``now`` or open within ``lead`` seconds."""
    windows = []
    minute = now - now % 60.0
    for schedule in schedules:
        before, after = _fires(schedule.cron, schedule.timezone, minute)
        if before <= now < before + schedule.duration:
            windows.append(Window(before, before + schedule.duration, schedule.replicas, 0, schedule.cron))
        if after - lead <= now:
            windows.append(Window(after, after + schedule.duration, schedule.replicas, 0, schedule.cron))
    return tuple(windows)


def floor(
    windows: Iterable[Window], now: float, lead: float, size: Callable[[int], int] | None = None
) -> tuple[int, Window | None]:
    """The highest floor of the windows open at ``now`` (or within ``lead``), and the window that sets it.
    ``size`` turns a window's ``tasks`` into workers; without it only ``replicas`` count."""
    best, chosen = 0, None
    for window in windows:
        if not window.start - lead <= now < window.end:
            continue
        wanted = window.replicas
        if window.tasks and size is not None:
            wanted = max(wanted, size(window.tasks))
        if wanted > best:
            best, chosen = wanted, window
    return best, chosen


def check_cron(cron: str) -> str | None:
    """Why ``cron`` is not a five-field cron expression this engine can use, or None."""
    if len(cron.split()) != 5:
        return "expected five fields: minute hour day-of-month month day-of-week"
    try:
        CronSim(cron, datetime.datetime(2026, 1, 1))
    except Exception as exc:  # cronsim raises its CronSimError, and a few ValueErrors for odd ranges
        return str(exc) or type(exc).__name__
    return None


def check_timezone(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, or ValueError for a malformed key
        return f"unknown time zone {name!r} (an IANA name like UTC or Europe/Paris)"
    return None
