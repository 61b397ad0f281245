"""The Kafka consumer's watchdog: which quiet members it replaces, and after how many checks."""

from collections.abc import AsyncIterator, Collection

import pytest
from confluent_kafka import TopicPartition

from widelog.pipeline.kafka import KafkaEventSource


class FakeGroupBacklog:
    """The group's committed and high offsets as the broker would report them, unchanging."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.asked: list[Collection[int] | None] = []

    def offsets(self, partitions: Collection[int] | None = None) -> dict[str, tuple[int, int]]:
        self.asked.append(partitions)
        return {"0": (100, 100 + self.lag)}

    async def close(self) -> None:
        return None


@pytest.fixture
async def source() -> AsyncIterator[KafkaEventSource]:
    # Nothing listens on port 1: librdkafka only tries to connect in its own threads.
    source = KafkaEventSource(bootstrap="127.0.0.1:1", topic="t", group="g", close_timeout_s=2)
    source._lag = FakeGroupBacklog(lag=50)  # type: ignore[assignment]
    yield source
    await source.close()


async def test_a_member_without_partitions_is_replaced_only_when_no_offset_moved(source):
    first = source._consumer
    await source._check_progress()  # an idle spare member looks the same at first
    assert (0, first) == (source.stalls, source._consumer)
    await source._check_progress()
    assert 1 == source.stalls
    assert first is not source._consumer


async def test_a_member_that_lost_its_partitions_is_replaced_at_the_first_quiet_check(source):
    first = source._consumer
    source._on_assign(first, [TopicPartition("t", 0)])
    source._on_lost(first, [TopicPartition("t", 0)])  # its session expired: a frozen broker
    await source._check_progress()
    assert 1 == source.stalls
    assert first is not source._consumer
