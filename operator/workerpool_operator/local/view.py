"""What the local runtime shows: a live table per queue in a terminal, plain log lines anywhere else.

:class:`Dashboard` turns the scaling loop's reports into per-queue figures and a list of events (pure: the
caller passes the time and the replica counts). :class:`LiveView` draws it with ``rich``; :class:`LogView`
prints the events and a status line per queue now and then, for pipes, files and CI logs.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from workerpool_operator.observation import WorkerLoad
from workerpool_operator.scaling_types import PoolResult, QueueResult

SPARK = "▁▂▃▄▅▆▇█"
THROUGHPUT_WINDOW = 10.0  # seconds of completions the throughput figure averages over
HISTORY = 40  # backlog samples kept for the sparkline


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """The fixed facts of a queue, from the spec."""

    queue: str
    pool: str
    concurrency: int
    min_replicas: int
    max_replicas: int


@dataclass
class QueueRow:
    """The latest state of one queue, as shown."""

    info: QueueInfo
    backlog: int | None = None
    in_flight: int | None = None
    workers: int = 0
    stopping: int = 0
    draining: int = 0  # workers asked to drain: no new tasks, removed once idle
    desired: int | None = None
    reason: str = "waiting for the first poll"
    error: str | None = None
    last_change: tuple[float, int, int] | None = None  # (when, from, to)
    peak_workers: int = 0
    throughput: float = 0.0
    history: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY))
    _done: dict[str, int] = field(default_factory=dict)  # last `done` count seen per worker
    _completions: deque[tuple[float, int]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the timeline (for the demo's plot)."""

    at: float
    queue: str
    backlog: int
    in_flight: int
    workers: int


ReplicaCounts = Callable[[str], tuple[int, int]]  # queue -> (replicas, stopping)


class Dashboard:
    """Per-queue figures, events and a timeline, updated from each :class:`PoolResult`."""

    def __init__(self, title: str, queues: list[QueueInfo], *, max_events: int = 8) -> None:
        self.title = title
        self.queues: dict[str, QueueRow] = {q.queue: QueueRow(info=q) for q in queues}
        self.events: deque[tuple[float, str]] = deque(maxlen=max_events)  # the latest, for the screen
        self.all_events: list[tuple[float, str]] = []
        self.timeline: list[Sample] = []
        self.broker_error: str | None = None
        self.started = time.time()
        self.notes: list[str] = []  # footer lines (where the logs are, how to stop)

    def event(self, message: str, now: float | None = None) -> tuple[float, str]:
        entry = (time.time() if now is None else now, message)
        self.events.append(entry)
        self.all_events.append(entry)
        return entry

    def update(self, result: PoolResult, replicas: ReplicaCounts, now: float | None = None) -> list[tuple[float, str]]:
        """Take one tick's result; returns the events it produced."""
        now = result.observed_at if now is None else now
        events: list[tuple[float, str]] = []
        if result.broker_error != self.broker_error:
            if result.broker_error:
                events.append(self.event(f"broker unreachable: {result.broker_error}", now))
            elif self.broker_error:
                events.append(self.event("broker reachable again", now))
            self.broker_error = result.broker_error
        for qr in result.queues:
            figures = self.queues.get(qr.queue)
            if figures is None:
                continue
            obs = qr.observation
            figures.error = obs.error or qr.scale_error
            if obs.ok:
                figures.backlog, figures.in_flight = obs.backlog, obs.in_flight
                figures.history.append(obs.backlog)
                self._count_completions(figures, obs.workers, now)
            if qr.decision is not None:
                figures.desired = qr.decision.desired_replicas
                figures.reason = qr.decision.reason
                figures.draining = len(qr.state.draining) if qr.state is not None else 0
                events += self._drain_events(qr, now)
                if qr.scaled_from is not None and qr.scale_error is None:
                    figures.last_change = (now, qr.scaled_from, qr.decision.desired_replicas)
                    verb = "up" if qr.decision.desired_replicas > qr.scaled_from else "down"
                    events.append(
                        self.event(
                            f"{qr.queue}: scale {verb} {qr.scaled_from} → {qr.decision.desired_replicas}"
                            f" ({qr.decision.reason})",
                            now,
                        )
                    )
            if qr.scale_error:
                events.append(self.event(f"{qr.queue}: scaling failed: {qr.scale_error}", now))
            figures.workers, figures.stopping = replicas(qr.queue)
            figures.peak_workers = max(figures.peak_workers, figures.workers)
            self.timeline.append(Sample(now, qr.queue, figures.backlog or 0, figures.in_flight or 0, figures.workers))
        return events

    def _drain_events(self, qr: QueueResult, now: float) -> list[tuple[float, str]]:
        decision = qr.decision
        assert decision is not None
        events = []
        if decision.drain:
            running = sum(w.running for w in qr.observation.workers if w.worker in decision.drain)
            names = ", ".join(decision.drain)
            events.append(self.event(f"{qr.queue}: draining {names} ({running} tasks running)", now))
        if decision.undrain:
            events.append(self.event(f"{qr.queue}: taking {', '.join(decision.undrain)} back (demand is back)", now))
        return events

    def _count_completions(self, figures: QueueRow, workers: tuple[WorkerLoad, ...], now: float) -> None:
        seen: dict[str, int] = {}
        finished = 0
        for load in workers:
            previous = figures._done.get(load.worker)
            if previous is not None and load.done >= previous:
                finished += load.done - previous
            seen[load.worker] = load.done
        figures._done = seen
        figures._completions.append((now, finished))
        while figures._completions and figures._completions[0][0] < now - THROUGHPUT_WINDOW:
            figures._completions.popleft()
        span = max(1.0, now - figures._completions[0][0]) if len(figures._completions) > 1 else 1.0
        figures.throughput = sum(n for _, n in list(figures._completions)[1:]) / span


