"""Incidents on real parts: two workers sharing one FerretDB store, restarts, rebuild, the demo.

The workers are two aggregators with their own MongoDB clients, each reading its own half of the
partitions in small batches at the same time, as two `widelog worker` processes would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import time
from collections import Counter
from operator import itemgetter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.incident_traffic import T0, batches, burst
from widelog.incidents.aggregator import IncidentAggregator
from widelog.incidents.queries import incident_summaries
from widelog.incidents.rules import IncidentRules
from widelog.incidents.sqlite_store import SQLiteIncidentStore

MIN = dt.timedelta(minutes=1)
PARTITIONS = 6
READ_AT = T0 + 3 * 60 * MIN  # the wall clock: the workers read these events as a backlog
NOW = READ_AT + 60 * MIN  # and sweep an hour later, when everything is long complete


def worker(store: Any) -> IncidentAggregator:
    return IncidentAggregator(store, IncidentRules(), clock=lambda: READ_AT)


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """What two runs over the same events agree on exactly, however the workers interleaved:
    every step is judged on complete minutes, so the times it opened and resolved too."""
    keep = (
        "id", "status", "group", "events", "first_seen", "last_seen", "opened_at",
        "first_opened_at", "resolved_at", "regressions", "affected", "duration_ms", "window",
    )  # fmt: skip
    return {k: summary[k] for k in keep}


def partition_of(event: dict[str, Any]) -> int:
    """Like Kafka's keyed partitioning: a stable hash of the key (here the request id)."""
    digest = hashlib.sha256(event["request_id"].encode()).digest()
    return int.from_bytes(digest[:4], "big") % PARTITIONS


def traffic() -> list[dict[str, Any]]:
    """Two LLM failure bursts, noise, a quiet hour, then the timeouts come back (a regression)."""
    return [
        *burst(T0, successes=2000, errors={"LLM_TIMEOUT": 40, "LLM_RATE_LIMITED": 30}),
        *burst(T0 + 3 * MIN, successes=500, errors={"VALIDATION_ERROR": 6, "LLM_UNAVAILABLE": 4}),
        *burst(T0 + 80 * MIN, successes=1000, errors={"LLM_TIMEOUT": 50}),
    ]


async def consume(aggregator: IncidentAggregator, events: list[dict[str, Any]]) -> None:
    """One worker: its partitions' events, in time order, in batches of 50."""
    for batch in batches(events, 50):
        await aggregator.observe(batch)
        await asyncio.sleep(0)  # let the other worker in between batches, as I/O would
    await aggregator.flush()  # its sweeper's, within `write_every_s` of the last batch


async def reference(
    path: Path, events: list[dict[str, Any]], now: dt.datetime
) -> list[dict[str, Any]]:
    """The summaries one worker reading everything in order produces (SQLite)."""
    store = SQLiteIncidentStore(path)
    aggregator = worker(store)
    for batch in batches(events, 100):
        await aggregator.observe(batch)
    await aggregator.sweep(now)
    summaries = await incident_summaries(store)
    await store.close()
    return summaries


@pytest.fixture
def database(live_services):
    from tests.live import unique

    return unique("widelog_test").replace("-", "_")


@pytest.fixture
async def mongo_stores(database):
    """Three clients of one database: two workers and a reader."""
    from tests.live import mongo_url
    from widelog.incidents.mongo_store import MongoIncidentStore

    stores = [MongoIncidentStore(mongo_url(database)) for _ in range(3)]
    yield stores
    await stores[0]._client.drop_database(database)
    for store in stores:
        await store.close()


