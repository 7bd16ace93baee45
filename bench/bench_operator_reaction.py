"""Reaction time: from a burst of tasks landing in Redis to the Deployment's replicas changing, over bursts that
land at uniformly random phases of the operator's poll; and what the operator costs at rest, in the same table.

Why the phase is drawn against the poll: the operator reads a queue once per ``pollIntervalSeconds``, so a
burst waits for the next poll, anywhere from 0 to one interval; only the time after that read (the observation,
the decision, the PATCH) is the operator's own work. A bench whose bursts keep a fixed relation to the poll
measures its luck (an earlier version fixed one seed, whose sleeps put the bursts early in the poll: p50 0.75 s
where the expectation at a 2 s poll is about 1 s). Here the bench watches the operator's reads of the queue in
Redis' MONITOR feed (its LLEN of the queue's key: the poll's read), draws a phase uniformly in [0, interval)
after the last read it saw, and lands the burst then: staged beforehand, the burst moves into the queue in one
MULTI/EXEC. The expected reaction is therefore half an interval plus the overhead from the poll's read to the
PATCH, and the table states both. The seed is fresh on each run and printed (``--seed`` draws the same phases
and bursts again; the poll's own timing is the operator's).

With wake-ups (``WORKERPOOL_OPERATOR_WAKEUPS``, on by default) the broker names the queue a burst changed and the
operator reads it at once, so the phase matters only for a burst landing within a quarter interval of the last
poll (the least gap after a poll, ``scaling_loop.WAKE_MIN_GAP``); the rows with wake-ups off are the polling-only
baseline, measured by the same script in the same run.

The pool runs at the defaults: no ``scaleUp`` or stabilisation setting, only ``maxReplicas`` raised (the bursts
accumulate: no worker runs them) and, in the second row, ``pollIntervalSeconds: 1``. Each burst lands at
least one ``scaleUp.periodSeconds`` after the previous scale-up, so the default step limit (4 pods or 100 % per
period) never holds a burst of 1 to 4 tasks back: the figure is the reaction, not the rate limit.

The cost at rest is what a faster reaction must not raise: Redis commands per second (``INFO commandstats``
deltas over a quiet window, the bench's own INFO left out) and the operator's CPU seconds per minute, with the
pool created and idle, and once with no pool at all; ``--idle-pools N`` adds N idle pools of one queue on the
same broker, for that cost at scale (issue 26 compares it at 1,000). The rest window starts once every pool is
Ready and the operator has stopped writing. The operator runs in its own process on the bench's API emulator
(bench/operator_harness.py); the emulator notes when each replica write is stored.

    .venv/bin/python -m bench.bench_operator_reaction [--trials 50] [--intervals 2,1] [--rest-seconds 60]
        [--seed N] [--idle-pools 0] [--realistic] [--wakeups on,off]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from tests.conftest import RedisServer
from tests.kube import KubeCluster

from bench.operator_harness import (
    RestCost,
    TimedApiServer,
    cluster_and_redis,
    create_pool,
    create_secret,
    measure_rest,
    operator_process,
    pool_body,
    wait_settled,
    wait_watching,
)
from bench.report import markdown_table, record
from workerpool_operator.sim.keda_model import KedaSettings
from workerpool_operator.spec import DEFAULT_POLL_INTERVAL, WorkerPool

NS = "bench"
POOL = "shop"
QUEUE = "default"
DEPLOYMENT = f"{POOL}-{QUEUE}"
STAGING = f"{QUEUE}.staging"
LARGEST_BURST = 4  # the default step limit adds at least 4 pods per period: a burst never waits for it
ABOVE = 5  # a percentile is shown when at least this many trials lie above it


class QueueReads(threading.Thread):
    """Redis' MONITOR feed, reduced to what the bench needs: when the operator read the queue (LLEN of its key,
    the poll's read) and when a burst landed in it (the LMOVEs from the staging list). Times are Redis' own
    stamps, wall-clock seconds like ``time.time()`` on this machine."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(name="monitor", daemon=True)
        self._server = server
        self.polls: list[float] = []
        self.landings: list[float] = []
        self._seen = threading.Condition()
        self._ready = threading.Event()
        self._stopping = False

    def run(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self._server.port, decode_responses=True, socket_timeout=None)
        try:
            with client.monitor() as feed:
                self._ready.set()
                while not self._stopping:
                    entry = feed.next_command()
                    self._note(float(entry["time"]), str(entry["command"]))
        except (redis.ConnectionError, OSError):
            if not self._stopping:
                raise
        finally:
            client.close()

    def _note(self, at: float, command: str) -> None:
        if command == f"LLEN {QUEUE}":
            target = self.polls
        elif command.startswith(f"LMOVE {STAGING} {QUEUE} "):
            target = self.landings
        else:
            return
        with self._seen:
            target.append(at)
            self._seen.notify_all()

    def start_reading(self) -> QueueReads:
        self.start()
        if not self._ready.wait(10):
            raise RuntimeError("MONITOR did not start")
        return self

    def stop(self) -> None:
        self._stopping = True
        client = self._server.client()
        try:
            for entry in client.client_list():
                if "O" in entry["flags"]:  # a client in MONITOR mode: ours
                    client.client_kill_filter(_id=entry["id"])
        finally:
            client.close()
        self.join(5)

    def first_after(self, times: list[float], after: float, timeout: float) -> float | None:
        if not self.is_alive():
            raise RuntimeError("Redis' MONITOR feed stopped (see its traceback above)")
        with self._seen:
            self._seen.wait_for(lambda: bool(times) and times[-1] > after, timeout)
            return next((t for t in times if t > after), None)

    def polls_between(self, start: float, end: float) -> list[float]:
        with self._seen:
            return [t for t in self.polls if start < t <= end]


