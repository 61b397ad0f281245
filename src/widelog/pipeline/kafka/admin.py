"""The topic, and the consumer group's lag as read from outside the group."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from widelog.pipeline.kafka._calls import _bounded
from widelog.pipeline.kafka._logs import librdkafka_log

if TYPE_CHECKING:
    from collections.abc import Collection


log = logging.getLogger("widelog.kafka")


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int,
    replication: int = -1,
    timeout: float = 30.0,
    config: dict[str, Any] | None = None,
) -> None:
    """Create the topic if it does not exist (several partitions: several consumers can share).

    `replication=-1` takes the broker's `default.replication.factor`: with one replica, acks=all
    means one broker's page cache, so production clusters want 3 and `min.insync.replicas=2`.
    """
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": librdkafka_log,
        **(config or {}),
    }
    admin = AdminClient(settings)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication)],
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


class KafkaGroupBacklog:
    """The consumer group's lag per partition, read from outside the group (the API's view).

    A consumer with the group's id that never subscribes does not join the group: it only asks
    the group coordinator for the committed offsets, and the leaders for the high watermarks.
    """

    def __init__(self, *, bootstrap: str, topic: str, group: str, timeout: float = 5.0) -> None:
        self._topic = topic
        self._timeout = timeout
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "logger": librdkafka_log}
        )

    def read(self, partitions: Collection[int] | None = None) -> dict[str, int]:
        """Lag per partition (all of the topic's unless `partitions`); blocks: call off the loop."""
        return {
            p: max(high - committed, 0) for p, (committed, high) in self.offsets(partitions).items()
        }

    def offsets(self, partitions: Collection[int] | None = None) -> dict[str, tuple[int, int]]:
        """(committed, high watermark) per partition; blocks: call off the loop."""
        if partitions is None:
            metadata = self._consumer.list_topics(self._topic, timeout=self._timeout)
            topic = metadata.topics.get(self._topic)
            partitions = topic.partitions if topic is not None else ()
        wanted = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        offsets = {}
        for tp in self._consumer.committed(wanted, timeout=self._timeout):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout)
            committed = tp.offset if tp.offset >= 0 else low  # nothing committed: from the start
            offsets[str(tp.partition)] = (committed, high)
        return offsets

    async def backlog(self) -> dict[str, int]:
        return await _bounded(self.read, self._timeout * 2)

    async def close(self) -> None:
        await _bounded(self._consumer.close, self._timeout)
