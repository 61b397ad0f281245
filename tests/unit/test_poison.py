"""Poison that decodes, or nearly: no single message may stop the consumer or kill the worker.

Each test runs the real `BatchConsumer` on the in-process transport into SQLite, the incident
aggregator behind it, and checks that everything was committed (the queue drains only then).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.contract.test_event_store import make_event
from tests.fakes import FlakyStore
from tests.incident_traffic import T0, burst, request
from widelog.events.event import decode as real_decode
from widelog.incidents.aggregator import IncidentAggregator
from widelog.incidents.queries import incident_summaries
from widelog.incidents.rules import IncidentRules
from widelog.incidents.sqlite_store import SQLiteIncidentStore
from widelog.pipeline import consumer as consumer_module
from widelog.pipeline.consumer import BatchConsumer
from widelog.pipeline.memory import InProcessEventPublisher, InProcessEventSource, InProcessQueue


def deep(levels: int) -> bytes:
    """An event with one field nested `levels` lists deep."""
    return b'{"event_id":"deep","request_id":"deep","x":' + b"[" * levels + b"]" * levels + b"}"


class Pipeline:
    """Publisher → in-process queue → consumer → SQLite, with the incident aggregator."""

    def __init__(self, tmp_path: Path, store: Any) -> None:
        self.queue = InProcessQueue()
        self.publisher = InProcessEventPublisher(self.queue)
        self.store = FlakyStore(store)
        self.incidents = SQLiteIncidentStore(tmp_path / "incidents.sqlite3")
        self.aggregator = IncidentAggregator(self.incidents, IncidentRules())
        self.consumer = BatchConsumer(
            InProcessEventSource(self.queue),
            self.store,
            source_name="memory",
            flush_interval=0.05,
            on_stored=self.aggregator.observe,
        )

    def publish(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.publisher.publish("k", payload)

    async def drain(self) -> None:
        """Run the consumer until everything published was committed; fail after 10 s."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.consumer.run(stop))
        try:
            await asyncio.wait_for(self.queue.drained(), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)


@pytest.fixture
async def pipeline(tmp_path, sqlite_store):
    pipeline = Pipeline(tmp_path, sqlite_store)
    yield pipeline
    await pipeline.incidents.close()


def encoded(events: list[dict[str, Any]]) -> list[bytes]:
    return [msgspec.json.encode(e) for e in events]


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z"])
async def test_an_error_event_at_the_end_of_time_is_stored_and_the_incidents_skip_it(
    pipeline, sqlite_store, stamp, caplog
):
    good = burst(T0, successes=500, errors={"LLM_TIMEOUT": 30})
    poison = request(T0, code="LLM_TIMEOUT") | {"timestamp": stamp}
    pipeline.publish(*encoded(good[:250]), *encoded([poison]), *encoded(good[250:]))

    await pipeline.drain()

    assert len(good) + 1 == await sqlite_store.count_events()
    assert await sqlite_store.get_event(poison["event_id"]) is not None
    assert {"an event whose time is out of range": 1} == dict(pipeline.aggregator.skipped_by_reason)
    assert 1 == caplog.text.count("skipped an event whose time is out of range")
    await pipeline.aggregator.settle()  # incidents are judged on complete minutes
    [incident] = await incident_summaries(pipeline.incidents)
    assert 30 == incident["events"]  # the poison's group still counts every good event
    assert 0 == pipeline.consumer.stats.on_stored_failures


async def test_a_flood_of_events_at_the_end_of_time_is_logged_once(pipeline, caplog):
    late = dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.UTC)
    pipeline.publish(*encoded([request(late, code="LLM_TIMEOUT") for _ in range(300)]))

    await pipeline.drain()

    assert 300 == pipeline.aggregator.skipped
    assert 1 == caplog.text.count("skipped an event whose time is out of range")


async def test_an_event_nested_10000_levels_deep_is_dead_lettered_with_its_reason(
    pipeline, sqlite_store
):
    good = [make_event() for _ in range(20)]
    pipeline.publish(*encoded(good[:10]), deep(10_000), *encoded(good[10:]))

    await pipeline.drain()

    assert 20 == await sqlite_store.count_events()
    [letter] = pipeline.store.letters
    assert deep(10_000) == letter.payload
    assert "not a JSON object nested at most 64 levels" == letter.error


async def test_any_failure_decoding_one_message_dead_letters_it_and_the_rest_is_stored(
    pipeline, sqlite_store, monkeypatch, caplog
):
    def decode_failing_on_b00m(payload: bytes) -> dict[str, Any]:
        if b"b00m" in payload:
            raise MemoryError("decoder out of memory (injected)")
        return real_decode(payload)

    monkeypatch.setattr(consumer_module, "decode", decode_failing_on_b00m)
    good = [make_event() for _ in range(10)]
    pipeline.publish(*encoded(good[:5]), *encoded([make_event(note="b00m")]), *encoded(good[5:]))

    with caplog.at_level(logging.ERROR, "widelog.consumer"):
        await pipeline.drain()

    assert 10 == await sqlite_store.count_events()
    [letter] = pipeline.store.letters
    assert "decode failed: MemoryError('decoder out of memory (injected)')" == letter.error
    assert "decoding a message failed unexpectedly" in caplog.text


async def test_a_hook_that_keeps_failing_is_given_up_and_the_stored_batch_committed(
    tmp_path, sqlite_store, caplog
):
    async def broken_hook(_events: list[dict[str, Any]]) -> None:
        raise ZeroDivisionError("a bug downstream of the store")

    async def no_sleep(_: float) -> None:
        return None

    queue = InProcessQueue()
    consumer = BatchConsumer(
        InProcessEventSource(queue),
        sqlite_store,
        source_name="memory",
        on_stored=broken_hook,
        on_stored_attempts=3,
        sleep=no_sleep,
    )
    for payload in encoded([make_event() for _ in range(5)]):
        InProcessEventPublisher(queue).publish("k", payload)
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(consumer.run(stop), timeout=10)

    assert 0 == queue.depth
    await asyncio.wait_for(queue.drained(), timeout=1)  # committed
    assert (5, 1) == (await sqlite_store.count_events(), consumer.stats.on_stored_failures)
    assert "on_stored failed 3 times: giving up on it for this batch" in caplog.text
