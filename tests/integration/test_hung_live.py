"""Hung services (SIGSTOPped, not stopped: connections stay open and nothing answers) under traffic.

The API runs in-process (`api()`), the worker as a `widelog worker` process; each test has its own
topic, stream, group and database (see `test_pipeline_live.Pipeline`). Judged by request ids in
the store, the group's lag and the worker's exit status.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.test_hardening_live import frozen, wait_for_no_lag
from tests.integration.test_pipeline_live import Pipeline, api, send
from tests.live import unique
from widelog.stats import percentile

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.mongo]


@pytest.fixture
async def kafka_pipeline(live_services, tmp_path) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(tmp_path, "kafka")
    yield pipeline
    await pipeline.aclose()


@pytest.fixture
async def redis_pipeline(live_services, tmp_path) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(tmp_path, "redis")
    yield pipeline
    await pipeline.aclose()


async def send_for(
    client: httpx.AsyncClient, prefix: str, seconds: float, *, concurrency: int = 8
) -> tuple[set[str], list[float]]:
    """Chats with caller-chosen request ids for `seconds`, paced; every one must succeed."""
    deadline = time.monotonic() + seconds
    sent: set[str] = set()
    latencies: list[float] = []

    async def loop(lane: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            request_id = f"{prefix}-{lane}-{i}"
            i += 1
            started = time.perf_counter()
            response = await client.post(
                "/v1/chat",
                json={"session_id": "s", "message": f"hello {request_id}"},
                headers={"x-request-id": request_id},
            )
            latencies.append((time.perf_counter() - started) * 1000)
            assert 200 == response.status_code, response.text
            sent.add(request_id)
            await asyncio.sleep(0.02)

    await asyncio.gather(*(loop(lane) for lane in range(concurrency)))
    return sent, latencies


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_hung_store_delays_storage_only_and_the_worker_resumes(kafka_pipeline):
    worker = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(0, "assigned partitions")
    async with api(kafka_pipeline) as (client, _):
        before, _ = await send(client, "before", 200)
        await kafka_pipeline.wait_until_stored(before)
        with frozen("ferretdb"):
            during, latencies = await send_for(client, "during", 10)
        after, _ = await send(client, "after", 200)
        await kafka_pipeline.wait_until_stored(before | during | after, timeout=60)
    await wait_for_no_lag(kafka_pipeline)
    stored = await kafka_pipeline.stored_request_ids()
    assert len(before | during | after) == sum(stored.values())
    assert worker.poll() is None, kafka_pipeline.worker_log(0)
    p99 = percentile(latencies, 99)
    print(f"hung store: {len(during)} requests, p99 {p99:.2f} ms, max {max(latencies):.2f} ms")
    assert p99 < 250, p99  # the API never waits on the store
    worker.send_signal(signal.SIGTERM)
    assert 0 == worker.wait(30), kafka_pipeline.worker_log(0)


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_a_hung_redis_fails_the_caches_open_and_every_event_is_stored_once(redis_pipeline):
    redis_pipeline.env["WIDELOG_CACHE"] = "redis"
    redis_pipeline.env["WIDELOG_CACHE_NAMESPACE"] = unique("hung")
    worker = redis_pipeline.start_worker()
    await redis_pipeline.wait_for_log(0, "worker consuming")
    async with api(redis_pipeline) as (client, container):
        before, _ = await send(client, "before", 200)
        await redis_pipeline.wait_until_stored(before)
        with frozen("redis"):
            during, latencies = await send_for(client, "during", 8)
        after, _ = await send(client, "after", 200)
        await redis_pipeline.wait_until_stored(before | during | after, timeout=60)
        fallback = container.pipeline.fallback
        assert fallback is not None
        assert not fallback.spool.has_pending()
    stored = await redis_pipeline.stored_request_ids()
    assert len(before | during | after) == sum(stored.values())
    assert worker.poll() is None, redis_pipeline.worker_log(0)
    p99 = percentile(latencies, 99)
    print(
        f"hung redis: {len(during)} requests, p99 {p99:.2f} ms, max {max(latencies):.2f} ms,"
        f" spooled {fallback.spooled}"
    )
    assert p99 < 1000, p99
    worker.send_signal(signal.SIGTERM)
    assert 0 == worker.wait(30), redis_pipeline.worker_log(0)
