"""``workerpool-operator record``: capture a trace from a live broker for ``simulate`` (docs/simulator.md). Wiring.

For ``--duration`` it polls the queues (the operator's observer: backlog and worker reports, one round trip)
every ``--interval`` and listens to Celery's event stream; then it makes the trace from the task events if
any task of the queues showed up in them, else estimates it from the polls (outcome.py), and writes the CSV
with a header saying which. A progress line on stderr shows the time left and the tasks seen; Ctrl-C (or
SIGTERM) ends the recording early and writes what it has. It needs only the broker: ``--redis URL``, or the
broker of a WorkerPool file (its inline URL, or the Secret ``urlFrom`` names when that Secret is in the file).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import yaml

from workerpool_operator import exit_codes
from workerpool_operator.brokers import BrokerConfig, BrokerURLError, redact_url
from workerpool_operator.observation import BrokerObservation
from workerpool_operator.observe import Observer
from workerpool_operator.record.celery_events import EventListener, celery_available
from workerpool_operator.record.outcome import Captured, RecordError, SourceName, outcome, queue_names
from workerpool_operator.record.report_estimate import Sample, WorkerSample
from workerpool_operator.record.trace_csv import format_trace, parse_seconds
from workerpool_operator.spec import QueueSpec, SpecError, WorkerPool

POLL_TIMEOUT = 2.0
INSPECT_EVERY = 30.0  # seconds between two `inspect active_queues` (sooner when an unknown worker shows up)
INSPECT_RETRY = 5.0
PROGRESS_EVERY = 1.0
PROGRESS_LINE_EVERY = 30.0  # when stderr is not a terminal


class InputError(Exception):
    """Bad arguments or files; ``str()`` is the one line for the user."""


def add_record_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``record`` on the CLI's subcommands."""
    record = sub.add_parser(
        "record",
        help="capture a trace (time,duration CSV for simulate) from a live broker",
        description="Record the tasks of some queues from a live Redis broker, as a trace `simulate` replays.",
        epilog=exit_codes.EPILOG,
    )
    record.add_argument(
        "--redis", metavar="URL", default=None, help="the broker URL (redis://, rediss://); with -f: instead of its"
    )
    record.add_argument(
        "-f", "--file", default=None, help="a WorkerPool YAML: its broker (URL, key prefix, priorities) and queues"
    )
    record.add_argument(
        "-q",
        "--queue",
        action="append",
        default=[],
        help="a queue to record (repeatable, or comma-separated); default: the pool's queues, else celery",
    )
    record.add_argument("--duration", required=True, help="how long: seconds, or 10m, 2h, 1d")
    record.add_argument("-o", "--output", metavar="CSV", default=None, help="write the trace here (default stdout)")
    record.add_argument(
        "--source",
        choices=["auto", "events", "reports"],
        default="auto",
        help="Celery's task events, or the estimate from worker reports (default auto: events when there are any)",
    )
    record.add_argument(
        "--interval", type=float, default=0.5, help="seconds between two polls of the queues (default 0.5)"
    )
    record.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        duration = parse_seconds(args.duration)
        if not 0.05 <= args.interval <= 60:
            raise InputError("--interval must be between 0.05 and 60 seconds")
        config, pool_queues = _broker(args)
        queues = queue_names([q for item in args.queue for q in item.split(",") if q.strip()], pool_queues)
    except (InputError, ValueError) as error:
        print(f"workerpool-operator record: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    if args.source == "events" and not celery_available():
        print("workerpool-operator record: --source events needs Celery (pip install '.[worker]')", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    captured = asyncio.run(capture(config, queues, duration, args.interval, args.source, sys.stderr))
    try:
        result = outcome(captured, args.source)
    except RecordError as error:
        print(f"workerpool-operator record: {error}", file=sys.stderr)
        return exit_codes.FAILED
    text = format_trace(result.tasks, result.header)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    target = f" to {args.output}" if args.output else ""
    print(f"record: wrote {result.summary}{target}", file=sys.stderr)
    return exit_codes.OK


def _broker(args: argparse.Namespace) -> tuple[BrokerConfig, list[str]]:
    """The broker to record from, and the pool's queue names when a WorkerPool file gave it."""
    if not args.file and not args.redis:
        raise InputError("give the broker: --redis URL, or -f with a WorkerPool file")
    if not args.file:
        config = BrokerConfig(url=args.redis)
        pool_queues: list[str] = []
    else:
        pool, url = _pool_and_url(Path(args.file), args.redis)
        try:
            config = pool.spec.broker.to_config(url)
        except SpecError as error:
            raise InputError(f"{args.file}: {error}") from None
        pool_queues = [name for queue in pool.spec.queues for name in _consumed(queue)]
    try:
        config.address()
    except BrokerURLError as error:
        raise InputError(str(error)) from None
    return config, pool_queues


def _consumed(queue: QueueSpec) -> list[str]:
    """The Celery queues a queue entry's workers consume: its ``celeryQueues`` (a worker group), else its name."""
    return list(queue.consumed)


def _pool_and_url(path: Path, url: str | None) -> tuple[WorkerPool, str]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError:
        raise InputError(f"{path} is not valid YAML") from None
    pools = [d for d in documents if d.get("kind") == "WorkerPool"]
    if not pools:
        raise InputError(f"{path} holds no WorkerPool")
    try:
        pool = WorkerPool.from_object(pools[0])
    except SpecError as error:
        raise InputError(f"{path}: {str(error).splitlines()[0]}") from None
    broker = pool.spec.broker
    if url is not None:
        return pool, url
    if broker.url is not None:
        return pool, broker.url
    assert broker.url_from is not None
    ref = broker.url_from
    for doc in documents:
        if doc.get("kind") == "Secret" and (doc.get("metadata") or {}).get("name") == ref.name:
            if ref.key in (doc.get("stringData") or {}):
                return pool, str(doc["stringData"][ref.key])
            if ref.key in (doc.get("data") or {}):
                return pool, base64.b64decode(doc["data"][ref.key]).decode()
    raise InputError(f"the broker URL is in Secret {ref.name} (not in {path}): give it with --redis URL")


# --- the recording ------------------------------------------------------------------------------------------


async def capture(
    config: BrokerConfig,
    queues: Sequence[str],
    duration: float,
    interval: float,
    source: SourceName,
    progress: TextIO,
    stop: asyncio.Event | None = None,
) -> Captured:
    """Poll and listen for ``duration`` seconds (or until ``stop``, SIGINT or SIGTERM); what was gathered."""
    stop = stop or asyncio.Event()
    start = time.time()
    captured = Captured(redact_url(config.url), tuple(queues), start, start, interval, duration)
    listener = _listener(config, source, captured)
    view = Progress(progress, duration, tuple(queues))
    view.say(_starting(captured, listener))
    inspecting: asyncio.Task[dict[str, frozenset[str]]] | None = None
    next_inspect = start
    heard = False
    with _stop_on_signals(stop) as interrupted:
        async with Observer() as observer:
            while not stop.is_set() and time.time() < start + duration:
                tick = time.monotonic()
                observed = await observer.observe({config: queues}, POLL_TIMEOUT)
                _keep(captured, observed[config], queues, time.time())
                if listener is not None:
                    if listener.listening.is_set() and not heard:
                        heard = True
                        view.say("record: listening to Celery's events")
                    for event in listener.drain():
                        captured.log.add(event)
                    if inspecting is not None and inspecting.done():
                        captured.worker_queues.update(_answers(inspecting))
                        inspecting = None
                    unknown = captured.log.hostnames - set(captured.worker_queues)
                    if inspecting is None and (time.time() >= next_inspect or unknown):
                        inspecting = asyncio.create_task(asyncio.to_thread(listener.worker_queues))
                        next_inspect = time.time() + (INSPECT_EVERY if not unknown else INSPECT_RETRY)
                view.update(start + duration - time.time(), captured)
                remaining = interval - (time.monotonic() - tick)
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), remaining)
        captured.interrupted = interrupted()
    captured.end = time.time()
    if listener is not None:
        await _finish_listening(listener, captured, inspecting, interval)
    view.done()
    return captured