def sparkline(values: deque[int] | list[int], width: int = 16) -> str:
    recent = list(values)[-width:]
    top = max(recent, default=0)
    if top <= 0:
        return SPARK[0] * len(recent)
    return "".join(SPARK[min(len(SPARK) - 1, round(v / top * (len(SPARK) - 1)))] for v in recent)


def _ago(now: float, then: float) -> str:
    seconds = max(0, int(now - then))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


class View(Protocol):
    def show(self, events: list[tuple[float, str]]) -> None: ...

    def close(self) -> None: ...


class LiveView:
    """A table per queue redrawn in place (``rich``), with the latest events below it."""

    def __init__(self, dashboard: Dashboard, console: Console | None = None) -> None:
        self._dashboard = dashboard
        self._console = console or Console()
        self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def show(self, events: list[tuple[float, str]]) -> None:
        self._live.update(self._render())

    def close(self) -> None:
        self._live.update(self._render())
        self._live.stop()

    def _render(self) -> RenderableType:
        board = self._dashboard
        now = time.time()
        elapsed = int(now - board.started)
        # Below 120 columns: no bars, sparklines or table edges, so every figure fits whole down to 80 columns
        # (a terminal's default); the reasons and events wrap rather than end in "…".
        narrow = self._console.width < 120
        table = Table(
            box=box.SIMPLE_HEAD,
            expand=not narrow,
            header_style="bold",
            border_style="dim",
            pad_edge=False,
            show_edge=not narrow,
        )
        table.add_column("queue", style="bold cyan", no_wrap=True)
        table.add_column("pool", no_wrap=True)
        table.add_column("workers", no_wrap=True)
        table.add_column("backlog", no_wrap=True)
        table.add_column("in flight", justify="right", no_wrap=True)
        table.add_column("tasks/s", justify="right", no_wrap=True)
        table.add_column("last scale", no_wrap=True)
        decisions = Table.grid(padding=(0, 1))
        decisions.add_column(style="bold cyan", no_wrap=True)
        decisions.add_column(overflow="fold")
        for figures in board.queues.values():
            info = figures.info
            table.add_row(
                info.queue,
                f"{info.pool} ×{info.concurrency}",  # noqa: RUF001
                _workers_cell(figures, bars=not narrow),
                _backlog_cell(figures, sparkline_width=0 if narrow else 10),
                "—" if figures.in_flight is None else str(figures.in_flight),
                f"{figures.throughput:.1f}",
                _change_cell(figures, now, short=narrow),
            )
            reason = Text(figures.error, style="red") if figures.error else Text(figures.reason, style="italic")
            decisions.add_row(info.queue, reason)
        events = Text(overflow="fold")
        for at, message in board.events:
            events.append(time.strftime("%H:%M:%S ", time.localtime(at)), style="dim")
            events.append(message + "\n")
        events.rstrip()
        if not board.events:
            events.append("no scaling yet", style="dim")
        title = Text.assemble((board.title, "bold"), (f"  {elapsed // 60:02d}:{elapsed % 60:02d}", "dim"))
        if board.broker_error:
            title.append(f"  broker: {board.broker_error}", style="bold red")
        parts: list[RenderableType] = [
            Panel(Group(table, decisions), title=title, title_align="left", border_style="cyan"),
            Panel(events, title="events", title_align="left", border_style="dim"),
        ]
        parts += [Text(note, style="dim", overflow="fold") for note in board.notes]
        return Group(*parts)


