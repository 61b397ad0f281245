"""Contract for a transport: an `EventPublisher` and the `EventSource` that reads what it sent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from widelog.pipeline.memory import (
    InProcessEventPublisher,
    InProcessEventSource,
    InProcessQueue,
)
from widelog.pipeline.ports import EventPublisher, EventSource, Message, PublishError


async def poll_all(source: EventSource, count: int, *, timeout: float = 10.0) -> list[bytes]:
    payloads: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(payloads) < count and time.monotonic() < deadline:
        messages = await source.poll(count - len(payloads), 0.2)
        payloads += [m.payload for m in messages]
        await source.commit(messages)
    return payloads


class TransportContract:
    @pytest.fixture
    def transport(self) -> Iterator[tuple[EventPublisher, EventSource]]:
        raise NotImplementedError

    async def test_every_published_event_is_received_once(self, transport):
        publisher, source = transport
        sent = [f'{{"event_id": "e{i}"}}'.encode() for i in range(300)]
        for i, payload in enumerate(sent):
            publisher.publish(f"req-{i}", payload)
        await publisher.flush(10)
        assert sorted(sent) == sorted(await poll_all(source, len(sent)))

    async def test_events_with_the_same_key_keep_their_order(self, transport):
        publisher, source = transport
        sent = [f'{{"event_id": "e{i}"}}'.encode() for i in range(50)]
        for payload in sent:
            publisher.publish("one-request", payload)
        await publisher.flush(10)
        assert sent == await poll_all(source, len(sent))

    async def test_the_backlog_counts_what_is_not_committed_yet(self, transport):
        publisher, source = transport
        for i in range(20):
            publisher.publish(f"req-{i}", f'{{"event_id": "e{i}"}}'.encode())
        await publisher.flush(10)
        polled: list[Message] = []
        deadline = time.monotonic() + 10
        while len(polled) < 20 and time.monotonic() < deadline:
            polled += await source.poll(20 - len(polled), 0.2)
        assert 20 == sum((await source.backlog()).values())
        await source.commit(polled)
        deadline = time.monotonic() + 10  # Kafka: the commit is confirmed asynchronously
        while sum((await source.backlog()).values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert 0 == sum((await source.backlog()).values())

    async def test_poll_on_an_empty_source_returns_nothing_within_its_timeout(self, transport):
        _, source = transport
        started = time.monotonic()
        assert [] == await source.poll(10, 0.2)
        assert time.monotonic() - started < 5


class TestInProcessTransport(TransportContract):
    @pytest.fixture
    def transport(self):
        queue = InProcessQueue()
        return InProcessEventPublisher(queue), InProcessEventSource(queue)


def test_a_full_in_process_queue_refuses_instead_of_blocking():
    publisher = InProcessEventPublisher(InProcessQueue(max_events=1))
    publisher.publish("k", b"{}")
    with pytest.raises(PublishError):
        publisher.publish("k", b"{}")


@pytest.fixture
def spool_fallback(tmp_path):
    from widelog.pipeline.fallback import SpoolFallback
    from widelog.pipeline.spool import FileSpool

    spool = FileSpool(tmp_path / "spool")
    yield SpoolFallback(spool)
    spool.close()


@pytest.mark.kafka
class TestKafkaTransport(TransportContract):
    @pytest.fixture
    async def transport(self, live_services, spool_fallback):
        from tests.live import KAFKA, unique
        from widelog.pipeline.kafka import (
            KafkaEventPublisher,
            KafkaEventSource,
            ensure_topic,
        )

        topic = unique("contract")
        ensure_topic(KAFKA, topic, partitions=3)
        publisher = KafkaEventPublisher(bootstrap=KAFKA, topic=topic, fallback=spool_fallback)
        source = KafkaEventSource(bootstrap=KAFKA, topic=topic, group=unique("group"))
        yield publisher, source
        await publisher.close()
        await source.close()
        assert 0 == spool_fallback.spooled


@pytest.mark.kafka
async def test_kafka_delivery_is_logged_at_debug_with_topic_and_request_id(
    live_services, spool_fallback, caplog
):
    from tests.live import KAFKA, unique
    from widelog.pipeline.kafka import KafkaEventPublisher, ensure_topic

    topic = unique("log-events")
    ensure_topic(KAFKA, topic, partitions=1)
    publisher = KafkaEventPublisher(bootstrap=KAFKA, topic=topic, fallback=spool_fallback)
    with caplog.at_level(logging.DEBUG, logger="widelog.kafka"):
        publisher.publish("req-42", b'{"event_id": "e"}')
        assert 0 == await publisher.flush(10)
        await publisher.close()
    expected = f"Published log event to Kafka topic: {topic}, requestId: req-42"
    assert expected in caplog.messages


@pytest.mark.kafka
async def test_kafka_unreachable_events_go_to_the_spool_after_the_message_timeout(
    spool_fallback,
):
    from widelog.pipeline.kafka import KafkaEventPublisher

    publisher = KafkaEventPublisher(
        bootstrap="127.0.0.1:1",  # nothing listens there
        topic="log-events",
        fallback=spool_fallback,
        message_timeout_ms=1000,
    )
    started = time.monotonic()
    for i in range(10):
        publisher.publish(f"req-{i}", b"{}")
    assert time.monotonic() - started < 0.5  # the request path never waited
    deadline = time.monotonic() + 10
    while spool_fallback.spooled < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await publisher.close(timeout=1)
    assert 10 == spool_fallback.spooled


@pytest.mark.redis
class TestRedisStreamsTransport(TransportContract):
    @pytest.fixture
    async def transport(self, live_services, spool_fallback):
        from redis.asyncio import Redis

        from tests.live import REDIS_URL, unique
        from widelog.pipeline.redis_streams import (
            RedisStreamsEventPublisher,
            RedisStreamsEventSource,
        )

        stream = unique("contract")
        publisher = RedisStreamsEventPublisher(
            Redis.from_url(REDIS_URL), stream=stream, fallback=spool_fallback
        )
        source = RedisStreamsEventSource(
            Redis.from_url(REDIS_URL), stream=stream, group="g", consumer="c1"
        )
        yield publisher, source
        await publisher.close()
        cleanup = Redis.from_url(REDIS_URL)
        await cleanup.delete(stream)
        await cleanup.aclose()
        await source.close()
        assert 0 == spool_fallback.spooled
