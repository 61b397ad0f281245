"""A producer ended by a fatal error is replaced, and the spool is replayed through the new one.

librdkafka's `rd_kafka_test_fatal_error` is not exposed by confluent-kafka (the Python `Producer`
has no handle to call it with), and a real fatal error needs a broker that breaks the idempotent
producer's sequence. So the fatal error comes through the producer's own error callback, with a
real producer on the real broker; everything after it (spooling, replacement, replay) is real.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from tests.integration.test_kafka_refusals_live import create_topic, keys_in
from tests.live import KAFKA, unique
from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.kafka import KafkaEventPublisher
from widelog.pipeline.replayer import SpoolReplayer
from widelog.pipeline.spool import FileSpool

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.timeout(120)]


def fatal() -> KafkaError:
    return KafkaError(KafkaError._FATAL, "test: idempotent producer sequence gap", fatal=True)


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def test_a_fatal_error_spools_replaces_the_producer_and_replay_goes_through_it(
    live_services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("fatal")
    create_topic(topic, 1024 * 1024)
    fallback = SpoolFallback(FileSpool(tmp_path / "spool"))
    publisher = KafkaEventPublisher(
        bootstrap=KAFKA, topic=topic, fallback=fallback, recreate_backoff_s=0.2
    )
    replayer = SpoolReplayer(fallback.spool, publisher, timeout=20)
    try:
        publisher.publish("before", b'{"n": 0}')
        assert 0 == await publisher.flush(10)
        old = publisher._producer
        publisher._on_error(fatal())  # as librdkafka's error callback would
        assert publisher.broker_down
        for i in range(10):
            publisher.publish(f"during-{i}", b'{"n": 1}')
        assert 10 == fallback.spooled
        wait_for(lambda: publisher.recreated == 1)
        assert publisher._producer is not old
        assert publisher.broker_down  # until a replay gets through the new producer
        assert 10 == await replayer.replay_once()
        assert not publisher.broker_down
        publisher.publish("after", b'{"n": 2}')
        assert 0 == await publisher.flush(10)
        expected = ["before", *(f"during-{i}" for i in range(10)), "after"]
        assert sorted(expected) == sorted(keys_in(topic, expected=len(expected)))
        assert "replacing the producer in 0.2s" in caplog.text
        assert "Kafka producer replaced after a fatal error (1 so far)" in caplog.text
    finally:
        await publisher.close()
        fallback.spool.close()


async def test_fatal_errors_in_a_row_back_off_and_a_replay_resets_the_backoff(
    live_services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("fatal")
    create_topic(topic, 1024 * 1024)
    fallback = SpoolFallback(FileSpool(tmp_path / "spool"))
    publisher = KafkaEventPublisher(
        bootstrap=KAFKA, topic=topic, fallback=fallback, recreate_backoff_s=0.3
    )
    replayer = SpoolReplayer(fallback.spool, publisher, timeout=20)
    try:
        started = time.monotonic()
        publisher._on_error(fatal())
        publisher._on_error(fatal())  # the same producer's second report: one replacement
        wait_for(lambda: publisher.recreated == 1)
        publisher._on_error(fatal())  # the new producer fails too: twice the wait
        wait_for(lambda: publisher.recreated == 2)
        assert time.monotonic() - started >= 0.3 + 0.6
        publisher.publish("spooled", b"{}")
        assert 1 == await replayer.replay_once()  # through the third producer: backoff reset
        publisher._on_error(fatal())
        wait_for(lambda: publisher.recreated == 3)
        delays = [
            r.getMessage().split(" in ")[1].split(":")[0]
            for r in caplog.records
            if "replacing the producer" in r.getMessage()
        ]
        assert ["0.3s", "0.6s", "0.3s"] == delays
    finally:
        await publisher.close()
        fallback.spool.close()
