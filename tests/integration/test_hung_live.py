"""Hung services (SIGSTOPped, not stopped: connections stay open and nothing answers) under traffic.

The API runs in-process (`api()`), the worker as a `widelog worker` process; each test has its own
topic, stream, group and database (see `test_pipeline_live.Pipeline`). Judged by request ids in
the store, the group's lag and the worker's exit status.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.test_hardening_live import wait_for_no_lag
from tests.live import frozen, unique
from tests.pipelines import ApiProcess, Pipeline, api, send, send_for
from widelog.stats import percentile

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.mongo]


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


# --- the API process stopped under load ---------------------------------------------------------


class Load:
    """Chats over real HTTP with caller-chosen request ids until the server goes away."""

    def __init__(self, client: httpx.AsyncClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self.attempted: set[str] = set()
        self.answered: dict[str, int] = {}  # request id → status
        self.failed: dict[str, str] = {}  # request id → the transport error

    async def run(self, *, lanes: int = 16) -> None:
        await asyncio.gather(*(self._lane(lane) for lane in range(lanes)))

    async def _lane(self, lane: int) -> None:
        for i in itertools.count():
            request_id = f"{self._prefix}-{lane}-{i}"
            self.attempted.add(request_id)
            try:
                response = await self._client.post(
                    "/v1/chat",
                    json={"session_id": f"s{lane}", "message": f"hello {request_id}"},
                    headers={"x-request-id": request_id},
                )
            except httpx.TransportError as exc:
                self.failed[request_id] = repr(exc)
                if isinstance(exc, httpx.ConnectError):
                    return  # the server is gone
                continue
            self.answered[request_id] = response.status_code


async def stop_api_under_load(
    pipeline: Pipeline, sig: signal.Signals
) -> tuple[Load, collections.Counter[str]]:
    """Load the API, send it `sig` mid-traffic, replay its spool, wait for the worker to drain."""
    pipeline.env["WIDELOG_SAMPLING_BASELINE_RATE"] = "1"  # every event kept, so all can be counted
    pipeline.start_worker()
    await pipeline.wait_for_log(0, "assigned partitions")
    server = ApiProcess(pipeline)
    limits = httpx.Limits(max_connections=16)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=30
        ) as client:
            await server.ready(client)
            load = Load(client, sig.name.lower())
            traffic = asyncio.create_task(load.run())
            await asyncio.sleep(3)
            server.process.send_signal(sig)
            await asyncio.wait_for(traffic, 60)
        returncode = await asyncio.to_thread(server.process.wait, 30)
    finally:
        server.kill()
    print(f"{sig.name}: api exit {returncode}")
    assert -sig == returncode or (sig == signal.SIGTERM and 0 == returncode), server.log.read_text()
    # What the API spooled (undelivered at exit, or a dead process's segment) and, SIGKILLed,
    # what its in-flight journal still held go out now.
    replay = subprocess.run(
        [sys.executable, "-m", "widelog", "replay"],
        env={**os.environ, **pipeline.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == replay.returncode, replay.stderr
    print(f"{sig.name}: {replay.stderr.strip().splitlines()[-1:]}")
    await wait_for_no_lag(pipeline)
    await asyncio.sleep(2)  # the last batch
    prefix = f"{sig.name.lower()}-"  # not the readiness probes' events
    everything = await pipeline.stored_request_ids()
    stored = collections.Counter({r: n for r, n in everything.items() if r.startswith(prefix)})
    statuses = collections.Counter(load.answered.values())
    print(
        f"{sig.name}: {len(load.attempted)} sent, {len(load.answered)} answered {dict(statuses)},"
        f" {len(load.failed)} transport errors"
        f" {dict(collections.Counter(e.split('(')[0] for e in load.failed.values()))},"
        f" of which {len(set(load.failed) & set(stored))} stored; {sum(stored.values())} stored"
        f" ({len(set(stored))} request ids)"
    )
    return load, stored


@pytest.mark.kafka
@pytest.mark.timeout(150)
async def test_sigterm_under_load_stores_every_answered_request_exactly_once(kafka_pipeline):
    load, stored = await stop_api_under_load(kafka_pipeline, signal.SIGTERM)
    assert len(load.answered) > 200
    assert set(stored) <= load.attempted
    assert {} == {rid: n for rid, n in stored.items() if n > 1}
    assert set() == set(load.answered) - set(stored)


@pytest.mark.kafka
@pytest.mark.timeout(150)
async def test_sigkill_under_load_stores_every_answered_request_exactly_once(kafka_pipeline):
    """What librdkafka held at the kill comes back from the API's journal (`widelog replay`)."""
    load, stored = await stop_api_under_load(kafka_pipeline, signal.SIGKILL)
    assert len(load.answered) > 200
    assert set(stored) <= load.attempted
    assert {} == {rid: n for rid, n in stored.items() if n > 1}
    assert set() == set(load.answered) - set(stored)


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_store_hung_longer_than_max_poll_interval_causes_no_rebalance(kafka_pipeline):
    kafka_pipeline.env["WIDELOG_KAFKA_MAX_POLL_INTERVAL_MS"] = "7000"
    worker = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(0, "assigned partitions")
    async with api(kafka_pipeline) as (client, _):
        before, _ = await send(client, "before", 100)
        await kafka_pipeline.wait_until_stored(before)
        with frozen("ferretdb"):
            during, _ = await send_for(client, "during", 20)
        await kafka_pipeline.wait_until_stored(before | during, timeout=60)
    await wait_for_no_lag(kafka_pipeline)
    assert worker.poll() is None, kafka_pipeline.worker_log(0)
    log = kafka_pipeline.worker_log(0)
    assert "write_batch failed" in log
    assert "revoked partitions" not in log, log
    assert "lost partitions" not in log, log
    assert 1 == log.count("assigned partitions"), log


