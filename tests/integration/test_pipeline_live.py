"""Conservation under faults, on the real services: every finalized event is stored exactly once.

The API runs in-process (its publisher, spool and replayer are the real ones); workers run as
separate `widelog worker` processes so they can be SIGKILLed. Each test has its own topic, stream,
consumer group and database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.live import KAFKA, service_down, services, unique
from tests.pipelines import api, send, send_for
from widelog.stats import percentile

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.mongo, pytest.mark.timeout(300)]


async def test_ten_thousand_requests_are_stored_exactly_once(kafka_pipeline):
    kafka_pipeline.start_worker()
    async with api(kafka_pipeline) as (client, container):
        sent, latencies = await send(client, "bulk", 10_000, concurrency=32)
        assert 10_000 == container.pipeline.logging.stats.published
    await kafka_pipeline.wait_until_stored(sent, timeout=120)
    assert 10_000 == sum((await kafka_pipeline.stored_request_ids()).values())
    print(f"10k: p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms")


def leader_epochs(topic: str, partitions: int = 4) -> dict[int, int]:
    """Per partition, the leader epoch stamped on its last record (by the broker that led it)."""
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": unique("epochs")})
    try:
        epochs = {}
        for partition in range(partitions):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            consumer.assign([TopicPartition(topic, partition, high - 1)])
            message = consumer.poll(10)
            assert message is not None
            assert message.error() is None
            epoch = message.leader_epoch()
            assert epoch is not None
            epochs[partition] = epoch
        return epochs
    finally:
        consumer.close()


def restart_kafka() -> None:
    services("stop", "kafka")
    services("start", "kafka")


@pytest.mark.faults
async def test_kafka_restarted_under_traffic_with_a_new_leader_epoch_stores_each_once(
    kafka_pipeline,
):
    worker = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(0, "assigned partitions")
    topic = kafka_pipeline.env["WIDELOG_KAFKA_TOPIC"]
    async with api(kafka_pipeline) as (client, container):
        before, _ = await send(client, "before", 200)  # 50 a partition: each has a last record
        await kafka_pipeline.wait_until_stored(before)
        epochs_before = await asyncio.to_thread(leader_epochs, topic)
        restart = asyncio.create_task(asyncio.to_thread(restart_kafka))
        during: set[str] = set()
        latencies: list[float] = []
        while not restart.done():
            sent, took = await send_for(client, f"during-{len(during)}", 2, concurrency=4)
            during |= sent
            latencies += took
        await restart
        after, _ = await send(client, "after", 200)
        await kafka_pipeline.wait_until_stored(before | during | after, timeout=120)
        assert container.pipeline.fallback is not None
        assert not container.pipeline.fallback.spool.has_pending()
        spooled = container.pipeline.fallback.spooled
    epochs_after = await asyncio.to_thread(leader_epochs, topic)
    stored = await kafka_pipeline.stored_request_ids()
    assert len(before | during | after) == sum(stored.values())
    assert worker.poll() is None, kafka_pipeline.worker_log(0)
    print(
        f"kafka restarted: {sum(stored.values())} stored of {len(before | during | after)},"
        f" {len(during)} requests meanwhile (p50 {percentile(latencies, 50):.2f}"
        f" ms, p99 {percentile(latencies, 99):.2f} ms), {spooled} spooled,"
        f" leader epochs {epochs_before} -> {epochs_after}"
    )
    assert spooled > 0
    assert all(epochs_after[p] > epochs_before[p] for p in epochs_before)


@pytest.mark.faults
async def test_store_down_during_traffic_the_worker_waits_and_then_stores_everything(
    kafka_pipeline,
):
    kafka_pipeline.start_worker()
    # A worker does not start against a store that is down (exit 3): let it start first.
    await kafka_pipeline.wait_for_log(0, "worker consuming")
    async with api(kafka_pipeline) as (client, _):
        before, _ = await send(client, "before", 200)
        with service_down("ferretdb"):
            during, latencies = await send(client, "during", 300)
            await asyncio.sleep(3)  # the worker retries and keeps its offsets uncommitted
        await kafka_pipeline.wait_until_stored(before | during)
        after, _ = await send(client, "after", 50)  # live again
        await kafka_pipeline.wait_until_stored(before | during | after)
    assert "write_batch failed" in kafka_pipeline.worker_log(0)
    assert percentile(latencies, 99) < 250  # the API never waits on the store


@pytest.mark.faults
async def test_a_store_outage_longer_than_max_poll_interval_causes_no_rebalance(kafka_pipeline):
    kafka_pipeline.env["WIDELOG_KAFKA_MAX_POLL_INTERVAL_MS"] = "7000"
    kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(0, "assigned partitions")
    async with api(kafka_pipeline) as (client, _):
        with service_down("ferretdb"):
            during, _ = await send(client, "during", 200)
            await asyncio.sleep(12)  # well past max.poll.interval.ms, with partitions paused
        await kafka_pipeline.wait_until_stored(during)
    log = kafka_pipeline.worker_log(0)
    assert "write_batch failed (attempt 4)" in log  # it was paused, not just retrying
    assert "revoked partitions" not in log
    assert "lost partitions" not in log
    assert 1 == log.count("assigned partitions")


@pytest.mark.faults
async def test_a_worker_killed_mid_batch_then_restarted_loses_and_duplicates_nothing(
    kafka_pipeline,
):
    async with api(kafka_pipeline) as (client, _):
        sent, _ = await send(client, "kill", 3000)  # a backlog the worker is busy draining
        worker = kafka_pipeline.start_worker()
        while sum((await kafka_pipeline.stored_request_ids()).values()) == 0:
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert len(await kafka_pipeline.stored_request_ids()) < 3000, "killed too late"
        kafka_pipeline.start_worker()
        await kafka_pipeline.wait_until_stored(sent)


@pytest.mark.faults
async def test_two_workers_share_the_topic_and_one_takes_over_when_the_other_dies(
    kafka_pipeline,
):
    first, second = kafka_pipeline.start_worker(), kafka_pipeline.start_worker()
    async with api(kafka_pipeline) as (client, _):
        await kafka_pipeline.wait_for_log(0, "assigned partitions")
        await kafka_pipeline.wait_for_log(1, "assigned partitions")
        early, _ = await send(client, "early", 1000)
        await kafka_pipeline.wait_until_stored(early)
        first.send_signal(signal.SIGKILL)
        late, _ = await send(client, "late", 1000)
        await kafka_pipeline.wait_until_stored(early | late, timeout=90)
    assert second.poll() is None


async def test_sigterm_finishes_the_batch_commits_and_exits(kafka_pipeline):
    worker = kafka_pipeline.start_worker()
    async with api(kafka_pipeline) as (client, _):
        sent, _ = await send(client, "term", 500)
        await kafka_pipeline.wait_until_stored(sent)
    worker.send_signal(signal.SIGTERM)
    assert 0 == worker.wait(20), kafka_pipeline.worker_log(0)
    restarted = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_for_log(1, "assigned partitions")
    await asyncio.sleep(3)  # it reads whatever was not committed: nothing
    restarted.send_signal(signal.SIGTERM)
    assert 0 == restarted.wait(20), kafka_pipeline.worker_log(1)
    log = kafka_pipeline.worker_log(1)
    assert "duplicates=0" in log, log
    assert "stored=0" in log, log


async def test_a_garbage_message_is_dead_lettered_and_the_events_behind_it_stored(
    kafka_pipeline,
):
    topic = kafka_pipeline.env["WIDELOG_KAFKA_TOPIC"]
    kafka_pipeline.start_worker()
    async with api(kafka_pipeline) as (client, _):
        before, _ = await send(client, "before", 20)
        producer = Producer({"bootstrap.servers": KAFKA})
        producer.produce(topic, b"\x00 not an event", b"garbage", partition=0)
        assert 0 == producer.flush(10)
        after, _ = await send(client, "after", 20)
        await kafka_pipeline.wait_until_stored(before | after)
    [letter] = await kafka_pipeline.dead_letters()
    assert b"\x00 not an event" == letter["payload"]
    assert letter["source"].startswith(f"kafka@{topic}/0@")
    assert "not a JSON object" in letter["error"]


@pytest.mark.redis
@pytest.mark.faults
async def test_redis_streams_a_killed_workers_pending_entries_are_claimed_by_another(
    redis_pipeline,
):
    first = redis_pipeline.start_worker()
    async with api(redis_pipeline) as (client, _):
        sent, _ = await send(client, "redis", 2000)
        while sum((await redis_pipeline.stored_request_ids()).values()) == 0:
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        redis_pipeline.start_worker()
        await redis_pipeline.wait_until_stored(sent)


@pytest.mark.redis
@pytest.mark.faults
async def test_redis_down_during_traffic_spools_and_replays(redis_pipeline):
    redis_pipeline.start_worker()
    async with api(redis_pipeline) as (client, container):
        before, _ = await send(client, "before", 200)
        # The test Redis has no persistence: what is in the stream when it stops is gone.
        await redis_pipeline.wait_until_stored(before)
        with service_down("redis"):
            during, _ = await send(client, "during", 200)
            await asyncio.sleep(2)
        after, _ = await send(client, "after", 200)
        await redis_pipeline.wait_until_stored(before | during | after)
        assert container.pipeline.fallback is not None
        assert container.pipeline.fallback.spooled > 0


async def test_the_replay_command_publishes_the_spool_and_the_worker_stores_it(kafka_pipeline):
    import msgspec

    from tests.contract.test_event_store import make_event
    from widelog.pipeline.spool import FileSpool

    spool = FileSpool(kafka_pipeline.env["WIDELOG_SPOOL_DIR"])
    events = [make_event(request_id=f"spooled-{i}") for i in range(50)]
    for event in events:
        spool.append(event["request_id"], msgspec.json.encode(event))
    spool.close()
    result = subprocess.run(
        [sys.executable, "-m", "widelog", "replay"],
        env={**os.environ, **kafka_pipeline.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert "replayed 50 events" in result.stderr
    assert not FileSpool(kafka_pipeline.env["WIDELOG_SPOOL_DIR"]).has_pending()
    kafka_pipeline.start_worker()
    await kafka_pipeline.wait_until_stored({e["request_id"] for e in events})
