"""The worker-report format shared by the worker entrypoint (writer) and the observer (reader)."""

from __future__ import annotations

import pytest

from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import decode_report, encode_report, live_reports, report_key


def test_a_report_round_trips_as_bytes_or_text() -> None:
    load = WorkerLoad("pod-1", running=2, reserved=3, done=40, heartbeat=1000.5, concurrency=4)
    assert decode_report("pod-1", encode_report(load)) == load
    assert decode_report("pod-1", encode_report(load).encode()) == load
    assert load.in_flight == 5


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b"42", b'{"running": "many"}', b'{"heartbeat": null}', b"\xff\xfe"]
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


def test_report_keys_carry_celerys_global_prefix() -> None:
    assert report_key("emails") == "workerpool:reports:emails"
    assert report_key("emails", "shop:") == "shop:workerpool:reports:emails"
