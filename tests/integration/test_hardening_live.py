"""Hardening on the real services: poison and a frozen broker never stop a `widelog worker`.

Each test has its own topic, group and database (see `test_pipeline_live.Pipeline`); the worker
is a separate process, fed by a plain Kafka producer, and judged from outside: request ids in
the store, the dead letters, the group's committed offsets, its exit status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.contract.test_event_store import make_event
from tests.integration.test_pipeline_live import Pipeline
from tests.live import KAFKA

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.mongo, pytest.mark.timeout(300)]
PARTITIONS = 4


@pytest.fixture
async def kafka_pipeline(live_services, tmp_path) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(tmp_path, "kafka")
    yield pipeline
    await pipeline.aclose()


def lag(pipeline: Pipeline) -> int:
    """Messages in the topic that the worker's group has not committed."""
    topic = pipeline.env["WIDELOG_KAFKA_TOPIC"]
    probe = Consumer({"bootstrap.servers": KAFKA, "group.id": pipeline.env["WIDELOG_KAFKA_GROUP"]})
    try:
        committed = probe.committed(
            [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10
        )
        total = 0
        for tp in committed:
            _low, high = probe.get_watermark_offsets(tp, timeout=10)
            total += high - max(tp.offset, 0)
        return total
    finally:
        probe.close()


async def wait_for_no_lag(pipeline: Pipeline, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    remaining = await asyncio.to_thread(lag, pipeline)
    while remaining:
        assert time.monotonic() < deadline, f"lag still {remaining}"
        await asyncio.sleep(0.5)
        remaining = await asyncio.to_thread(lag, pipeline)


def produce(pipeline: Pipeline, payloads: list[tuple[str, bytes]]) -> None:
    """Round-robin over the partitions, so poison sits in one and the others go on."""
    producer = Producer({"bootstrap.servers": KAFKA, "acks": "all"})
    for i, (key, payload) in enumerate(payloads):
        producer.produce(
            pipeline.env["WIDELOG_KAFKA_TOPIC"], payload, key, partition=i % PARTITIONS
        )
    assert 0 == producer.flush(30)


def good(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}-{i}", msgspec.json.encode(make_event(request_id=f"{prefix}-{i}")))
        for i in range(count)
    ]


async def test_poison_that_decodes_or_nests_too_deep_never_stops_the_worker(kafka_pipeline):
    worker = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(0, "assigned partitions")
    end_of_time = make_event(
        request_id="end-of-time",
        timestamp="9999-12-31T23:59:59.999Z",
        http={"route": "/v1/chat", "status": 504},
        error={"code": "LLM_TIMEOUT", "message": "timed out"},
    )
    too_deep = b'{"event_id":"deep","request_id":"deep","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    before, after = good("before", 200), good("after", 200)
    poison = [("end-of-time", msgspec.json.encode(end_of_time)), ("deep", too_deep)]

    await asyncio.to_thread(produce, kafka_pipeline, before + poison + after)

    expected = {key for key, _ in before + after} | {"end-of-time"}
    await kafka_pipeline.wait_until_stored(expected)
    await wait_for_no_lag(kafka_pipeline)
    stored = await kafka_pipeline.stored_request_ids()
    assert 401 == sum(stored.values())
    [letter] = await kafka_pipeline.dead_letters()
    assert (too_deep, "not a JSON object nested at most 64 levels") == (
        letter["payload"],
        letter["error"],
    )
    assert worker.poll() is None, kafka_pipeline.worker_log(0)
    log = kafka_pipeline.worker_log(0)
    assert "skipped an event whose time is out of range" in log
    worker.send_signal(signal.SIGTERM)
    assert 0 == worker.wait(20), kafka_pipeline.worker_log(0)
    assert dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC) == (
        await kafka_pipeline.mongo.get_default_database()["events"].find_one(
            {"request_id": "end-of-time"}
        )
    )["timestamp"].replace(tzinfo=dt.UTC)
