"""The worker-report format shared by the worker entrypoint (writer) and the observer (reader)."""

from __future__ import annotations

import pytest

from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import (
    decode_report,
    encode_report,
    format_to_write,
    live_reports,
    live_reports_of_reply,
    report_key,
    version_number,
)


def test_a_report_round_trips_as_bytes_or_text() -> None:
    load = WorkerLoad(
        "pod-1", running=2, reserved=3, done=40, heartbeat=1000.5, concurrency=4, draining=True, started=990.25
    )
    assert decode_report("pod-1", encode_report(load)) == load
    assert decode_report("pod-1", encode_report(load).encode()) == load
    assert load.in_flight == 5


def test_format_2_is_one_line_of_integers_times_in_milliseconds() -> None:
    load = WorkerLoad("pod-1", running=2, reserved=3, done=40, heartbeat=1700000000.1234, concurrency=4)
    assert encode_report(load) == "2 2 3 40 1700000000123 4 0 0 0 0"
    decoded = decode_report("pod-1", b"2 2 3 40 1700000000123 4 1 1699999999000")  # a worker before 0.3
    assert decoded == WorkerLoad("pod-1", 2, 3, 40, 1700000000.123, 4, draining=True, started=1699999999.0)


def test_stopping_and_the_template_version_ride_at_the_end() -> None:
    load = WorkerLoad("w", running=1, heartbeat=1000.0, concurrency=2, stopping=True, version=version_number("a1b2c3"))
    assert encode_report(load) == f"2 1 0 0 1000000 2 0 0 1 {0xA1B2C3}"
    assert decode_report("w", encode_report(load)) == load
    assert version_number(None) == 0 and version_number("zz") not in (0, version_number("zy"))


def test_fields_a_later_worker_appends_are_ignored() -> None:
    later = decode_report("w", b"2 1 0 5 1000000 2 0 0 1 42 77 88")
    assert later == WorkerLoad("w", 1, 0, 5, 1000.0, 2, stopping=True, version=42)


def test_format_1_json_from_workers_older_than_the_operator_is_read() -> None:
    """An operator upgraded before its workers' image: their JSON reports (format 1) still count."""
    old = (
        b'{"worker":"pod-1","running":2,"reserved":3,"done":40,"heartbeat":1000.5,"concurrency":4,'
        b'"draining":true,"started":990.25}'
    )
    assert decode_report("pod-1", old) == WorkerLoad("pod-1", 2, 3, 40, 1000.5, 4, True, 990.25)
    older = b'{"worker":"pod-2","running":1,"reserved":0,"done":7,"heartbeat":1000.0,"concurrency":4}'
    assert decode_report("pod-2", older) == WorkerLoad("pod-2", 1, 0, 7, 1000.0, 4)  # before draining/started
    mixed: dict[str | bytes, str | bytes] = {
        b"new": encode_report(WorkerLoad("new", running=1, heartbeat=99.0)).encode(),
        b"old": older,
    }
    assert [(load.worker, load.in_flight) for load in live_reports(mixed, now=100.0)] == [("new", 1), ("old", 1)]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b"42",
        b'{"running": "many"}',
        b'{"heartbeat": null}',
        b"\xff\xfe",
        b"",
        b"2 1 2 3",  # too few fields
        b"3 1 0 5 1000000 2 0 0",  # a format this reader does not know
        b"2 1 0 5 1000.5 2 0 0",  # not integers
        b"2 one 0 5 1000000 2 0 0",
    ],
)
def test_what_is_not_a_report_is_ignored_not_an_error(raw: bytes) -> None:
    assert decode_report("pod-1", raw) is None


def test_only_fresh_reports_count_sorted_by_worker() -> None:
    fresh_b = encode_report(WorkerLoad("b", running=1, heartbeat=100.0))
    fresh_a = encode_report(WorkerLoad("a", reserved=2, heartbeat=95.0))
    stale = encode_report(WorkerLoad("c", running=9, heartbeat=80.0))
    fields: dict[str | bytes, str | bytes] = {
        b"b": fresh_b.encode(),
        b"a": fresh_a.encode(),
        b"c": stale.encode(),
        b"d": b"garbage",
    }
    loads = live_reports(fields, now=100.0, ttl=15.0)
    assert [load.worker for load in loads] == ["a", "b"]
    assert sum(load.in_flight for load in loads) == 3
    flat = [item for pair in fields.items() for item in pair]  # as HGETALL returns it
    assert live_reports_of_reply(flat, now=100.0, ttl=15.0) == loads
    assert live_reports_of_reply([b"b", fresh_b.encode()], now=100.0, ttl=15.0) == (loads[1],)
    assert live_reports_of_reply([b"c", stale.encode()], now=100.0, ttl=15.0) == ()


def test_report_keys_carry_celerys_global_prefix() -> None:
    assert report_key("emails") == "workerpool:reports:emails"
    assert report_key("emails", "shop:") == "shop:workerpool:reports:emails"


def test_a_worker_writes_format_1_only_beside_workers_that_read_nothing_else() -> None:
    old = b'{"worker":"old","running":1,"heartbeat":100.0}'
    new_as_json = encode_report(WorkerLoad("peer", heartbeat=100.0), version=1).encode()
    new = encode_report(WorkerLoad("peer", heartbeat=100.0)).encode()
    assert format_to_write(None, "me", now=100.0, ttl=15.0) == 1  # not read yet: the safe choice
    assert format_to_write({b"old": old, b"me": new}, "me", now=100.0, ttl=15.0) == 1
    assert format_to_write({b"old": old}, "me", now=200.0, ttl=15.0) == 2  # that worker is gone
    assert format_to_write({b"peer": new_as_json, b"x": b"{junk"}, "me", now=100.0, ttl=15.0) == 2
    assert format_to_write({b"peer": new, b"me": old}, "me", now=100.0, ttl=15.0) == 2  # its own field
    assert decode_report("peer", new_as_json) == WorkerLoad("peer", heartbeat=100.0)