class Bursts:
    """Real Celery messages, staged in a side list beforehand, then moved into the queue in one transaction: the
    burst lands within a millisecond of the moment the bench chose."""

    def __init__(self, server: RedisServer) -> None:
        self._app = Celery("producer", broker=server.url)
        self._client = server.client()

    def stage(self, count: int) -> None:
        with self._app.producer_or_acquire() as producer:
            for i in range(count):
                self._app.send_task("shop.tasks.work", args=(i,), queue=STAGING, producer=producer)

    def land(self, count: int) -> None:
        with self._client.pipeline(transaction=True) as moves:
            for _ in range(count):
                moves.lmove(STAGING, QUEUE, "RIGHT", "LEFT")
            moves.execute()

    def close(self) -> None:
        self._app.close()
        self._client.close()


@dataclass(frozen=True, slots=True)
class Trial:
    burst: int
    replicas_before: int
    replicas_after: int
    landed: float  # wall-clock seconds
    phase: float  # seconds from the last poll before the landing to the landing (nan: no poll seen)
    poll: float | None  # the first poll of the queue after the landing
    changed: float  # when the emulator stored the new replicas
    polls: int  # polls of the queue between the landing and the change

    @property
    def reaction(self) -> float:
        return self.changed - self.landed

    @property
    def wait(self) -> float | None:
        """From the landing to the poll that could see it."""
        return None if self.poll is None else self.poll - self.landed

    @property
    def overhead(self) -> float | None:
        """From the poll's read to the replicas stored: the operator's own work (observe, decide, PATCH)."""
        return None if self.poll is None else self.changed - self.poll


@dataclass(frozen=True, slots=True)
class Configuration:
    label: str
    scaling: dict[str, Any]
    wakeups: bool = True  # WORKERPOOL_OPERATOR_WAKEUPS: off, the operator learns of a burst at its next poll only

    @property
    def pool(self) -> WorkerPool:
        return WorkerPool.from_object(pool_body(NS, POOL, [QUEUE], self.scaling))

    @property
    def interval(self) -> float:
        return self.pool.spec.poll_interval_for(QUEUE)

    @property
    def scale_up_period(self) -> float:
        return self.pool.spec.policy_for(QUEUE).scale_up_period


@dataclass(frozen=True, slots=True)
class Outcome:
    configuration: Configuration
    trials: list[Trial]
    rest: RestCost
    bare: RestCost | None  # the operator with no pool at all
    load: tuple[float, float]  # 1-minute load average at the start and the end


def run(configuration: Configuration, args: argparse.Namespace, rng: random.Random, bare: bool) -> Outcome:
    load_start = os.getloadavg()[0]
    with (
        cluster_and_redis(realistic=args.realistic, emulator=TimedApiServer) as (kube, server, api),
        operator_process(kube, WORKERPOOL_OPERATOR_WAKEUPS=str(configuration.wakeups).lower()) as process,
    ):
        wait_watching(kube)
        client = server.client()
        create_secret(api, NS, server.url)
        alone = measure_rest(process.pid, client, kube, args.rest_seconds) if bare else None
        for i in range(args.idle_pools):
            create_pool(api, NS, f"idle{i}", [f"idle{i}"], configuration.scaling)
        create_pool(api, NS, POOL, [QUEUE], configuration.scaling)
        quiet = max(10.0, 5 * configuration.interval)  # the first polls and status writes, then nothing
        settled = wait_settled(kube, args.idle_pools + 1, quiet, timeout=600 + args.idle_pools)
        print(
            f"{configuration.label}: every pool Ready and no API write for {quiet:g} s after {settled:.0f} s",
            flush=True,
        )
        rest = measure_rest(process.pid, client, kube, args.rest_seconds)

        def alive() -> str:
            code = process.poll()
            return "the operator runs" if code is None else f"the operator exited with {code}"

        reads = QueueReads(server).start_reading()
        bursts = Bursts(server)
        try:
            trials = trial_series(kube, reads, bursts, configuration, args.trials, rng, alive)
        finally:
            bursts.close()
            reads.stop()
            client.close()
    return Outcome(configuration, trials, rest, alone, (load_start, os.getloadavg()[0]))