def _workers_cell(figures: QueueRow, bars: bool = True) -> Text:
    info = figures.info
    width = min(info.max_replicas, 8) if bars else 0
    filled = min(width, math.ceil(figures.workers * width / max(1, info.max_replicas)))
    cell = Text()
    cell.append("■" * filled, style="green")
    cell.append("□" * (width - filled), style="dim")
    cell.append(f" {figures.workers}" if bars else str(figures.workers), style="bold")
    cell.append(f"/{info.max_replicas}", style="dim")
    if figures.draining:
        cell.append(f" {figures.draining} draining" if bars else f" {figures.draining}⇣", style="yellow")
    if figures.stopping:
        cell.append(f" +{figures.stopping} stopping" if bars else f" +{figures.stopping}↓", style="magenta")
    return cell


def _backlog_cell(figures: QueueRow, sparkline_width: int = 10) -> Text:
    if figures.backlog is None:
        return Text("—", style="dim")
    if not sparkline_width:
        return Text(str(figures.backlog))
    cell = Text(f"{figures.backlog:>5} ")
    cell.append(sparkline(figures.history, width=sparkline_width), style="yellow")
    return cell


def _change_cell(figures: QueueRow, now: float, short: bool = False) -> Text:
    if figures.last_change is None:
        return Text("—", style="dim")
    at, before, after = figures.last_change
    arrow, style = ("↑", "green") if after > before else ("↓", "blue")
    cell = Text(f"{arrow} {before}→{after} ", style=style)
    ago = _ago(now, at)
    cell.append(ago.removesuffix(" ago") if short else ago, style="dim")
    return cell


class LogView:
    """Plain lines: every event at once, and each queue's figures when they changed (at most every ``every`` s)."""

    def __init__(self, dashboard: Dashboard, out: TextIO | None = None, every: float = 5.0) -> None:
        self._dashboard = dashboard
        self._out = out or sys.stdout
        self._every = every
        self._last_status = 0.0
        self._last_lines: dict[str, str] = {}
        for note in dashboard.notes:
            self._print(time.time(), note)

    def _print(self, at: float, message: str) -> None:
        self._out.write(f"{time.strftime('%H:%M:%S', time.localtime(at))} {message}\n")
        self._out.flush()

    def show(self, events: list[tuple[float, str]]) -> None:
        for at, message in events:
            self._print(at, message)
        now = time.time()
        if now - self._last_status < self._every:
            return
        self._last_status = now
        for queue, line in self.status_lines().items():
            if self._last_lines.get(queue) != line:
                self._last_lines[queue] = line
                self._print(now, line)

    def status_lines(self) -> dict[str, str]:
        lines = {}
        for queue, f in self._dashboard.queues.items():
            stopping = f" (+{f.stopping} stopping)" if f.stopping else ""
            stopping += f" ({f.draining} draining)" if f.draining else ""
            figures = f"backlog {f.backlog} in-flight {f.in_flight}" if f.backlog is not None else f"error: {f.error}"
            lines[queue] = f"{queue}: {figures} workers {f.workers}{stopping} {f.throughput:.1f} tasks/s"
        return lines

    def close(self) -> None:
        self._out.flush()


def make_view(dashboard: Dashboard, *, live: bool | None = None, out: TextIO | None = None) -> View:
    """A :class:`LiveView` when writing to a terminal (or ``live`` is set), else a :class:`LogView`."""
    stream = out or sys.stdout
    if live is None:
        live = stream.isatty()
    if live:
        return LiveView(dashboard, Console(file=stream))
    return LogView(dashboard, stream)


def replica_counts(counts: Mapping[str, tuple[int, int]]) -> ReplicaCounts:
    return lambda queue: counts.get(queue, (0, 0))
