"""``workerpool-operator local`` with beat and Flower: they run beside the workers, and a periodic task arrives on
schedule, and beat's forecast of it reaches the engine (real redis-server, real beat, worker and Flower processes
through the entrypoint)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import statistics
import urllib.request
from pathlib import Path

from tests.conftest import RedisServer
from tests.test_local import wait_for
from tests.test_worker_flower import free_port
from workerpool_operator.local.runtime import LocalRuntime, load_pool, plan_pool

POOL_YAML = """
apiVersion: workerpool.dev/v1alpha1
kind: WorkerPool
metadata: {{name: cron}}
spec:
  broker: {{url: "redis://redis:6379/0"}}
  app: tests.celery_apps.periodic:app
  template: {{image: "worker:test", terminationGracePeriodSeconds: 10}}
  queues:
    - {{name: periodic, pool: threads, concurrency: 2, minReplicas: 1, maxReplicas: 2}}
  scaling: {{pollIntervalSeconds: 0.5}}
  beat: {{maxIntervalSeconds: 1}}
  flower:
    auth:
      basicFrom: {{secretKeyRef: {{name: flower, key: users}}}}
    env: [{{name: FLOWER_PORT, value: "{port}"}}]
"""


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def test_local_runs_beat_and_flower_beside_the_workers(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "workerpool.yaml"
    path.write_text(POOL_YAML.format(port=port))
    pool = plan_pool(load_pool(path), redis_server.url)
    assert [c.name for c in pool.components] == ["beat", "flower"]
    assert "FLOWER_BASIC_AUTH" in pool.unset_env  # from a Secret: not set locally (Flower listens on loopback only)
    client = redis_server.client()
    runtime = LocalRuntime(pool, redis_server.url, title="test", live=False, out=io.StringIO())
    stop = asyncio.Event()
    async with runtime:
        loop = asyncio.create_task(runtime.run(stop))
        try:
            notes = list(runtime.dashboard.notes)
            await wait_for(lambda: client.llen("test:ticks") >= 5, within=60)
            assert await asyncio.to_thread(healthy, f"http://127.0.0.1:{port}/healthcheck")
            # beat's forecast reached the engine through the observer: it watches the periodic tasks' fires
            sources = {spike.source for spike in runtime.loop.states(pool.key)["periodic"].spikes}
            assert "tick" in sources, sources
        finally:
            stop.set()
            await loop
    processes = [c.process for c in runtime.components.running]
    assert processes and all(p.poll() is not None for p in processes), "beat and Flower stop with the run"
    ticks = sorted(json.loads(raw)["at"] for raw in client.lrange("test:ticks", 0, -1))
    assert len(ticks) >= 5, ticks
    assert 1.6 <= statistics.median(b - a for a, b in itertools.pairwise(ticks)) <= 2.4, ticks
    assert any(f"flower runs beside the workers at http://127.0.0.1:{port}/" in n for n in notes)
