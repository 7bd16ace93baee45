"""Known spikes of another source than cron: Celery beat's published fire times. Pure.

Beat knows when each periodic task fires next and on which queue (``beat_forecast.py``); the observer hands
those times to the engine with each observation (``QueueObservation.fires``). What beat does not know is how
much work a fire brings (one task, or a task that fans out into thousands). So the engine learns it: for every
fire of a source it keeps the highest demand (backlog + in flight) of the queue during the ``LEARN_SPAN`` after
the fire, and the next fire of that source becomes a :class:`~workerpool_operator.engine.schedules.Window` of
that many tasks, opened one start-up delay early through the same ``floor()`` as the cron windows. A source
fired once has no size yet: its window holds one worker, so the first task does not wait a whole start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from workerpool_operator.engine.schedules import Window

LEARN_SPAN = 120.0  # seconds after a fire whose demand is that fire's
MAX_SOURCES = 32  # the periodic tasks of a queue the engine remembers (the most recently fired)
Fire = tuple[float, str]  # (unix time, source)


class Spike(NamedTuple):
    """What the engine remembers of one source: its fire being watched, and the demands seen after fires."""

    source: str
    fire: float  # the fire watched now, or coming next
    peak: int = 0  # the highest demand after the fire watched now
    size: int = 0  # the highest demand after the last complete fire (0: not measured yet)


def learn(spikes: tuple[Spike, ...], fires: Iterable[Fire], demand: int, now: float) -> tuple[Spike, ...]:
    """The memory after one more observation: peaks grow while a fire is watched, a fire watched for
    ``LEARN_SPAN`` gives its source a size, and each source then watches its next announced fire."""
    upcoming: dict[str, float] = {}
    for when, source in fires:
        if when > now and (source not in upcoming or when < upcoming[source]):
            upcoming[source] = when
    known = {spike.source: spike for spike in spikes}
    for source, when in upcoming.items():
        if source not in known:
            known[source] = Spike(source, when)
    kept = []
    for spike in known.values():
        if spike.fire <= now < spike.fire + LEARN_SPAN:
            spike = spike._replace(peak=max(spike.peak, demand))
        elif now >= spike.fire + LEARN_SPAN:
            size = max(spike.peak, demand) if spike.peak else spike.size
            # Watch the next announced fire; with none announced, nothing until one is.
            spike = Spike(spike.source, upcoming.get(spike.source, spike.fire), 0, size)
        elif spike.source in upcoming and upcoming[spike.source] < spike.fire:
            spike = spike._replace(fire=upcoming[spike.source])
        kept.append(spike)
    kept.sort(key=lambda s: s.fire, reverse=True)
    return tuple(kept[:MAX_SOURCES])


def windows(spikes: Iterable[Spike], fires: Iterable[Fire]) -> tuple[Window, ...]:
    """A window for every announced fire: as many tasks as its source brought last time, else one worker."""
    sizes = {spike.source: spike.size for spike in spikes}
    return tuple(
        Window(when, when + LEARN_SPAN, 0 if sizes.get(source) else 1, sizes.get(source, 0), f"beat: {source}")
        for when, source in fires
    )


def to_list(spikes: tuple[Spike, ...]) -> list[list[object]]:
    return [[s.source, s.fire, s.peak, s.size] for s in spikes]


def from_list(value: object) -> tuple[Spike, ...]:
    """Read what :func:`to_list` wrote; raises ``ValueError`` on anything else."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"scaling state: spikes must be a list, got {value!r}")
    spikes = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 4 or not isinstance(item[0], str):
            raise ValueError(f"scaling state: a spike must be [source, fire, peak, size], got {item!r}")
        source, fire, peak, size = item
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (fire, peak, size)):
            raise ValueError(f"scaling state: a spike must be [source, fire, peak, size], got {item!r}")
        spikes.append(Spike(source, float(fire), int(peak), int(size)))
    return tuple(spikes)
