"""A bad network between the app/worker and each real service, through Toxiproxy, under traffic.

Every test puts one proxy in front of one service (Kafka, Redis or FerretDB), points the API and
the `widelog worker` at it, and sends traffic while four toxics come and go in turn: latency,
a bandwidth limit, connection resets and a black hole (`timeout` with 0: data is dropped and the
connection held until the toxic is removed). Every request must be answered 200 and every one of
them stored exactly once; what each fault cost is printed and its trace (a counter or a log
line) asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka.admin import AdminClient

from tests.live import KAFKA_PROXIED_PORT, KAFKA_PROXY_PORT, MONGO_PORT, REDIS_PORT
from tests.pipelines import Pipeline, api, send, send_for
from tests.toxiproxy import Proxy, Toxiproxy
from widelog.chat.bootstrap import ChatContainer
from widelog.stats import percentile

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.mongo, pytest.mark.timeout(240)]

PHASE_S = 2.0  # traffic per toxic


@dataclass(frozen=True)
class Toxic:
    kind: str
    stream: str
    attributes: dict[str, int] = field(default_factory=dict)


# One phase per fault; both directions where the harm depends on which way the bytes go.
PHASES: dict[str, list[Toxic]] = {
    "latency": [Toxic("latency", "downstream", {"latency": 300, "jitter": 100})],
    "bandwidth": [
        Toxic("bandwidth", "upstream", {"rate": 8}),  # KB/s
        Toxic("bandwidth", "downstream", {"rate": 8}),
    ],
    "reset_peer": [Toxic("reset_peer", "downstream", {"timeout": 500})],
    "timeout": [Toxic("timeout", "upstream", {"timeout": 0})],  # a black hole until removed
}


@contextlib.contextmanager
def poisoned(proxy: Proxy, toxics: list[Toxic]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for toxic in toxics:
            stack.enter_context(proxy.toxic(toxic.kind, stream=toxic.stream, **toxic.attributes))
        yield


def spooled(container: ChatContainer) -> int:
    fallback = container.pipeline.fallback
    return fallback.spooled if fallback is not None else 0


async def run_phases(
    pipeline: Pipeline, proxy: Proxy, service: str, *, ready: str
) -> dict[str, dict[str, int]]:
    """Traffic through every toxic in turn; all of it stored once. Returns what each phase cost."""
    worker = pipeline.start_worker()
    await pipeline.wait_for_log(0, ready)
    costs: dict[str, dict[str, int]] = {}
    async with api(pipeline) as (client, container):
        expected, _ = await send(client, "before", 50)
        for phase, toxics in PHASES.items():
            spooled_before = spooled(container)
            cache_errors_before = cache_errors(container)
            with poisoned(proxy, toxics):
                during, latencies = await send_for(client, phase, PHASE_S)
            expected |= during
            costs[phase] = {
                "requests": len(during),
                "p99_ms": round(percentile(latencies, 99)),
                "max_ms": round(max(latencies)),
                "spooled": spooled(container) - spooled_before,
                "cache_errors": cache_errors(container) - cache_errors_before,
            }
        after, _ = await send(client, "after", 50)
        expected |= after
        await pipeline.wait_until_stored(expected, timeout=120)
        fallback = container.pipeline.fallback
        assert fallback is not None
        assert not fallback.spool.has_pending()
    stored = await pipeline.stored_request_ids()
    assert len(expected) == sum(stored.values())
    assert worker.poll() is None, pipeline.worker_log(0)
    print(f"{service} behind toxics: {sum(stored.values())} stored of {len(expected)} requests")
    for phase, cost in costs.items():
        print(f"{service} {phase}: {cost}")
    return costs


def cache_errors(container: ChatContainer) -> int:
    caches = container.caches
    return sum(
        caches.sessions.counters.lookups[o] + caches.answers.counters.lookups[o]
        for o in ("error", "degraded")
    )


def advertised(port: int) -> set[str]:
    """The broker addresses a client bootstrapped on `port` is told to connect to."""
    metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
    return {f"{broker.host}:{broker.port}" for broker in metadata.brokers.values()}


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return 0 == sock.connect_ex(("127.0.0.1", port))


@pytest.mark.kafka
async def test_kafka_behind_a_bad_network_answers_every_request_and_stores_each_once(
    kafka_pipeline, toxiproxy: Toxiproxy
):
    if not KAFKA_PROXIED_PORT or not KAFKA_PROXY_PORT or not listening(int(KAFKA_PROXIED_PORT)):
        pytest.skip("the broker has no PROXIED listener (scripts/services.sh stop/start kafka)")
    # Its own listener advertises the proxy's port, so every connection after the bootstrap
    # (to the partition leader, the group coordinator) crosses the proxy too.
    proxy = toxiproxy.proxy(int(KAFKA_PROXIED_PORT), listen=int(KAFKA_PROXY_PORT))
    kafka_pipeline.env["WIDELOG_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{proxy.listen}"
    assert {f"127.0.0.1:{proxy.listen}"} == await asyncio.to_thread(advertised, proxy.listen)
    costs = await run_phases(kafka_pipeline, proxy, "kafka", ready="assigned partitions")
    assert costs["timeout"]["spooled"] > 0  # message.timeout.ms bounds the wait, then the spool


@pytest.mark.redis
async def test_redis_behind_a_bad_network_fails_the_caches_open_and_stores_each_once(
    redis_pipeline, toxiproxy: Toxiproxy
):
    proxy = toxiproxy.proxy(REDIS_PORT)
    redis_pipeline.env["WIDELOG_REDIS_URL"] = f"redis://127.0.0.1:{proxy.listen}/0"
    redis_pipeline.env["WIDELOG_CACHE"] = "redis"
    costs = await run_phases(redis_pipeline, proxy, "redis", ready="worker consuming")
    assert costs["latency"]["cache_errors"] > 0  # WIDELOG_CACHE_TIMEOUT_MS bounds each lookup
    assert costs["timeout"]["cache_errors"] > 0


@pytest.mark.kafka
async def test_the_store_behind_a_bad_network_delays_storage_only(
    kafka_pipeline, toxiproxy: Toxiproxy
):
    proxy = toxiproxy.proxy(MONGO_PORT)
    database = kafka_pipeline.database
    kafka_pipeline.env["WIDELOG_MONGO_URL"] = f"mongodb://127.0.0.1:{proxy.listen}/{database}"
    costs = await run_phases(kafka_pipeline, proxy, "ferretdb", ready="assigned partitions")
    assert all(0 == cost["spooled"] for cost in costs.values())
    assert "write_batch failed" in kafka_pipeline.worker_log(0)
