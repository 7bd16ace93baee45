"""One poll's request to a broker and the reading of its replies (pure: bytes and values in, observations out).

The request, for the queues asked for: ``TIME``, then per queue the ``LLEN`` of every priority list, the
``HGETALL`` of its worker-report hash and (with ``read_oldest_age``) the ``LINDEX -1`` of every list, then a
``GET`` per beat app, then the ``LINDEX -1`` of every list of the queues in ``aged`` (the operator's choice: the
queues with a target wait; reading every queue's oldest message costs a message's transfer per waiting list, see
bench/bench_observe.py). It is packed once per queue set (cached). The replies are read by columns: a poll of 3,000
queues is a few milliseconds (bench/bench_observe.py). Error replies are values (redis-py's ``ResponseError``, the
type hiredis is told to build): a key of the wrong type is that queue's error, a missing permission the broker's.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.exceptions import ResponseError

from workerpool_operator import beat_forecast, reports
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.observation import QueueObservation

FIRES_AHEAD = 3600.0  # seconds of a beat forecast handed to the engine


class ObservationError(Exception):
    """A broker-wide failure found in the replies (for example a missing ACL permission)."""


@dataclass(frozen=True, slots=True)
class PollPlan:
    """One poll's request for one broker, and where each queue's replies sit in the answer."""

    queues: tuple[str, ...]
    list_keys: tuple[tuple[str, ...], ...]  # per queue: every priority list
    report_keys: tuple[str, ...]  # per queue
    read_oldest_age: bool
    beat_apps: tuple[str, ...]  # apps whose beat forecast is read, after every queue's replies
    aged: tuple[str, ...]  # queues whose lists' oldest messages are read, last (all of them with read_oldest_age)
    commands: tuple[tuple[str, ...], ...] = field(repr=False)
    payload: bytes = field(repr=False)  # the packed commands, sent as they are

    @property
    def reply_count(self) -> int:
        return len(self.commands)

    @property
    def aged_count(self) -> int:
        """Replies of the ``aged`` section, at the end."""
        return len(self.aged) * len(self.list_keys[0]) if self.aged else 0


@functools.lru_cache(maxsize=512)
def poll_plan(
    config: BrokerConfig,
    queues: tuple[str, ...],
    read_oldest_age: bool = False,
    beat_apps: tuple[str, ...] = (),
    aged: tuple[str, ...] = (),
) -> PollPlan:
    """The request for ``queues`` on ``config``'s broker: ``TIME``, then per queue its LLENs, its HGETALL
    and (with ``read_oldest_age``) its LINDEX -1s, then a GET per beat app, then the LINDEX -1s of the ``aged``
    queues (ignored with ``read_oldest_age``; queues not in ``queues`` are left out). Cached: the same queue set
    is packed once."""
    commands: list[tuple[str, ...]] = [("TIME",)]
    list_keys = tuple(tuple(config.priority_keys(queue)) for queue in queues)
    report_keys = tuple(reports.report_key(queue, config.global_keyprefix) for queue in queues)
    for keys, report in zip(list_keys, report_keys, strict=True):
        commands += [("LLEN", key) for key in keys]
        commands.append(("HGETALL", report))
        if read_oldest_age:
            commands += [("LINDEX", key, "-1") for key in keys]
    commands += [("GET", beat_forecast.forecast_key(app, config.global_keyprefix)) for app in beat_apps]
    if aged:
        wanted = frozenset(aged)
        aged = () if read_oldest_age else tuple(queue for queue in queues if queue in wanted)
    for queue in aged:
        commands += [("LINDEX", key, "-1") for key in config.priority_keys(queue)]
    return PollPlan(
        queues=queues,
        list_keys=list_keys,
        report_keys=report_keys,
        read_oldest_age=read_oldest_age,
        beat_apps=beat_apps,
        aged=aged,
        commands=tuple(commands),
        payload=b"".join(hiredis.pack_command(cast(Any, command)) for command in commands),
    )


def read_replies(
    plan: PollPlan,
    replies: Sequence[object],
    report_ttl: float = reports.DEFAULT_TTL,
    previous: Mapping[str, QueueObservation] | None = None,
    problems: list[str] | None = None,
) -> dict[str, QueueObservation]:
    """Turn the replies to ``plan`` (in order; errors as ``ResponseError`` values) into observations.

    ``previous`` (the last poll's result) lets a queue without reports whose backlog did not change keep
    its previous, equal, observation instead of a new one. Problems that are not a queue's (an unreadable beat
    forecast) are appended to ``problems``, for the caller to log. Raises :class:`ObservationError` for failures
    of the whole broker (no clock, missing permission)."""
    if len(replies) != plan.reply_count:
        raise ObservationError(f"expected {plan.reply_count} replies, got {len(replies)}")
    if isinstance(replies[0], ResponseError):
        _raise_for_broker_wide(replies[0])
    now = _server_time(replies[0])
    previous = previous or {}
    # The hot loop of a poll (3,000 queues in a few ms): the replies are cut into columns at C speed,
    # one row per queue; the details are worked out only for what is not plain.
    width = len(plan.list_keys[0]) if plan.queues else 0
    stride = width * 2 + 1 if plan.read_oldest_age else width + 1
    aged_from = len(replies) - plan.aged_count
    body = replies[1 : aged_from - len(plan.beat_apps)]
    lengths_rows = zip(*(body[column::stride] for column in range(width)), strict=True)
    report_column = body[width::stride]
    oldest_rows: Iterable[Sequence[object]] = (
        zip(*(body[width + 1 + column :: stride] for column in range(width)), strict=True)
        if plan.read_oldest_age
        else itertools.repeat(())
    )
    observed: dict[str, QueueObservation] = {}
    live = reports.live_reports_of_reply
    for queue, keys, report_key, lengths, report, oldest in zip(
        plan.queues, plan.list_keys, plan.report_keys, lengths_rows, report_column, oldest_rows, strict=False
    ):  # not strict: oldest_rows may repeat forever; the lengths were checked above
        try:
            backlog = sum(lengths)
        except TypeError:  # a reply is an error, not a number
            observed[queue] = QueueObservation(queue=queue, error=_lengths_error(keys, lengths))
            continue
        if not isinstance(report, list):
            observed[queue] = QueueObservation(queue=queue, error=_report_error(report_key, report))
            continue
        if not report and not oldest:
            before = previous.get(queue)
            if (
                before is not None
                and before.backlog == backlog
                and not before.workers
                and not before.fires
                and before.ok
            ):
                observed[queue] = before  # frozen and equal: building a new one is most of the cost
                continue
            observed[queue] = QueueObservation(queue=queue, backlog=backlog)
            continue
        workers = live(report, now, report_ttl) if report else ()
        in_flight = 0
        for load in workers:
            in_flight += load.running + load.reserved
        observed[queue] = QueueObservation(
            queue, backlog, in_flight, workers, _oldest_age(oldest, now) if oldest else None
        )
    if plan.beat_apps:
        _add_fires(observed, replies[aged_from - len(plan.beat_apps) : aged_from], now, problems)
    if plan.aged:
        _add_oldest_ages(observed, plan.aged, width, replies[aged_from:], now)
    return observed


def _add_oldest_ages(
    observed: dict[str, QueueObservation], aged: Sequence[str], width: int, messages: Sequence[object], now: float
) -> None:
    """The oldest waiting task's age of each ``aged`` queue that has tasks waiting, from its lists' oldest
    messages (``width`` replies per queue, in order)."""
    for index, queue in enumerate(aged):
        seen = observed[queue]
        if seen.backlog and seen.ok:
            age = _oldest_age(messages[index * width : (index + 1) * width], now)
            if age is not None or seen.oldest_age is not None:  # (an observation kept from the last poll)
                observed[queue] = dataclasses.replace(seen, oldest_age=age)


def _add_fires(
    observed: dict[str, QueueObservation], forecasts: Sequence[object], now: float, problems: list[str] | None
) -> None:
    """Each queue's announced fires within :data:`FIRES_AHEAD`, from the beat forecasts' replies (source: the
    periodic task's name in ``beat_schedule``). A reply that is not a readable forecast adds nothing; an error
    reply is added to ``problems``."""
    fires: dict[str, list[tuple[float, str]]] = {}  # two apps may send to one queue
    for reply in forecasts:
        if isinstance(reply, ResponseError) and problems is not None:
            problems.append(f"reading a beat forecast failed (no pre-warming for beat's fires): {reply}")
        forecast = beat_forecast.decode_forecast(reply) if isinstance(reply, bytes | str) else None
        if forecast is None:
            continue
        for queue, found in forecast.fires_by_queue(now, FIRES_AHEAD).items():
            if queue in observed:
                fires.setdefault(queue, []).extend(found)
    for queue, announced in fires.items():
        if observed[queue].ok:
            observed[queue] = dataclasses.replace(observed[queue], fires=tuple(sorted(announced)))


def _lengths_error(keys: Sequence[str], lengths: Sequence[object]) -> str:
    for key, length in zip(keys, lengths, strict=True):
        if isinstance(length, ResponseError):
            _raise_for_broker_wide(length)
            return _reply_reason(length, key, "list")
        if not isinstance(length, int):
            return f"unexpected reply to LLEN {key!r}: {type(length).__name__}"
    raise AssertionError("called only when a length is not a number")  # pragma: no cover


def _report_error(report_key: str, report: object) -> str:
    if isinstance(report, ResponseError):
        _raise_for_broker_wide(report)
        return _reply_reason(report, report_key, "hash")
    return f"unexpected reply to HGETALL {report_key!r}: {type(report).__name__}"


def _server_time(reply: object) -> float:
    if isinstance(reply, list) and len(reply) == 2:
        try:
            return int(reply[0]) + int(reply[1]) / 1_000_000
        except (TypeError, ValueError):
            pass
    raise ObservationError(f"unexpected reply to TIME: {reply!r}")


# kombu's Redis transport stores a message as ``json.dumps({"body", "content-encoding", "content-type", "headers",
# "properties"})``: the properties last, after the headers. A key is never inside a JSON string (a quote there is
# escaped), so in that layout everything after the last ``"properties": {`` is the properties.
_PROPERTIES = b'"properties": {'
_HEADERS = b'"headers": {'
_TIMESTAMP = b'"timestamp": '
_NUMBER = re.compile(rb"[-+0-9.eE]+")


def message_timestamp(raw: bytes | str) -> float | None:
    """The ``timestamp`` property of one kombu message (JSON as stored by the Redis transport), if any.

    Read without decoding the message where it has kombu's layout (a poll may read thousands, of any size:
    decoding each was most of the cost, bench/bench_observe.py); any other layout is decoded."""
    data = raw.encode() if isinstance(raw, str) else raw
    properties = data.rfind(_PROPERTIES)
    if properties >= 0 and data.find(_HEADERS, properties) < 0:
        found = data.find(_TIMESTAMP, properties)
        if found < 0:
            return None  # no timestamp (Celery does not stamp messages unless told to)
        number = _NUMBER.match(data, found + len(_TIMESTAMP))
        if number is None:
            return None  # null, true, a string: not a time
        try:
            stamp = float(number.group())
        except ValueError:
            return None
        return stamp if math.isfinite(stamp) else None
    return _decoded_timestamp(data)


def _decoded_timestamp(raw: bytes) -> float | None:
    try:
        message = json.loads(raw)
        stamp = message["properties"]["timestamp"]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        return None
    return float(stamp)


def _oldest_age(messages: Iterable[object], now: float) -> float | None:
    oldest: float | None = None
    for raw in messages:
        if isinstance(raw, bytes | str):  # None: an empty list; an error reply (no LINDEX permission): unknown
            stamp = message_timestamp(raw)
            if stamp is not None and (oldest is None or stamp < oldest):
                oldest = stamp
    return None if oldest is None else max(0.0, now - oldest)


def _reply_reason(error: ResponseError, key: str, kind: str) -> str:
    message = str(error)
    if message.startswith("WRONGTYPE"):
        return f"wrong type: {key!r} is not a {kind}"
    return f"error reading {key!r}: {message}"


def _raise_for_broker_wide(error: ResponseError) -> None:
    message = str(error)
    if message.startswith("NOPERM"):
        raise ObservationError(f"permission denied: {message.removeprefix('NOPERM ')}")
    if message.startswith(("NOAUTH", "WRONGPASS")):
        raise ObservationError(f"auth failed: {message}")
