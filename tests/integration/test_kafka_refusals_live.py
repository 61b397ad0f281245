"""Records Kafka refuses for good are quarantined, and published once the topic is fixed.

Against the real broker: a topic whose `max.message.bytes` is smaller than some events, the spool
replayed by `widelog replay` in a separate process, and the topic read back by key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.cimpl import NewTopic

from tests.live import KAFKA, unique
from widelog.pipeline.spool import FileSpool

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.timeout(180)]
TOPIC_LIMIT = 4096
SET = AlterConfigOpType.SET


def create_topic(topic: str, max_message_bytes: int) -> None:
    admin = AdminClient({"bootstrap.servers": KAFKA})
    config = {"max.message.bytes": str(max_message_bytes)}
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, config=config)])
    futures[topic].result(30)


def raise_topic_limit(topic: str, max_message_bytes: int) -> None:
    admin = AdminClient({"bootstrap.servers": KAFKA})
    entry = ConfigEntry("max.message.bytes", str(max_message_bytes), incremental_operation=SET)
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def keys_in(topic: str, *, expected: int, timeout: float = 30.0) -> list[str]:
    """Every key in the topic, read from the start until `expected` came or `timeout` passed."""
    consumer = Consumer(
        {"bootstrap.servers": KAFKA, "group.id": unique("reader"), "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    keys: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(keys) < expected:
            for msg in consumer.consume(100, 0.5):
                error = msg.error()
                if error is None:
                    keys.append((msg.key() or b"").decode())
                elif error.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(error)
        time.sleep(1.0)  # anything beyond `expected` would show up now
        keys += [(m.key() or b"").decode() for m in consumer.consume(100, 1.0) if not m.error()]
    finally:
        consumer.close()
    return keys


def event(request_id: str, pad: str = "") -> bytes:
    return json.dumps({"event_id": request_id, "request_id": request_id, "pad": pad}).encode()


def replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "widelog", "replay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_events_too_large_for_the_topic_are_quarantined_then_delivered_after_the_fix(
    live_services, tmp_path: Path
) -> None:
    topic = unique("refusals")
    create_topic(topic, TOPIC_LIMIT)
    spool_dir = tmp_path / "spool"
    spool = FileSpool(spool_dir)
    small = [f"small-{i}" for i in range(1000)]
    big = [f"big-{i}" for i in range(5)]
    # Random hex does not compress: each big event stays over the topic's limit after lz4.
    for key in small[:500] + big[:3] + small[500:] + big[3:]:
        pad = os.urandom(6000).hex() if key.startswith("big") else ""
        spool.append(key, event(key, pad))
    spool.close()
    env = {
        **os.environ,
        "WIDELOG_TRANSPORT": "kafka",
        "WIDELOG_KAFKA_BOOTSTRAP": KAFKA,
        "WIDELOG_KAFKA_TOPIC": topic,
        "WIDELOG_SPOOL_DIR": str(spool_dir),
    }

    first = replay(env)
    assert 0 == first.returncode, first.stderr
    assert f"replayed {len(small)} events" in first.stderr
    assert "refused 5 events" in first.stderr
    assert "MSG_SIZE_TOO_LARGE" in first.stderr
    assert sorted(small) == sorted(keys_in(topic, expected=len(small)))
    assert [] == FileSpool(spool_dir, fsync="never").segments()  # the segment is complete
    rejected = FileSpool(spool_dir, fsync="never").rejected()
    assert 1 == len(rejected)
    assert len(big) == len(rejected[0].read_bytes().splitlines())

    again = replay(env)  # a plain replay leaves them alone
    assert "replayed 0 events" in again.stderr
    assert rejected == FileSpool(spool_dir, fsync="never").rejected()

    raise_topic_limit(topic, 1024 * 1024)
    fixed = replay(env, "--rejected")
    assert 0 == fixed.returncode, fixed.stderr
    assert f"replayed {len(big)} rejected events" in fixed.stderr
    assert sorted(small + big) == sorted(keys_in(topic, expected=len(small) + len(big)))
    assert [] == FileSpool(spool_dir, fsync="never").rejected()