async def _finish_listening(
    listener: EventListener,
    captured: Captured,
    inspecting: asyncio.Task[dict[str, frozenset[str]]] | None,
    interval: float,
) -> None:
    """The last events and answers: events of the last moments are still on their way, and a worker first seen
    at the end still has to say which queues it consumes."""
    await asyncio.sleep(min(interval, 0.5))
    listener.stop()
    for event in listener.drain():
        captured.log.add(event)
    if inspecting is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(inspecting), 5.0)
        captured.worker_queues.update(_answers(inspecting))
    if captured.log.hostnames - set(captured.worker_queues):
        with contextlib.suppress(Exception):
            captured.worker_queues.update(await asyncio.to_thread(listener.worker_queues))
    if listener.error is not None and captured.events_problem is None:
        captured.events_problem = f"the event stream failed: {listener.error}"


def _listener(config: BrokerConfig, source: SourceName, captured: Captured) -> EventListener | None:
    if source == "reports":
        captured.events_problem = "--source reports"
        return None
    if not celery_available():
        captured.events_problem = "Celery is not installed here (pip install '.[worker]')"
        return None
    return EventListener(config).start()


def _starting(captured: Captured, listener: EventListener | None) -> str:
    what = "Celery task events and " if listener is not None else ""
    return (
        f"record: {', '.join(captured.queues)} on {captured.broker} for {captured.requested:g} s: {what}"
        f"the queues and worker reports every {captured.interval:g} s (Ctrl-C stops and writes what it has)"
    )


