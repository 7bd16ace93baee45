"""Workload traces for the simulator: read a CSV, draw the tasks. Pure apart from reading the file's text.

Two formats, told apart by the header (docs/simulator.md):

- ``time,rate[,service_time]``: a piecewise-constant arrival rate. Each row's rate (tasks per second, Poisson
  arrivals) holds from its ``time`` (seconds from the start) until the next row's; the last row closes the
  trace (its rate is not used). The optional ``service_time`` is a distribution (``exp:2``) for the tasks
  arriving in that segment; empty means the simulator's default.
- ``time,duration``: one task per row, arriving at ``time`` and running for ``duration`` seconds (0 is fine:
  a task faster than the trace's resolution).

Lines starting with ``#`` are comments. Times must not go backwards.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ServiceTime = Callable[[random.Random], float]


class TraceError(ValueError):
    """A trace or a distribution the simulator cannot use; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float
    rate: float  # tasks per second
    service_time: str | None = None  # distribution spec for tasks arriving here; None: the default


@dataclass(frozen=True, slots=True)
class Trace:
    """A parsed trace: either rate segments or explicit tasks (``tasks``: (arrival, duration) pairs)."""

    name: str
    end: float
    segments: tuple[Segment, ...] = ()
    tasks: tuple[tuple[float, float], ...] = ()

    @property
    def explicit(self) -> bool:
        return not self.segments

    def expected_tasks(self) -> float:
        if self.explicit:
            return float(len(self.tasks))
        return sum(s.rate * (s.end - s.start) for s in self.segments)


DISTRIBUTIONS = "exp:MEAN, const:SECONDS, uniform:LOW,HIGH, lognormal:MEAN,SIGMA (or a bare number: constant)"


def parse_service_time(spec: str) -> ServiceTime:
    """A task duration distribution (see :func:`parse_distribution`); durations are positive."""
    return parse_distribution(spec)


def parse_distribution(spec: str, *, allow_zero: bool = False) -> ServiceTime:
    """``exp:2`` (exponential, mean 2 s), ``const:0.5`` or ``0.5``, ``uniform:1,3``, ``lognormal:2,0.8``
    (mean 2 s; sigma of the underlying normal). ``allow_zero``: ``const:0`` is accepted (a start-up delay)."""
    text = spec.strip()
    kind, _, args = text.partition(":")
    kind = kind.strip().lower()
    if not args:
        kind, args = "const", text
    try:
        values = [float(a) for a in args.split(",")]
    except ValueError:
        raise TraceError(f"service time {spec!r}: expected {DISTRIBUTIONS}") from None
    if not all(math.isfinite(v) for v in values):
        raise TraceError(f"service time {spec!r}: numbers must be finite")
    expected = {"exp": 1, "const": 1, "uniform": 2, "lognormal": 2}.get(kind)
    if expected is None or len(values) != expected:
        raise TraceError(f"service time {spec!r}: expected {DISTRIBUTIONS}")
    if kind == "exp":
        (mean,) = values
        _positive(spec, mean, "the mean")
        rate = 1.0 / mean
        return lambda rng: rng.expovariate(rate)
    if kind == "const":
        (seconds,) = values
        if not (allow_zero and seconds == 0):
            _positive(spec, seconds, "the duration")
        return lambda rng: seconds
    if kind == "uniform":
        low, high = values
        if not 0 <= low <= high or high == 0:
            raise TraceError(f"service time {spec!r}: need 0 <= LOW <= HIGH and HIGH > 0")
        return lambda rng: rng.uniform(low, high)
    mean, sigma = values
    _positive(spec, mean, "the mean")
    if sigma < 0:
        raise TraceError(f"service time {spec!r}: sigma must not be negative")
    mu = math.log(mean) - sigma * sigma / 2  # so that the distribution's mean is `mean`
    return lambda rng: rng.lognormvariate(mu, sigma)


def _positive(spec: str, value: float, what: str) -> None:
    if value <= 0:
        raise TraceError(f"service time {spec!r}: {what} must be positive")


def read_trace(path: str) -> Trace:
    try:
        with open(path, newline="") as handle:
            text = handle.read()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror or exc}") from None
    return parse_trace(text, name=path)


