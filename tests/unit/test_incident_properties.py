"""Property: the incident history depends on the events, never on how they were delivered.

One generated history (traffic with error bursts, quiet periods with no request at all,
recoveries; delivered out of order within `lateness`) goes through the aggregator six ways:
live in random batches with sweeps in between, as a backlog read hours later, all at once,
through `rebuild`, and split between two workers (Kafka-like partitions by request id) sharing
one store, live and as a backlog. Every way must record exactly the same transitions (times,
reasons, windows) and facets (`errors` explains `slow`; faults fail requests slowly) and count no
event late. The generator draws a `seed` (shown in the
falsifying example on failure) from which every detail follows, so a failure reproduces with
`derandomize` off by passing that seed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.incident_traffic import T0, request
from widelog.incidents.aggregator import IncidentAggregator
from widelog.incidents.memory_store import InMemoryIncidentStore
from widelog.incidents.rules import IncidentRules

LATENESS_S = 60
JITTER_S = 45  # how late (wall) an event may be delivered after its time
BATCH_WAIT_S = 10  # live, a batch is handed on at the latest this long after its first event
# (the consumer's "every 1 s or every 100 events"): delivery + wait stay under the lateness.
RULES = IncidentRules.model_validate(
    {
        "lateness": LATENESS_S,
        "rules": [
            {
                "id": "errors",
                "match": {"error": True},
                "window": "2m",
                "quiet": "3m",
                "min_count": 4,
                "min_rate": 0.15,
                "min_requests": 8,
                "explains": ["slow"],
            },
            {
                "id": "slow",
                "match": {"duration_ms_over": 1000},
                "group_by": ["http.route"],
                "window": "3m",
                "quiet": "4m",
                "min_count": 3,
                "min_rate": 0.2,
                "min_requests": 5,
            },
        ],
    }
)
FAR = dt.timedelta(days=2)


@dataclass
class Delivery:
    at: dt.datetime  # wall time the event reached the consumer
    doc: dict[str, Any]


def history(seed: int) -> list[Delivery]:
    """Phases of whole minutes: steady traffic, error bursts, slow spells, total silence."""
    rng = random.Random(seed)
    deliveries: list[Delivery] = []
    minute = T0
    for _ in range(rng.randint(3, 9)):
        kind = rng.choice(["steady", "burst", "slow", "fault", "silence", "trickle"])
        for _ in range(rng.randint(1, 8)):
            requests = 0 if kind == "silence" else rng.randint(0 if kind == "trickle" else 5, 25)
            for _ in range(requests):
                at = minute + dt.timedelta(milliseconds=rng.randrange(60_000))
                route = rng.choice(["/v1/chat", "/v1/chat", "/v1/embed"])
                burst = kind in {"burst", "fault"}
                failing = (burst and rng.random() < 0.5) or rng.random() < 0.03
                code = rng.choice(["LLM_TIMEOUT", "LLM_RATE_LIMITED"]) if failing else None
                # a fault fails requests slowly: the errors incident explains the slow signal
                slow = (kind == "slow" and rng.random() < 0.6) or (kind == "fault" and failing)
                n = len(deliveries)
                doc = request(
                    at,
                    code=code,
                    route=route,
                    duration_ms=2500.0 if slow else 100.0,
                    request_id=f"req-{seed}-{n}",
                )
                doc["event_id"] = f"evt-{seed}-{n:06d}"  # the same every time (partitions)
                delay = dt.timedelta(milliseconds=rng.randrange(JITTER_S * 1000))
                deliveries.append(Delivery(at + delay, doc))
            minute += dt.timedelta(minutes=1)
    deliveries.sort(key=lambda d: (d.at, d.doc["event_id"]))
    return deliveries


def cut(
    rng: random.Random, items: list[Delivery], wait: dt.timedelta | None = None
) -> list[list[Delivery]]:
    """Random batches of 1 to 120 events; live (`wait`), none spans more than `wait`."""
    batches, start = [], 0
    while start < len(items):
        size = rng.choice([1, 3, 10, 40, 120, rng.randint(1, 120)])
        batch = items[start : start + size]
        if wait is not None:
            batch = [d for d in batch if d.at - batch[0].at <= wait]
        batches.append(batch)
        start += len(batch)
    return batches


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def partition(delivery: Delivery) -> int:
    return hashlib.sha256(delivery.doc["request_id"].encode()).digest()[0] % 2


async def transitions(store: InMemoryIncidentStore) -> list[tuple[Any, ...]]:
    steps = [s for group in (await store.transitions()).values() for s in group]
    return sorted((s.record_id, s.at, s.reason, s.window and s.window.to_doc()) for s in steps)


async def live(
    deliveries: list[Delivery], rng: random.Random, workers: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Batches reach each worker as their last event is delivered; sweeps in the gaps."""
    store, clock = InMemoryIncidentStore(), Clock(T0 - dt.timedelta(minutes=1))
    aggregators = [IncidentAggregator(store, RULES, clock=clock) for _ in range(workers)]
    for aggregator in aggregators:
        await aggregator.start()
    queues = [[d for d in deliveries if workers == 1 or partition(d) == w] for w in range(workers)]
    wait = dt.timedelta(seconds=BATCH_WAIT_S)
    arrivals = sorted(
        (batch[-1].at, w, i, batch)
        for w, queue in enumerate(queues)
        for i, batch in enumerate(cut(rng, queue, wait))
    )
    for n, (at, w, _, batch) in enumerate(arrivals):
        if at - clock.now >= WRITE_EVERY:
            await flush_all(aggregators)  # each worker's sweeper, while wall time passed
        clock.now = max(clock.now, at)
        await aggregators[w].observe([d.doc for d in batch])
        if rng.random() < 0.3 and n + 1 < len(arrivals):
            # a sweep before any event still to come is delivered (live, wall time never runs
            # ahead of the deliveries)
            nxt = min(later[3][0].at for later in arrivals[n + 1 :])
            pause = dt.timedelta(seconds=rng.randrange(400))
            clock.now = max(clock.now, min(nxt, clock.now + pause))
            await flush_all(aggregators)
            await aggregators[rng.randrange(workers)].sweep()
    clock.now = max(clock.now, deliveries[-1].at) + FAR
    await flush_all(aggregators)
    for aggregator in aggregators:
        await aggregator.sweep()
    return await transitions(store), sum(a.late_events for a in aggregators)