def trial_series(
    kube: KubeCluster,
    reads: QueueReads,
    bursts: Bursts,
    configuration: Configuration,
    count: int,
    rng: random.Random,
    alive: Callable[[], str],
) -> list[Trial]:
    emulator = kube.emulator
    assert isinstance(emulator, TimedApiServer)
    interval, period = configuration.interval, configuration.scale_up_period
    trials: list[Trial] = []
    last_change = 0.0
    replicas = _replicas(kube)
    for number in range(count):
        size, phase = rng.randint(1, LARGEST_BURST), rng.uniform(0.0, interval)
        bursts.stage(size)
        time.sleep(max(0.0, last_change + period - time.time()))  # out of the step limit's period
        seen = reads.first_after(reads.polls, time.time(), 3 * interval)
        at = (seen if seen is not None else time.time()) + phase  # no poll seen: a phase from now
        while at < time.time() + 0.001:  # the poll was seen too late for this phase: the same phase, a poll later
            at += interval
        time.sleep(at - time.time())
        bursts.land(size)
        landed = reads.first_after(reads.landings, at - 0.5, 10)
        if landed is None:
            raise RuntimeError(f"trial {number}: the burst's LMOVE never showed in MONITOR")
        write = emulator.wait_for_write(DEPLOYMENT, landed, 30)
        if write is None:
            raise RuntimeError(f"trial {number}: the replicas did not move within 30 s of the burst ({alive()})")
        before = reads.polls_between(landed - interval * 2, landed)
        trials.append(
            Trial(
                burst=size,
                replicas_before=replicas,
                replicas_after=write.replicas,
                landed=landed,
                phase=landed - before[-1] if before else math.nan,
                poll=reads.first_after(reads.polls, landed, 0),
                changed=write.at,
                polls=len(reads.polls_between(landed, write.at)),
            )
        )
        replicas, last_change = write.replicas, write.at
        done = trials[-1]
        overhead = math.nan if done.overhead is None else 1000 * done.overhead
        print(
            f"{configuration.label} #{number + 1}: burst {size}, phase {done.phase:.3f} s, reaction "
            f"{done.reaction:.3f} s, overhead {overhead:.1f} ms, polls {done.polls}, "
            f"replicas {done.replicas_before} -> {done.replicas_after}",
            flush=True,
        )
    return trials


def _replicas(kube: KubeCluster) -> int:
    return int(kube.objects("apps/v1/deployments", NS)[DEPLOYMENT]["spec"].get("replicas", 1))


# --- figures (pure) -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def supported(count: int, q: float) -> bool:
    """Whether ``count`` trials support the ``q`` percentile: at least ABOVE of them lie above it (with fewer,
    the "p99" of 30 trials is their maximum)."""
    return count * (100 - q) >= ABOVE * 100


def distribution(values: Sequence[float], unit: float = 1.0, digits: int = 2) -> str:
    """``p50 x / p90 y / max z`` with the percentiles the count supports."""
    parts = [f"p{q:g} {percentile(values, q) / unit:.{digits}f}" for q in (50, 90, 99) if supported(len(values), q)]
    return " / ".join([*parts, f"max {max(values) / unit:.{digits}f}"])


def row(outcome: Outcome) -> list[str]:
    trials = outcome.trials
    reactions = [t.reaction for t in trials]
    overheads = [o for t in trials if (o := t.overhead) is not None]
    interval = outcome.configuration.interval
    expected = interval / 2 + statistics.mean(overheads) if overheads else math.nan
    shown = f"{expected:.2f}" if not outcome.configuration.wakeups else "woken"
    return [
        outcome.configuration.label,
        str(len(trials)),
        distribution(reactions),
        f"{statistics.mean(reactions):.2f} ({shown})",
        distribution(overheads, unit=0.001, digits=0) if overheads else "-",
        f"{outcome.rest.commands_per_second:.2f}",
        f"{outcome.rest.cpu_seconds_per_minute:.2f}",
        str(outcome.rest.api_writes),
    ]


