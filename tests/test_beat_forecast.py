"""The beat forecast: its format and reader (pure), and the fire times beat computes from Celery's own schedules."""

from __future__ import annotations

import datetime
import itertools
import warnings

import pytest
from celery import Celery
from celery.schedules import crontab, schedule
from hypothesis import given
from hypothesis import strategies as st

from workerpool_operator.beat_forecast import (
    BeatForecast,
    ForecastEntry,
    decode_forecast,
    encode_forecast,
    entry_forecast,
    forecast_key,
    lock_key,
)
from workerpool_operator.worker.beat import entry_queue, fire_times

UTC = datetime.UTC


def test_keys_are_the_apps_under_the_key_prefix() -> None:
    assert forecast_key("shop.celery:app") == "workerpool:beat:forecast:shop.celery:app"
    assert forecast_key("shop.celery:app", "shop:") == "shop:workerpool:beat:forecast:shop.celery:app"
    assert lock_key("shop", "p:") == "p:workerpool:beat:lock:shop"


FORECAST = BeatForecast(
    beat="shop-celery-beat-7c9f-x2",
    published=1000.0,
    horizon=3600.0,
    entries=(
        ForecastEntry("hourly", "shop.report", "reports", (3600.0, 7200.0), 4600.0),
        ForecastEntry("often", "shop.ping", "default", (1010.0, 1020.0, 1030.0), 1030.0),
        ForecastEntry("late", "shop.late", "reports", (1500.0,), 4600.0),
    ),
)


def test_encode_and_decode_round_trip() -> None:
    assert decode_forecast(encode_forecast(FORECAST)) == FORECAST
    assert decode_forecast(encode_forecast(FORECAST).encode()) == FORECAST


def test_fires_by_queue_merges_entries_within_the_window() -> None:
    assert FORECAST.fires_by_queue(now=1010.0, within=600) == {
        "reports": ((1500.0, "late"),),
        "default": ((1020.0, "often"), (1030.0, "often")),
    }
    assert FORECAST.fires_by_queue(now=1000.0, within=3000) == {
        "reports": ((1500.0, "late"), (3600.0, "hourly")),
        "default": ((1010.0, "often"), (1020.0, "often"), (1030.0, "often")),
    }
    assert FORECAST.fires_by_queue(now=5000.0, within=600) == {}, "a queue with no fire ahead is not listed"


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "not json",
        "[]",
        '{"version": 2, "beat": "b", "published": 1, "horizon": 1, "entries": []}',
        '{"version": 1, "beat": "b", "published": "soon", "horizon": 1, "entries": []}',
        '{"version": 1, "beat": "b", "published": 1, "horizon": 1, "entries": [{"name": "x"}]}',
        '{"version": 1, "beat": "b", "published": 1e999, "horizon": 1, "entries": []}',
    ],
)
def test_what_is_not_a_forecast_reads_as_none(raw: str | None) -> None:
    assert decode_forecast(raw) is None


def test_an_entry_keeps_what_fits_and_says_how_far_it_is_complete() -> None:
    every_10 = (100.0 + 10 * i for i in range(10**9))  # lazy and endless, as a schedule is
    cut = entry_forecast("e", "t", "q", every_10, now=100.0, horizon=3600, limit=5)
    assert cut.fires == (100.0, 110.0, 120.0, 130.0, 140.0) and cut.until == 140.0
    hourly = entry_forecast("e", "t", "q", iter([1800.0, 5400.0]), now=100.0, horizon=3600, limit=5)
    assert hourly.fires == (1800.0,) and hourly.until == 3700.0
    ended = entry_forecast("e", "t", "q", iter([200.0]), now=100.0, horizon=3600, limit=5)
    assert ended.fires == (200.0,) and ended.until == 3700.0


@given(
    fires=st.lists(st.floats(0, 10_000, allow_nan=False), max_size=40, unique=True).map(sorted),
    now=st.floats(0, 5_000),
    horizon=st.floats(1, 5_000),
    limit=st.integers(1, 30),
)
def test_an_entry_is_complete_up_to_until(fires: list[float], now: float, horizon: float, limit: int) -> None:
    """Every fire time up to ``until`` is listed; nothing past the horizon or the limit is."""
    entry = entry_forecast("e", "t", "q", iter(fires), now=now, horizon=horizon, limit=limit)
    assert len(entry.fires) <= limit and all(t <= now + horizon for t in entry.fires)
    assert entry.until <= now + horizon
    assert [t for t in fires if t <= entry.until] == list(entry.fires)


# --- fire times from Celery's schedules -------------------------------------------------------------------------

APP = Celery("forecast", set_as_current=False)
APP.conf.task_routes = {"shop.routed": {"queue": "routed"}}


with warnings.catch_warnings():  # Celery 5.7 deprecates the task attribute, but still routes by it
    warnings.simplefilter("ignore")

    @APP.task(name="shop.own_queue", queue="own")
    def own_queue() -> None:
        pass


def test_fire_times_of_an_interval_from_its_last_run() -> None:
    every = schedule(datetime.timedelta(seconds=30), app=APP)
    now = APP.now()
    fires = fire_times(every, now - datetime.timedelta(seconds=10), now)
    first, second, third = next(fires), next(fires), next(fires)
    assert (first - now).total_seconds() == pytest.approx(20, abs=0.05)
    assert (second - first).total_seconds() == pytest.approx(30, abs=0.05)
    assert (third - second).total_seconds() == pytest.approx(30, abs=0.05)


def test_an_overdue_run_fires_now() -> None:
    every = schedule(datetime.timedelta(seconds=30), app=APP)
    now = APP.now()
    fires = fire_times(every, now - datetime.timedelta(minutes=5), now)
    assert next(fires) == now
    assert (next(fires) - now).total_seconds() == pytest.approx(30, abs=0.05)


def test_fire_times_of_a_crontab_are_its_own() -> None:
    quarter_hours = crontab(minute="*/15", app=APP)
    now = APP.now()
    times = list(itertools.islice(fire_times(quarter_hours, now, now), 6))
    assert all(t.minute % 15 == 0 and t.second == 0 for t in times)
    assert all((b - a) == datetime.timedelta(minutes=15) for a, b in itertools.pairwise(times))
    assert now < times[0] <= now + datetime.timedelta(minutes=15)


@pytest.mark.parametrize(
    ("task", "options", "queue"),
    [
        ("shop.anything", {"queue": "reports"}, "reports"),  # the entry's own option
        ("shop.routed", {}, "routed"),  # task_routes
        ("shop.own_queue", {}, "own"),  # the task's queue attribute
        ("shop.own_queue", {"queue": "entry"}, "entry"),  # the entry wins over the task
        ("shop.anything", {}, "celery"),  # the default queue
    ],
)
def test_entry_queue_routes_as_apply_async_would(task: str, options: dict[str, str], queue: str) -> None:
    assert entry_queue(APP, task, options) == queue