def parse_trace(text: str, name: str = "trace") -> Trace:
    """Parse a trace's CSV text. Raises ``TraceError`` naming the file and line of the first problem."""
    rows = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise TraceError(f"{name}: empty trace: expected a header `time,rate` or `time,duration` and rows")
    header_line, header_text = rows[0]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    if header[:2] == ["time", "rate"] and header[2:] in ([], ["service_time"]):
        return _rate_trace(name, rows[1:], with_service=len(header) == 3)
    if header == ["time", "duration"]:
        return _task_trace(name, rows[1:])
    raise TraceError(
        f"{name} line {header_line}: header must be `time,rate`, `time,rate,service_time` or `time,duration`, "
        f"got `{header_text.strip()}`"
    )


def _cells(name: str, number: int, line: str, count: int, optional: int = 0) -> list[str]:
    cells = [c.strip() for c in next(csv.reader(io.StringIO(line)))]
    if not count <= len(cells) <= count + optional:
        raise TraceError(f"{name} line {number}: expected {count} values, got {len(cells)}: `{line.strip()}`")
    return cells + [""] * (count + optional - len(cells))


def _number(name: str, number: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{name} line {number}: {column} must be a non-negative number, got {text!r}")
    return value


def _rate_trace(name: str, rows: Iterable[tuple[int, str]], with_service: bool) -> Trace:
    points: list[tuple[float, float, str | None]] = []
    last = 0.0
    for number, line in rows:
        cells = _cells(name, number, line, 2, optional=1 if with_service else 0)
        time = _number(name, number, "time", cells[0])
        rate = _number(name, number, "rate", cells[1])
        if time < last:
            raise TraceError(f"{name} line {number}: time {cells[0]} goes backwards (previous row: {last:g})")
        service = cells[2] if with_service and cells[2] else None
        if service is not None:
            try:
                parse_service_time(service)
            except TraceError as exc:
                raise TraceError(f"{name} line {number}: {exc}") from None
        points.append((time, rate, service))
        last = time
    if len(points) < 2:
        raise TraceError(f"{name}: a rate trace needs at least two rows (the last one closes the trace)")
    segments = tuple(
        Segment(start, end, rate, service)
        for (start, rate, service), (end, _, _) in itertools.pairwise(points)
        if end > start
    )
    return Trace(name=name, end=points[-1][0], segments=segments)


def _task_trace(name: str, rows: Iterable[tuple[int, str]]) -> Trace:
    tasks: list[tuple[float, float]] = []
    last = 0.0
    for number, line in rows:
        cells = _cells(name, number, line, 2)
        time = _number(name, number, "time", cells[0])
        duration = _number(name, number, "duration", cells[1])  # 0: faster than the trace's resolution
        if time < last:
            raise TraceError(f"{name} line {number}: time {cells[0]} goes backwards (previous row: {last:g})")
        tasks.append((time, duration))
        last = time
    if not tasks:
        raise TraceError(f"{name}: no tasks after the header")
    return Trace(name=name, end=tasks[-1][0], tasks=tuple(tasks))


def draw_tasks(trace: Trace, default_service: str, seed: int, override: str | None = None) -> list[tuple[float, float]]:
    """The tasks as (arrival, duration), sorted by arrival. Deterministic for a seed.

    Arrivals and durations come from separate random streams, so a different service time leaves the
    arrival times as they were. ``override`` replaces every segment's own service time.
    """
    if trace.explicit:
        if override is None:
            return list(trace.tasks)
        service = parse_service_time(override)
        durations = random.Random(f"{seed}:service")
        return [(arrival, service(durations)) for arrival, _ in trace.tasks]
    arrivals = random.Random(f"{seed}:arrivals")
    durations = random.Random(f"{seed}:service")
    default = parse_service_time(override or default_service)
    tasks: list[tuple[float, float]] = []
    append = tasks.append
    for segment in trace.segments:
        if segment.rate <= 0:
            continue
        service = default if override or segment.service_time is None else parse_service_time(segment.service_time)
        gap = arrivals.expovariate
        rate, end = segment.rate, segment.end
        time = segment.start + gap(rate)
        while time < end:
            append((time, service(durations)))
            time += gap(rate)
    return tasks