@pytest.mark.mongo
async def test_two_workers_sharing_one_ferretdb_store_yield_one_incident_per_key(
    mongo_stores, tmp_path, caplog
):
    caplog.set_level(logging.INFO, "widelog.incidents")
    events = traffic()
    now = NOW
    one, two, reader = mongo_stores
    worker_one, worker_two = worker(one), worker(two)
    await asyncio.gather(worker_one.start(), worker_two.start())  # both started: both count
    mine = [e for e in events if partition_of(e) < PARTITIONS // 2]
    theirs = [e for e in events if partition_of(e) >= PARTITIONS // 2]

    await asyncio.gather(consume(worker_one, mine), consume(worker_two, theirs))
    await asyncio.gather(worker_one.sweep(now), worker_two.sweep(now))

    shared = await incident_summaries(reader)
    keys = Counter((s["rule"]["id"], tuple(s["group"].items())) for s in shared)
    assert 2 == len(keys), keys
    assert {1} == set(keys.values())
    lines = [r.getMessage() for r in caplog.records]
    assert 3 == sum(" opened: " in m or "reopened" in m for m in lines)  # 2 openings, 1 reopening
    assert 3 == sum(" resolved: " in m for m in lines)
    expected = await reference(tmp_path / "reference.sqlite3", events, now)
    assert [comparable(s) for s in expected] == [comparable(s) for s in shared]


@pytest.mark.mongo
async def test_streaming_and_rebuild_agree_on_ferretdb(mongo_stores, database, tmp_path):
    from tests.live import mongo_url
    from widelog.incidents.mongo_store import MongoIncidentStore
    from widelog.pipeline.mongo_store import MongoEventStore

    events = traffic()
    now = NOW
    one, two, _ = mongo_stores
    workers = [worker(store) for store in (one, two)]
    await asyncio.gather(*(w.start() for w in workers))
    event_store = MongoEventStore(mongo_url(database))
    await event_store.write_batch(events)

    await asyncio.gather(
        consume(workers[0], [e for e in events if partition_of(e) % 2 == 0]),
        consume(workers[1], [e for e in events if partition_of(e) % 2 == 1]),
    )
    await asyncio.gather(*(w.sweep(now) for w in workers))
    rebuilt_store = MongoIncidentStore(mongo_url(database), prefix="rebuilt_")
    result = await IncidentAggregator(rebuilt_store, IncidentRules()).rebuild(
        event_store.scan_events(), T0 - MIN, now=now
    )

    streamed = await incident_summaries(one)
    rebuilt = await incident_summaries(rebuilt_store)
    assert (len(events), 2) == (result.events, result.opened)
    assert [comparable(s) for s in rebuilt] == [comparable(s) for s in streamed]
    assert [0, 1] == sorted(s["regressions"] for s in streamed)
    await rebuilt_store.close()
    await event_store.close()


@pytest.mark.mongo
async def test_a_restarted_worker_carries_on_with_the_open_incident_in_the_store(
    mongo_stores, database, tmp_path
):
    from tests.live import mongo_url
    from widelog.incidents.mongo_store import MongoIncidentStore

    events = burst(T0, seconds=600, successes=6000, errors={"LLM_TIMEOUT": 120})
    cut = len(events) * 6 // 10  # about 10:06: the minutes to 10:03 are complete
    first, _, reader = mongo_stores
    before_restart = worker(first)
    for batch in batches(events[:cut], 100):
        await before_restart.observe(batch)
    await before_restart.flush()  # as `widelog worker` does when it stops
    [open_] = await incident_summaries(reader)

    restarted_store = MongoIncidentStore(mongo_url(database))  # a new process, a new client
    restarted = worker(restarted_store)
    for batch in batches(events[cut:], 100):
        await restarted.observe(batch)
    await restarted.sweep(NOW)
    [after] = await incident_summaries(reader)

    assert ("open", "resolved") == (open_["status"], after["status"])
    assert (open_["id"], open_["opened_at"]) == (after["id"], after["opened_at"])
    assert 120 == after["events"] > open_["events"]
    expected = await reference(tmp_path / "r.sqlite3", events, NOW)
    assert expected == [after]  # one worker at a time: exactly what one uninterrupted run says
    await restarted_store.close()


@pytest.mark.slow
async def test_the_demo_traffic_opens_the_incidents_a_person_would_expect_and_nothing_else(
    tmp_path,
):
    """The demo's mix (2,000 requests, 2% baseline sampling): the three injected LLM failure
    codes on /v1/chat, and no incident for the 1.5% invalid, 0.5% oversized or 1.5% slow ones."""
    from widelog.chat.api import create_app
    from widelog.chat.bootstrap import build
    from widelog.chat.demo import synthetic_requests
    from widelog.config import Settings

    settings = Settings(transport="memory", store="sqlite", sqlite_path=tmp_path / "demo.sqlite3")
    container = build(settings, incident_rules=IncidentRules())
    incidents = container.pipeline.incidents
    app = create_app(container)
    pending = iter([body for _, body in synthetic_requests(2000)])

    async def client_loop(client: httpx.AsyncClient) -> None:
        for body in pending:
            await client.post("/v1/chat", json=body)

    await container.start()
    started = time.perf_counter()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            await asyncio.gather(*(client_loop(client) for _ in range(32)))
        await asyncio.wait_for(container.drained(), timeout=60)
        assert incidents is not None
        assert container.pipeline.aggregator is not None
        await container.pipeline.aggregator.settle()  # the last minutes complete
        streamed = await incident_summaries(incidents)
        print(f"demo traffic in {time.perf_counter() - started:.1f}s")
        rebuilt = SQLiteIncidentStore(tmp_path / "rebuilt.sqlite3")
        await IncidentAggregator(rebuilt, IncidentRules()).rebuild(
            container.pipeline.store.scan_events(),
            dt.datetime.now(dt.UTC) - 60 * MIN,
            now=dt.datetime.now(dt.UTC) + 5 * MIN,  # as later: every minute of it complete
        )
        from_rebuild = await incident_summaries(rebuilt)
        await rebuilt.close()
    finally:
        await container.aclose()

    groups = sorted((s["rule"]["id"], s["status"], tuple(s["group"].items())) for s in streamed)
    assert [
        ("errors", "open", (("error.code", code), ("http.route", "/v1/chat")))
        for code in ("CONTENT_FILTERED", "LLM_RATE_LIMITED", "LLM_TIMEOUT")
    ] == groups
    assert {22, 18, 26} == {s["events"] for s in streamed}
    for summary in streamed:
        print(summary["text"])
    assert sorted(s["id"] for s in streamed) == sorted(s["id"] for s in from_rebuild)
    assert sorted(s["events"] for s in streamed) == sorted(s["events"] for s in from_rebuild)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.faults
@pytest.mark.timeout(240)
async def test_a_worker_killed_mid_drain_counts_no_event_twice_and_rebuild_recounts_all(
    kafka_pipeline,
):
    """`widelog worker` with incidents on, SIGKILLed while it drains a backlog, then started
    again. Every event is stored once; the incident's counts lose what the killed process
    gathered since its last write (at most `write_every_s`) and count nothing twice (a
    re-delivered event is a duplicate in the store, never counted again); `widelog incidents
    rebuild`, run as an operator would, recounts every one."""
    import json
    import signal
    import subprocess
    import sys

    import msgspec
    from confluent_kafka import Producer

    from tests.live import KAFKA, mongo_url
    from widelog.incidents.mongo_store import MongoIncidentStore
    from widelog.pipeline.kafka import ensure_topic

    events = burst(T0, seconds=600, successes=6000, errors={"LLM_TIMEOUT": 300})
    # The killed worker's mark holds the others' judging back for `idle_after` (the lateness).
    kafka_pipeline.env["WIDELOG_INCIDENTS_LATENESS"] = "10"
    topic = kafka_pipeline.env["WIDELOG_KAFKA_TOPIC"]
    ensure_topic(KAFKA, topic, partitions=4)
    producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 20})
    for event in events:
        producer.produce(topic, msgspec.json.encode(event), event["request_id"].encode())
        producer.poll(0)
    assert 0 == producer.flush(30)

    killed = kafka_pipeline.start_worker()
    while len(await kafka_pipeline.stored_request_ids()) < 1000:
        assert killed.poll() is None, kafka_pipeline.worker_log(0)
        await asyncio.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert -signal.SIGKILL == killed.wait(10)
    assert len(await kafka_pipeline.stored_request_ids()) < len(events), "killed too late"
    restarted = kafka_pipeline.start_worker()
    await kafka_pipeline.wait_until_stored({e["request_id"] for e in events})
    store = MongoIncidentStore(mongo_url(kafka_pipeline.database))
    try:
        deadline = time.monotonic() + 60  # its sweeper judges once the killed one is idle
        while not await incident_summaries(store):
            assert time.monotonic() < deadline, kafka_pipeline.worker_log(1)
            await asyncio.sleep(0.5)
        restarted.send_signal(signal.SIGTERM)
        assert 0 == restarted.wait(30), kafka_pipeline.worker_log(1)
        [streamed] = await incident_summaries(store)
        assert 0 < streamed["events"] <= 300  # never counted twice (some lost with the kill)
        assert 0 == streamed["regressions"]  # one episode: the kill opened nothing twice
        rebuilt = subprocess.run(
            [sys.executable, "-m", "widelog", "incidents", "rebuild", "--since", "all", "--json"],
            env={**os.environ, **kafka_pipeline.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert (len(events), 1) == itemgetter("events", "incidents")(json.loads(rebuilt.stdout))
        [recounted] = await incident_summaries(store)
        assert (streamed["id"], 300) == (recounted["id"], recounted["events"])
    finally:
        await store.close()
    print(f"killed mid-drain: {streamed['events']} of 300 errors counted live, 300 after rebuild")