WRITE_EVERY = dt.timedelta(seconds=IncidentAggregator(InMemoryIncidentStore(), RULES).write_every_s)


async def flush_all(aggregators: list[IncidentAggregator]) -> None:
    """What every worker's sweeper does while wall time passes: write what it counted (within
    `write_every_s`, well before anyone may take the worker for idle)."""
    for aggregator in aggregators:
        await aggregator.flush()


async def backlog(
    deliveries: list[Delivery], rng: random.Random, workers: int, *, whole: bool = False
) -> tuple[list[tuple[Any, ...]], int]:
    """Read hours later: the wall clock stands still while the batches come, in any order
    between the workers (each worker's own events in delivery order)."""
    store, clock = InMemoryIncidentStore(), Clock(deliveries[-1].at + dt.timedelta(hours=3))
    aggregators = [IncidentAggregator(store, RULES, clock=clock) for _ in range(workers)]
    for aggregator in aggregators:
        await aggregator.start()
    queues = [[d for d in deliveries if workers == 1 or partition(d) == w] for w in range(workers)]
    pending = [[list(queue)] if whole else cut(rng, queue) for queue in queues]
    while any(pending):
        w = rng.choice([w for w in range(workers) if pending[w]])
        await aggregators[w].observe([d.doc for d in pending[w].pop(0)])
        if rng.random() < 0.1:
            await aggregators[w].sweep()
    clock.now += FAR
    await flush_all(aggregators)
    for aggregator in aggregators:
        await aggregator.sweep()
    return await transitions(store), sum(a.late_events for a in aggregators)


async def rebuilt(deliveries: list[Delivery]) -> tuple[list[tuple[Any, ...]], int]:
    store = InMemoryIncidentStore()
    aggregator = IncidentAggregator(store, RULES, clock=lambda: T0)
    shuffled = [d.doc for d in deliveries]
    random.Random(7).shuffle(shuffled)  # rebuild sorts by event time itself
    await aggregator.rebuild(shuffled, T0 - dt.timedelta(hours=1), now=deliveries[-1].at + FAR)
    return await transitions(store), aggregator.late_events


@settings(max_examples=40, deadline=None, database=None, print_blob=True)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_the_same_history_however_the_events_are_delivered(seed: int) -> None:
    deliveries = history(seed)
    if not deliveries:
        return
    rng = random.Random(seed + 1)

    async def every_way() -> dict[str, tuple[list[tuple[Any, ...]], int]]:
        return {
            "all at once": await backlog(deliveries, rng, 1, whole=True),
            "rebuild": await rebuilt(deliveries),
            "live batches": await live(deliveries, rng, 1),
            "backlog batches": await backlog(deliveries, rng, 1),
            "two workers live": await live(deliveries, rng, 2),
            "two workers backlog": await backlog(deliveries, rng, 2),
        }

    results = asyncio.run(every_way())
    reference, _ = results["all at once"]
    for way, (steps, late) in results.items():
        assert (reference, 0) == (steps, late), f"{way} (seed {seed})"


def test_the_generated_histories_record_facets():
    """So the property above compares facets too (seed 0 has a fault while errors are open)."""
    steps, _ = asyncio.run(backlog(history(0), random.Random(1), 1, whole=True))
    assert any("|facet|" in record_id for record_id, *_ in steps)
