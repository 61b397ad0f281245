"""Exact request counts (count records) and estimates that state their uncertainty."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import Any

import pytest

from tests.fakes import RecordingPublisher
from tests.incident_traffic import batches, burst
from widelog.events.logging_service import LoggingService
from widelog.incidents.aggregator import IncidentAggregator
from widelog.incidents.queries import incident_summaries
from widelog.incidents.request_totals import StoredRequestTotals
from widelog.incidents.rules import IncidentRules
from widelog.incidents.sqlite_store import SQLiteIncidentStore
from widelog.pipeline.consumer import BatchConsumer
from widelog.pipeline.memory import InProcessEventPublisher, InProcessEventSource, InProcessQueue
from widelog.pipeline.sqlite_store import SQLiteEventStore
from widelog.sampling.counts import CountRecord, RequestCounter, status_class
from widelog.sampling.reweighting import estimate
from widelog.sampling.totals import Total

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def request(route: str = "/v1/chat", status: int = 200, at: dt.datetime = T0) -> dict[str, Any]:
    return {"http": {"route": route, "status": status}, "timestamp": at}


# --- the interval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "rate", "errors"),
    [(1000, 0.02, 10), (5000, 0.02, 50), (400, 0.05, 4), (250, 0.1, 0)],
)
def test_the_95_percent_interval_covers_the_true_total_in_about_95_percent_of_trials(
    requests, rate, errors
):
    rng = random.Random(20261127)  # fixed: the test checks the maths, not the luck
    trials, covered = 2000, 0
    for _ in range(trials):
        kept = sum(rng.random() < rate for _ in range(requests))
        total = Total.of_weights([1.0] * errors + [1 / rate] * kept)
        low, high = total.interval()
        covered += low <= requests + errors <= high
    # Binomial(2000, 0.95) has sd ~0.5%: 93-97.5% accepts the nominal level, rejects a bad one.
    assert 0.93 <= covered / trials <= 0.975


def test_an_exact_total_has_no_interval_and_says_nothing_extra():
    total = Total.exact(2000) + Total.exact(13)
    assert (2013, 2013) == total.interval()
    assert {"value": 2013, "estimated": False} == total.as_dict()
    assert "2,013" == total.describe()


def test_an_estimate_never_reaches_below_what_was_seen_and_says_it_is_estimated():
    total = Total.of_weights([50.0, 50.0, 1.0])  # 2 kept at 2%, one error
    low, high = total.interval()
    assert 3 <= low < 101 < high
    assert total.as_dict()["estimated"] is True
    assert total.describe().startswith("about 101 (estimated; 95% interval")


def test_the_interval_is_close_to_the_normal_one_when_many_events_were_kept():
    total = Total.of_weights([50.0] * 400)
    low, high = total.interval()
    half = 1.96 * total.stderr
    assert abs(low - (total.value - half)) / half < 0.05
    assert abs(high - (total.value + half)) / half < 0.05


# --- counting before sampling ---------------------------------------------------------------


def test_every_request_is_counted_per_route_status_class_and_minute():
    counter = RequestCounter(emitter="e")
    for _ in range(3):
        counter.count(request())
    counter.count(request(status=503))
    counter.count(request("/health", 200, T0 + MINUTE))
    counter.count({"timestamp": T0})  # no http section: unknown route and class
    records = counter.due(T0 + 3 * MINUTE)
    assert [T0, T0 + MINUTE] == [r.minute for r in records]
    assert {("/v1/chat", "2xx"): 3, ("/v1/chat", "5xx"): 1, ("unknown", "unknown"): 1} == (
        records[0].counts
    )
    assert (5, 1) == (records[0].version, records[1].version)


def test_a_minute_is_sent_after_its_grace_and_again_only_when_a_late_request_changes_it():
    counter = RequestCounter(emitter="e", grace=dt.timedelta(seconds=10))
    counter.count(request())
    assert [] == counter.due(T0 + MINUTE)  # the minute's stragglers may still come
    assert [1] == [r.version for r in counter.due(T0 + MINUTE + dt.timedelta(seconds=10))]
    assert [] == counter.due(T0 + 2 * MINUTE)  # unchanged: not sent again
    counter.count(request(at=T0 + MINUTE))
    counter.count(request(at=T0 + dt.timedelta(seconds=59)))  # a long request, finished late
    assert [(T0, 2)] == [
        (r.minute, r.version) for r in counter.due(T0 + 90 * dt.timedelta(seconds=1))
    ]


def test_at_shutdown_every_changed_minute_is_sent_the_open_one_too():
    counter = RequestCounter(emitter="e")
    counter.count(request())
    assert [T0] == [r.minute for r in counter.due(T0, final=True)]


def test_status_classes():
    assert ["2xx", "4xx", "5xx", "unknown", "unknown"] == [
        status_class(s) for s in (200, 429, 503, 0, None)
    ]


def test_a_count_record_survives_its_wire_form():
    record = CountRecord("api/1-ab", T0, {("/v1/chat", "2xx"): 4}, "api", "chat")
    again = CountRecord.from_doc(record.to_doc())
    assert (record.id, record.counts, record.minute) == (again.id, again.counts, again.minute)


def test_logging_service_publishes_count_records_and_its_events_name_their_emitter():
    publisher = RecordingPublisher()
    service = LoggingService(publisher=publisher, service="s", env="t", version="1", instance="i")
    event = service.begin(request_id="r1")
    event.set("http.route", "/v1/chat")
    event.set("http.status", 200)
    service.finalize(event)
    assert 1 == service.publish_counts(final=True)
    stored_event, record = publisher.events
    assert stored_event["emitter"] == record["emitter"] == service.emitter
    assert service.emitter.startswith("i/")
    assert "request_counts" == record["record"]
    assert [{"route": "/v1/chat", "status_class": "2xx", "requests": 1}] == record["counts"]


# --- the consumer ----------------------------------------------------------------------------


async def test_the_consumer_stores_count_records_apart_and_never_dead_letters_them(sqlite_store):
    queue = InProcessQueue()
    service = LoggingService(
        publisher=InProcessEventPublisher(queue), service="s", env="t", version="1", instance="i"
    )
    for i in range(3):
        event = service.begin(request_id=f"r{i}")
        event.set("http.route", "/v1/chat")
        event.set("http.status", 200)
        service.finalize(event)
    service.publish_counts(final=True)
    service.publisher.publish("bad", b'{"record": "request_counts", "emitter": "x"}')
    handed: list[CountRecord] = []

    async def on_counts(records: list[CountRecord]) -> None:
        handed.extend(records)

    consumer = BatchConsumer(
        InProcessEventSource(queue),
        sqlite_store,
        source_name="memory",
        counts=sqlite_store,
        on_counts=on_counts,
    )
    stop = asyncio.Event()
    stop.set()
    await consumer.run(stop)
    assert 3 == await sqlite_store.count_events()
    [record] = await sqlite_store.request_counts()
    assert 3 == record.requests("/v1/chat")
    assert (1, 1) == (consumer.stats.count_records, consumer.stats.dead_lettered)
    assert [record] == handed  # stored, then handed to the aggregator


# --- exact where a record is held, estimated where it is not ----------------------------------


def _event(
    emitter: str, weight: float, *, at: dt.datetime = T0, error: bool = False
) -> dict[str, Any]:
    reason = "error" if error else "baseline"
    return {
        "event_id": f"{emitter}-{random.random()}",
        "emitter": emitter,
        "timestamp": at,
        "http": {"route": "/v1/chat", "status": 500 if error else 200},
        "sampling": {"weight": weight, "rate": 1 / weight, "reason": reason},
    }


def test_duplicated_count_records_count_once():
    record = CountRecord("a", T0, {("/v1/chat", "2xx"): 1000})
    events = [_event("a", 50.0), _event("a", 1.0, error=True)]
    result = estimate(events, [record, record])
    assert {"value": 1000, "estimated": False} == result.routes["/v1/chat"].total.as_dict()


def test_an_emitter_minute_without_its_record_is_estimated_from_its_kept_events():
    records = [CountRecord("a", T0, {("/v1/chat", "2xx"): 990, ("/v1/chat", "5xx"): 10})]
    events = [_event("a", 50.0) for _ in range(19)] + [_event("b", 50.0) for _ in range(20)]
    events += [_event("b", 1.0, error=True) for _ in range(5)]
    total = estimate(events, records).routes["/v1/chat"].total
    assert 1000 + 20 * 50 + 5 == total.value
    low, high = total.interval()
    assert total.estimated
    assert 1000 + 25 <= low < total.value < high


async def test_stored_totals_use_a_record_where_held_and_the_events_elsewhere(sqlite_store):
    await sqlite_store.write_request_counts(
        [CountRecord("a", T0, {("/v1/chat", "2xx"): 700, ("/health", "2xx"): 300})]
    )
    events = [_event("a", 50.0) for _ in range(3)]  # counted in a's record already
    events += [_event("b", 50.0) for _ in range(4)] + [_event("a", 50.0, at=T0 + MINUTE)]
    await sqlite_store.write_batch(events)
    totals = StoredRequestTotals(sqlite_store)
    chat = await totals.scope_totals((("http.route", "/v1/chat"),), T0, T0 + MINUTE)
    assert (900.0, True) == (chat[T0].value, chat[T0].estimated)
    assert (50.0, True) == (chat[T0 + MINUTE].value, chat[T0 + MINUTE].estimated)
    everything = await totals.scope_totals((), T0, T0)
    assert 1200.0 == everything[T0].value
    only_a = await StoredRequestTotals(sqlite_store).scope_totals(
        (("http.route", "/health"),), T0, T0
    )
    assert {"value": 300.0, "estimated": False} == only_a[T0].as_dict()


# --- incidents: exact rates where the records are held ----------------------------------------


async def _incident_text(tmp_path, *, records: list[CountRecord]) -> dict[str, Any]:
    """An LLM_TIMEOUT burst (30 in 2 min) beside 44 successes kept at 2%, by emitter `api/1`."""
    events = burst(T0, seconds=120, successes=44, success_weight=50, errors={"LLM_TIMEOUT": 30})
    for event in events:
        event["emitter"] = "api/1"
    store = SQLiteEventStore(tmp_path / f"events-{len(records)}.sqlite3")
    incidents = SQLiteIncidentStore(tmp_path / f"incidents-{len(records)}.sqlite3")
    totals = StoredRequestTotals(store)
    try:
        await store.write_request_counts(records)
        newest = T0  # the wall clock: each batch arrives at its newest event's time
        aggregator = IncidentAggregator(
            incidents, IncidentRules(), totals=totals, clock=lambda: newest
        )
        for batch in batches(events):
            newest = max(dt.datetime.fromisoformat(e["timestamp"]) for e in batch)
            await store.write_batch(batch)
            await aggregator.observe(batch, now=newest)
        await aggregator.settle()  # incidents are judged on complete minutes
        [summary] = await incident_summaries(incidents, totals=totals)
    finally:
        await store.close()
        await incidents.close()
    return summary


async def test_an_incident_rate_uses_exact_totals_where_every_record_is_held(tmp_path):
    records = [
        CountRecord("api/1", minute, {("/v1/chat", "2xx"): 1000, ("/v1/chat", "5xx"): 15})
        for minute in (T0, T0 + MINUTE)
    ]
    summary = await _incident_text(tmp_path, records=records)
    assert (2030, False) == (summary["window"]["requests"], summary["window"]["requests_estimated"])
    assert "requests_interval95" not in summary["window"]
    assert "30 of 2,030 requests with http.route = /v1/chat (1.48%)" in summary["text"]


async def test_without_the_records_the_incident_rate_is_estimated_with_an_interval(tmp_path):
    summary = await _incident_text(tmp_path, records=[])
    window = summary["window"]
    assert (2230, True) == (window["requests"], window["requests_estimated"])
    low, high = window["requests_interval95"]
    assert low < 2030 < high  # the truth
    text = summary["text"]
    assert "30 of about 2,230 requests with http.route = /v1/chat (1.35%), estimated" in text
    assert f"95% interval {low:,.0f}-{high:,.0f} requests, 1.01%-1.79%." in text
    assert [0.010086, 0.017924] == window["rate_interval95"]


class _CountsOnly(StoredRequestTotals):
    """Count records for `rebuild` only: judging must never ask the event store (a scan there)."""

    def __init__(self, records: list[CountRecord]) -> None:
        self._records = records

    async def scope_totals(self, scope, start, end):
        raise AssertionError("the aggregator asked the event store for a scope's requests")

    async def count_records(self, since: dt.datetime) -> list[CountRecord]:
        return [r for r in self._records if r.minute >= since]


@pytest.mark.parametrize("records_held", [True, False])
async def test_the_aggregator_judges_on_totals_it_keeps_in_memory(tmp_path, records_held):
    """The windows the aggregator judges (the opening's) are exact from the count records the
    consumer handed it, estimated from the kept events otherwise, and the same after `rebuild`;
    the event store is never queried for them."""
    events = burst(T0, seconds=120, successes=44, success_weight=50, errors={"LLM_TIMEOUT": 30})
    for event in events:
        event["emitter"] = "api/1"
    records = [
        CountRecord("api/1", minute, {("/v1/chat", "2xx"): 1000, ("/v1/chat", "5xx"): 15})
        for minute in (T0, T0 + MINUTE)
    ]
    incidents = SQLiteIncidentStore(tmp_path / "incidents.sqlite3")
    totals = _CountsOnly(records if records_held else [])
    try:
        newest = T0
        aggregator = IncidentAggregator(
            incidents, IncidentRules(), totals=totals, clock=lambda: newest
        )
        for batch in batches(events):
            newest = max(dt.datetime.fromisoformat(e["timestamp"]) for e in batch)
            if records_held and newest >= T0 + MINUTE:
                await aggregator.observe_counts(records)  # as the consumer's `on_counts`
            await aggregator.observe(batch, now=newest)
        await aggregator.settle()
        [live] = (await incidents.transitions()).values()
        [opening] = [s.window for s in live if s.kind == "open"]
        rebuilt = IncidentAggregator(incidents, IncidentRules(), totals=totals)
        await rebuilt.rebuild(events, T0 - MINUTE, now=T0 + 30 * MINUTE)
        [again] = (await incidents.transitions()).values()
    finally:
        await incidents.close()
    assert opening is not None
    assert opening.requests_total is not None
    truth = sum(r.requests() for r in records if opening.start <= r.minute <= opening.end_minute)
    assert truth == 1015  # it opened on the first minute
    if records_held:
        assert (truth, False) == (opening.requests, opening.requests_total.estimated)
    else:
        assert opening.requests_total.estimated
        low, high = opening.requests_total.interval()
        assert low < truth < high
    assert [opening] == [s.window for s in again if s.kind == "open"]
