"""The consumer stores every event once, commits only what is stored, and drains on stop."""

import asyncio
import logging

import msgspec
import pytest

from tests.contract.test_event_store import make_event
from tests.fakes import FlakyStore
from widelog.pipeline.consumer import BatchConsumer
from widelog.pipeline.memory import (
    InProcessEventPublisher,
    InProcessEventSource,
    InProcessQueue,
)
from widelog.pipeline.ports import Message


class RecordingSource:
    """An `EventSource` over a fixed list that records what was committed."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.pending = [Message(p, position=i) for i, p in enumerate(payloads)]
        self.committed: list[int] = []
        self.polls: list[int] = []
        self.keepalives = 0

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        batch, self.pending = self.pending[:max_messages], self.pending[max_messages:]
        self.polls.append(len(batch))
        if not batch:
            await asyncio.sleep(min(timeout, 0.01))
        return batch

    async def commit(self, messages):
        self.committed += [m.position for m in messages]

    async def keepalive(self) -> None:
        self.keepalives += 1

    async def backlog(self) -> dict[str, int]:
        return {"fixed": len(self.pending)}

    async def close(self) -> None:
        return None


def payloads(count: int) -> list[bytes]:
    return [msgspec.json.encode(make_event()) for _ in range(count)]


async def no_sleep(_: float) -> None:
    return None


async def run_until_drained(consumer: BatchConsumer) -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(consumer.run(stop), timeout=10)


async def test_batches_are_cut_at_batch_size(sqlite_store):
    source = RecordingSource(payloads(250))
    consumer = BatchConsumer(source, sqlite_store, source_name="t", batch_size=100)
    await run_until_drained(consumer)
    assert 3 == consumer.stats.batches
    assert 250 == await sqlite_store.count_events()
    assert list(range(250)) == source.committed


async def test_a_partial_batch_is_flushed_after_the_flush_interval(sqlite_store):
    queue = InProcessQueue()
    publisher = InProcessEventPublisher(queue)
    consumer = BatchConsumer(
        InProcessEventSource(queue), sqlite_store, source_name="t", flush_interval=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for payload in payloads(5):
        publisher.publish("k", payload)
    await asyncio.wait_for(queue.drained(), timeout=3)
    assert 5 == await sqlite_store.count_events()
    assert not task.done()  # flushed by time, not because the consumer stopped
    stop.set()
    await task


async def test_nothing_is_committed_until_the_store_recovers(sqlite_store, caplog):
    store = FlakyStore(sqlite_store, failures=5)
    source = RecordingSource(payloads(10))
    consumer = BatchConsumer(source, store, source_name="t", sleep=no_sleep)
    commits_during_outage = []

    original_write = store.write_batch

    async def observe_then_write(events):
        commits_during_outage.append(len(source.committed))
        return await original_write(events)

    store.write_batch = observe_then_write  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="widelog.consumer"):
        await run_until_drained(consumer)
    assert [0] * 6 == commits_during_outage
    assert list(range(10)) == source.committed
    assert 10 == await sqlite_store.count_events()
    assert 5 == consumer.stats.write_failures
    assert "write_batch failed (attempt 5)" in caplog.text
    assert source.keepalives >= 5  # paused while retrying, but still a live group member


async def test_retries_back_off_exponentially_up_to_the_cap(sqlite_store):
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    store = FlakyStore(sqlite_store, failures=6)
    consumer = BatchConsumer(
        RecordingSource(payloads(1)),
        store,
        source_name="t",
        backoff=0.1,
        max_backoff=1.0,
        sleep=record,
    )
    await run_until_drained(consumer)
    assert [0.1, 0.2, 0.4, 0.8, 1.0, 1.0] == delays


async def test_a_long_backoff_keeps_the_source_alive_every_second(sqlite_store):
    steps: list[float] = []

    async def record(step: float) -> None:
        steps.append(step)

    source = RecordingSource(payloads(1))
    store = FlakyStore(sqlite_store, failures=4)
    consumer = BatchConsumer(
        source, store, source_name="t", backoff=2.5, max_backoff=10.0, sleep=record
    )
    await run_until_drained(consumer)
    assert max(steps) <= 1.0
    assert pytest.approx(2.5 + 5 + 10 + 10) == sum(steps)
    assert source.keepalives == len(steps) + 4


async def test_a_write_that_hangs_keeps_the_source_alive_and_a_quick_one_never_pauses_it(
    sqlite_store,
):
    slow_writes = [1.6]  # the first write hangs (a frozen store), the next answer at once
    original_write = sqlite_store.write_batch
    hanging = False

    async def hanging_write(events):
        nonlocal hanging
        if slow_writes:
            hanging = True
            await asyncio.sleep(slow_writes.pop())
            hanging = False
        return await original_write(events)

    sqlite_store.write_batch = hanging_write
    source = RecordingSource(payloads(150))
    during_hang: list[bool] = []
    count_keepalive = source.keepalive

    async def keepalive():
        during_hang.append(hanging)
        await count_keepalive()

    source.keepalive = keepalive  # type: ignore[method-assign]
    consumer = BatchConsumer(
        source, sqlite_store, source_name="t", batch_size=100, keepalive_interval=0.5
    )
    await run_until_drained(consumer)
    assert 150 == await sqlite_store.count_events()
    assert list(range(150)) == source.committed
    # About every 0.5 s while the first write hung (a loaded machine wakes the loop late), and
    # never for the quick writes, which answer well within one interval.
    assert 2 <= during_hang.count(True) <= 4
    assert 0 == during_hang.count(False)
    assert 0 == consumer.stats.write_failures


async def test_at_shutdown_a_store_that_stays_down_leaves_the_batch_uncommitted(sqlite_store):
    store = FlakyStore(sqlite_store, failures=10**9)
    source = RecordingSource(payloads(3))
    consumer = BatchConsumer(source, store, source_name="t", sleep=no_sleep, shutdown_timeout=0.05)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(consumer.process(source.pending, stop), timeout=5)
    assert [] == source.committed
    assert 0 == await sqlite_store.count_events()


async def test_undecodable_messages_are_dead_lettered_and_the_rest_stored(sqlite_store, caplog):
    good = payloads(3)
    source = RecordingSource([good[0], b"\x00garbage", good[1], b'{"no": "id"}', good[2]])
    consumer = BatchConsumer(source, sqlite_store, source_name="memory")
    with caplog.at_level(logging.INFO, logger="widelog.consumer"):
        await run_until_drained(consumer)
    assert 3 == await sqlite_store.count_events()
    assert 2 == await sqlite_store.count_dead_letters()
    assert list(range(5)) == source.committed
    assert "Processed batch: 5 events (3 success, 2 failures) in" in caplog.text


async def test_events_the_store_rejects_are_dead_lettered(sqlite_store):
    class RejectingStore(FlakyStore):
        async def write_batch(self, events):
            result = await self.inner.write_batch(events[1:])
            result.rejected.append((0, "document too large"))
            return result

    source = RecordingSource(payloads(3))
    consumer = BatchConsumer(source, RejectingStore(sqlite_store), source_name="t")
    await run_until_drained(consumer)
    assert (2, 1) == (await sqlite_store.count_events(), await sqlite_store.count_dead_letters())
    assert 1 == consumer.stats.dead_lettered


async def test_a_redelivered_batch_is_counted_as_duplicates_not_stored_twice(sqlite_store):
    batch = payloads(20)
    consumer = BatchConsumer(RecordingSource(batch), sqlite_store, source_name="t")
    await run_until_drained(consumer)
    consumer_again = BatchConsumer(RecordingSource(batch), sqlite_store, source_name="t")
    await run_until_drained(consumer_again)
    assert 20 == await sqlite_store.count_events()
    assert 20 == consumer_again.stats.duplicates


@pytest.mark.parametrize("count", [0, 1, 1234])
async def test_stop_drains_everything_already_published(sqlite_store, count):
    queue = InProcessQueue()
    publisher = InProcessEventPublisher(queue)
    for payload in payloads(count):
        publisher.publish("k", payload)
    consumer = BatchConsumer(InProcessEventSource(queue), sqlite_store, source_name="t")
    await run_until_drained(consumer)
    assert count == await sqlite_store.count_events()
    assert 0 == queue.depth


async def test_a_durable_source_is_not_drained_at_stop(sqlite_store):
    source = RecordingSource(payloads(250))
    consumer = BatchConsumer(
        source, sqlite_store, source_name="t", batch_size=100, drain_on_stop=False
    )
    await run_until_drained(consumer)
    assert 100 == await sqlite_store.count_events()
    assert list(range(100)) == source.committed


async def test_on_stored_gets_only_events_stored_for_the_first_time(sqlite_store):
    seen: list[str] = []

    async def record(docs):
        seen.extend(doc["request_id"] for doc in docs)

    old = [make_event(request_id=f"old-{i}") for i in range(3)]
    await sqlite_store.write_batch(old)
    new = [make_event(request_id=f"new-{i}") for i in range(2)]
    batch = [msgspec.json.encode(e) for e in [old[0], new[0], old[1], new[1]]] + [b"garbage"]
    consumer = BatchConsumer(
        RecordingSource(batch), sqlite_store, source_name="t", on_stored=record
    )
    await run_until_drained(consumer)
    assert ["new-0", "new-1"] == seen


async def test_a_conflicting_duplicate_is_counted_committed_and_never_counted_downstream(
    sqlite_store, caplog
):
    seen: list[str] = []

    async def record(docs):
        seen.extend(doc["request_id"] for doc in docs)

    stored = make_event(request_id="first")
    await sqlite_store.write_batch([stored])
    other = {**stored, "request_id": "second"}
    source = RecordingSource([msgspec.json.encode(other), msgspec.json.encode(make_event())])
    consumer = BatchConsumer(source, sqlite_store, source_name="t", on_stored=record)
    await run_until_drained(consumer)
    assert (1, 0, 1, [0, 1]) == (
        consumer.stats.conflicts,
        consumer.stats.duplicates,
        consumer.stats.stored,
        source.committed,
    )
    assert ["r"] == seen
    assert "other content" in caplog.text