def _answers(task: asyncio.Task[dict[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    """What ``inspect active_queues`` answered; nothing when it failed or is still running."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return {}
    return task.result()


def _keep(captured: Captured, observation: BrokerObservation, queues: Sequence[str], now: float) -> None:
    """One poll as a sample: backlog summed, each worker once (its counts summed over the queues)."""
    if not observation.ok:
        captured.failed_polls += 1
        captured.last_poll_error = observation.error
        return
    backlog = 0
    workers: dict[str, WorkerSample] = {}
    for name in queues:
        queue = observation.queues[name]
        backlog += queue.backlog
        for load in queue.workers:
            seen = workers.get(load.worker)
            workers[load.worker] = WorkerSample(
                running=load.running + (seen.running if seen else 0),
                reserved=load.reserved + (seen.reserved if seen else 0),
                done=max(load.done, seen.done if seen else 0),
                heartbeat=max(load.heartbeat, seen.heartbeat if seen else 0.0),
                started=load.started,
            )
    captured.samples.append(Sample(now, backlog, workers))


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[Callable[[], bool]]:
    """SIGINT and SIGTERM set ``stop`` (once: a second Ctrl-C interrupts as usual). Yields "was it a signal?"."""
    loop = asyncio.get_running_loop()
    caught: list[int] = []

    def handle(number: int) -> None:
        caught.append(number)
        stop.set()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handle, signum)
    try:
        yield lambda: bool(caught)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


class Progress:
    """The progress line: time left and tasks seen, redrawn in place on a terminal, else a line now and then."""

    def __init__(self, stream: TextIO, duration: float, queues: tuple[str, ...]) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.duration = duration
        self.queues = queues
        self.last = 0.0

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, left: float, captured: Captured) -> None:
        now = time.monotonic()
        if now - self.last < (PROGRESS_EVERY if self.live else PROGRESS_LINE_EVERY):
            return
        self.last = now
        sample = captured.samples[-1] if captured.samples else None
        waiting = sample.backlog if sample else 0
        running = sum(w.running for w in sample.workers.values()) if sample else 0
        workers = len(sample.workers) if sample else 0
        line = (
            f"record: {_clock(max(0.0, left))} left, {captured.log.received()} tasks seen in events; now "
            f"{waiting} waiting, {running} running on {workers} reporting worker(s)"
        )
        if self.live:
            self.stream.write("\r" + line.ljust(100))
            self.stream.flush()
        else:
            self.say(line)

    def done(self) -> None:
        if self.live and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