HEADER = [
    "run",
    "trials",
    "reaction, burst in Redis -> replicas stored (s)",
    "mean (expected without wake-ups: ½ poll + mean overhead) (s)",
    "overhead, the first read after the landing -> replicas stored (ms)",
    "Redis commands/s at rest",
    "operator CPU s/min at rest",
    "API writes at rest",
]


def notes(outcome: Outcome) -> str:
    trials = outcome.trials
    interval = outcome.configuration.interval
    waits = [w for t in trials if (w := t.wait) is not None]
    phases = [t.phase for t in trials if not math.isnan(t.phase)]
    exact = sum(1 for t in trials if t.replicas_after == t.replicas_before + t.burst)
    late = sum(1 for t in trials if t.polls != 1)
    return (
        f"- {outcome.configuration.label}: bursts landed at phases with mean {statistics.mean(phases):.2f} s "
        f"(uniform over the {interval:g} s poll: {interval / 2:g} s), and waited {statistics.mean(waits):.2f} s on "
        f"average for the next poll; {exact} of {len(trials)} raised the replicas by exactly the burst; "
        f"{late} needed more than one poll. At rest: {outcome.rest.by_command()}. Load average (1 min) "
        f"{outcome.load[0]:.2f} at the start, {outcome.load[1]:.2f} at the end."
    )


def report(outcomes: list[Outcome], args: argparse.Namespace, seed: int) -> str:
    rows = [row(outcome) for outcome in outcomes]
    bare = next((o.bare for o in outcomes if o.bare is not None), None)
    if bare is not None:
        rest = [f"{bare.commands_per_second:.2f}", f"{bare.cpu_seconds_per_minute:.2f}", str(bare.api_writes)]
        rows.append(["no pool (the operator alone)", "-", "-", "-", "-", *rest])
    keda = KedaSettings()
    pools = f"one pool{f' and {args.idle_pools} idle pools' if args.idle_pools else ''}"
    unsupported = ", ".join(f"p{q:g}" for q in (90, 99) if not supported(args.trials, q))
    more = f" ({unsupported} would need more trials)" if unsupported else ""
    return (
        f"{args.trials} bursts of 1 to {LARGEST_BURST} real Celery messages per row, each landing at a phase drawn "
        "uniformly over the poll interval after the operator's last read of the queue (seen in Redis' MONITOR); "
        f"seed {seed} (`--seed {seed}` draws the same phases and bursts). {pools.capitalize()} of one queue at the "
        "defaults (no `scaleUp` or stabilisation setting; `maxReplicas` 1000, since the bursts accumulate), each "
        "burst at least one `scaleUp.periodSeconds` after the previous scale-up; the operator in its own process "
        f"on the API emulator{' (realistic objects)' if args.realistic else ''}. Rest: {args.rest_seconds:g} s "
        "with the pool created and its queue empty, before the bursts.\n\n"
        + markdown_table(HEADER, rows)
        + "\n\n"
        + "\n".join(notes(outcome) for outcome in outcomes)
        + f"\n\nA percentile is shown when at least {ABOVE} trials lie above it{more}. "
        "For comparison, the project's KEDA model (sim/keda_model.py, KEDA's and the HPA's defaults) reacts within "
        f"0 to {keda.hpa_sync_period:g} s at one replica or more (the HPA syncs every {keda.hpa_sync_period:g} s) "
        f"and 0 to {keda.polling_interval:g} s from zero (KEDA's `pollingInterval`), before any pod starts."
    )


def configuration(interval: float, wakeups: bool) -> Configuration:
    """The pool at the defaults but ``interval``, the operator with wake-ups or without."""
    off = "" if wakeups else ", wake-ups off"
    if interval == DEFAULT_POLL_INTERVAL:
        return Configuration(f"defaults (poll {DEFAULT_POLL_INTERVAL:g} s{off})", {}, wakeups)
    return Configuration(f"pollIntervalSeconds: {interval:g}{off}", {"pollIntervalSeconds": interval}, wakeups)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--intervals", default=f"{DEFAULT_POLL_INTERVAL:g},1", help="a row per poll interval")
    parser.add_argument("--rest-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--idle-pools", type=int, default=0, help="idle pools of one queue beside the bench's")
    parser.add_argument("--realistic", action="store_true", help="objects as a real API server returns them")
    parser.add_argument("--wakeups", default="on,off", help="a row per setting of WORKERPOOL_OPERATOR_WAKEUPS")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed}", flush=True)
    rng = random.Random(seed)
    configurations = [
        configuration(float(value), wakeups == "on")
        for value in args.intervals.split(",")
        for wakeups in args.wakeups.split(",")
    ]
    outcomes = [run(configuration, args, rng, bare=i == 0) for i, configuration in enumerate(configurations)]
    record("Operator reaction time", report(outcomes, args, seed))


if __name__ == "__main__":
    main()