# --- longer freezes ---------------------------------------------------------------------------


async def first_time(condition: Callable[[], bool], *, every: float = 0.2) -> float:
    """Seconds until `condition()` holds (polled; cancel the task to give up)."""
    started = time.monotonic()
    while not condition():
        await asyncio.sleep(every)
    return time.monotonic() - started


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_redis_frozen_for_25_s_is_given_up_on_spooled_and_replayed_once(redis_pipeline):
    redis_pipeline.env["WIDELOG_CACHE"] = "redis"
    redis_pipeline.env["WIDELOG_CACHE_NAMESPACE"] = unique("frozen")
    worker = redis_pipeline.start_worker()
    await redis_pipeline.wait_for_log(0, "worker consuming")
    async with api(redis_pipeline) as (client, container):
        fallback = container.pipeline.fallback
        assert fallback is not None
        before, _ = await send(client, "before", 100)
        await redis_pipeline.wait_until_stored(before)
        with frozen("redis"):
            spooling = asyncio.create_task(first_time(lambda: fallback.spooled > 0))
            during, latencies = await send_for(client, "during", 25)
            spooled_in_freeze = fallback.spooled
            gave_up_after = round(spooling.result(), 1) if spooling.done() else spooling.cancel()
        after, _ = await send(client, "after", 100)
        await redis_pipeline.wait_until_stored(before | during | after, timeout=90)
        assert not fallback.spool.has_pending()
        caches = container.caches.report()
    stored = await redis_pipeline.stored_request_ids()
    assert len(before | during | after) == sum(stored.values())
    assert worker.poll() is None, redis_pipeline.worker_log(0)
    p99 = percentile(latencies, 99)
    print(
        f"redis frozen 25 s: {sum(stored.values())} stored of {len(before | during | after)},"
        f" {len(during)} requests while frozen, p99 {p99:.2f} ms, max {max(latencies):.2f}"
        f" ms, {spooled_in_freeze} spooled while frozen (first after {gave_up_after} s),"
        f" caches {caches}"
    )
    # The publisher gave up on Redis after one socket timeout (5 s), not four (21 s measured).
    assert gave_up_after is not None
    assert gave_up_after < 12
    assert spooled_in_freeze > len(during) / 2
    assert p99 < 1000, p99
    assert caches["circuit_opened"] >= 1


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_kafka_and_the_store_frozen_together_the_worker_recovers_by_itself(kafka_pipeline):
    worker = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(0, "assigned partitions")
    async with api(kafka_pipeline) as (client, container):
        fallback = container.pipeline.fallback
        assert fallback is not None
        before, _ = await send(client, "before", 100)
        await kafka_pipeline.wait_until_stored(before)
        with frozen("kafka"), frozen("ferretdb"):
            during, latencies = await send_for(client, "during", 10)
        resumed = time.monotonic()
        after, _ = await send(client, "after", 200)
        await kafka_pipeline.wait_until_stored(before | during | after, timeout=120)
        recovered_s = time.monotonic() - resumed
        assert not fallback.spool.has_pending()
    await wait_for_no_lag(kafka_pipeline)
    stored = await kafka_pipeline.stored_request_ids()
    assert len(before | during | after) == sum(stored.values())
    assert worker.poll() is None, kafka_pipeline.worker_log(0)
    log = kafka_pipeline.worker_log(0)
    p99 = percentile(latencies, 99)
    print(
        f"kafka+store frozen 10 s: {sum(stored.values())} stored of {len(before | during | after)},"
        f" {len(during)} requests while frozen, p99 {p99:.2f} ms, spooled"
        f" {fallback.spooled}, all stored {recovered_s:.1f} s after resuming;"
        f" worker: {log.count('write_batch failed')} failed writes,"
        f" {log.count('made no progress')} consumers replaced,"
        f" {log.count('assigned partitions')} assignments"
    )
    assert p99 < 1000, p99
    worker.send_signal(signal.SIGTERM)
    assert 0 == worker.wait(30), kafka_pipeline.worker_log(0)
