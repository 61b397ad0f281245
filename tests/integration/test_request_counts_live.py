"""Exact denominators on real parts: API → Kafka → `widelog worker` → FerretDB.

2,000 chats at the default sampling (2% of successes kept) must read back as exactly 2,000
requests in `sampling estimate` and in the incident summary, because the API's count records
travel with its events. With those records lost, the same figures are estimates whose 95%
interval holds the truth.

Which requests the baseline keeps is a pure function of their ids (`docs/sampling.md`), so the
ids are fixed: with the prefix `counts`, 41 of the 1,960 successes are kept (an estimate of
2,090), and the test checks the plumbing, not the luck of a draw.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from tests.apps import running_api
from tests.pipelines import Pipeline
from widelog.incidents.aggregator import IncidentAggregator
from widelog.incidents.mongo_store import MongoIncidentStore
from widelog.incidents.queries import incident_summaries
from widelog.incidents.request_totals import StoredRequestTotals, window_total
from widelog.pipeline.mongo_store import MongoEventStore
from widelog.policies import load_incident_rules
from widelog.sampling.policy import SamplingPolicy
from widelog.sampling.reweighting import estimate_from_store

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.mongo, pytest.mark.timeout(180)]

REQUESTS = 2000
FAIL_EVERY = 50  # 40 LLM timeouts: 2% of the route, an `errors` incident
KEPT_SUCCESSES = 41  # with these request ids (see above), at the baseline's weight of 50
CHAT = (("http.route", "/v1/chat"),)


async def send_chats(pipeline: Pipeline) -> None:
    """2,000 chats through the API with default sampling; it publishes its counts at close."""
    async with running_api(pipeline.settings(), sampling=SamplingPolicy()) as (client, _):
        pending = iter(range(REQUESTS))

        async def loop() -> None:
            for i in pending:
                failing = "[fail:LLM_TIMEOUT] " if i % FAIL_EVERY == 0 else ""
                response = await client.post(
                    "/v1/chat",
                    json={"session_id": f"s{i % 7}", "message": f"{failing}hello {i}"},
                    headers={"x-request-id": f"counts-{i}"},
                )
                assert response.status_code == (504 if failing else 200), response.text

        await asyncio.gather(*(loop() for _ in range(16)))


async def wait_for_counts(pipeline: Pipeline, store: MongoEventStore, *, timeout: float = 60):
    """Until the worker stored the kept events and count records adding up to every request.

    Every kept event: the estimate below reads them all, and the last may still be on its way
    when the count records are in.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = await store.request_counts()
        counted = sum(r.requests("/v1/chat") for r in records)
        kept = REQUESTS // FAIL_EVERY + KEPT_SUCCESSES
        if counted == REQUESTS and await store.count_events() >= kept:
            return records
        assert time.monotonic() < deadline, f"{counted} requests counted so far"
        await asyncio.sleep(0.5)


async def test_exact_route_totals_from_count_records_and_estimates_without_them(
    kafka_pipeline: Pipeline,
):
    pipeline = kafka_pipeline
    # The worker stores; the incidents come from `rebuild` below, which judges every minute at
    # once (a live worker judges a minute only once wall time passed it by the lateness).
    pipeline.env["WIDELOG_INCIDENTS_ENABLED"] = "false"
    pipeline.start_worker()
    await pipeline.wait_for_log(0, "worker consuming")
    settings = pipeline.settings()
    store = MongoEventStore(settings.mongo_url)
    incidents = MongoIncidentStore(settings.mongo_url)
    totals = StoredRequestTotals(store)
    try:
        await send_chats(pipeline)
        records = await wait_for_counts(pipeline, store)
        stored = await store.count_events()
        assert stored < REQUESTS // 10  # sampling did drop the ordinary successes
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        await IncidentAggregator(incidents, load_incident_rules(), totals=totals).rebuild(
            store.scan_events(), later - dt.timedelta(hours=1), now=later
        )

        # Exact: every figure is 2,000 and says nothing more.
        route = (await estimate_from_store(store)).routes["/v1/chat"]
        assert {"value": REQUESTS, "estimated": False} == route.total.as_dict()
        [summary] = await incident_summaries(incidents, totals=totals)
        window = summary["window"]
        assert (40, REQUESTS, False) == (
            window["matched"],
            window["requests"],
            window["requests_estimated"],
        )
        assert (
            f"40 of {REQUESTS:,} requests with http.route = /v1/chat (2.00%)." in (summary["text"])
        )

        # The records lost (as if they never arrived): estimates whose interval holds 2,000.
        db = pipeline.mongo.get_default_database()
        await db["request_counts"].delete_many({"_id": {"$in": [r.id for r in records]}})
        route = (await estimate_from_store(store)).routes["/v1/chat"]
        low, high = route.total.interval()
        assert (True, 40 + KEPT_SUCCESSES * 50) == (route.total.estimated, route.total.value)
        assert low < REQUESTS < high
        first, last = min(r.minute for r in records), max(r.minute for r in records)
        per_minute = await totals.scope_totals(CHAT, first, last)
        assert window_total(per_minute, first, last).estimated
        [summary] = await incident_summaries(incidents, totals=totals)
        window = summary["window"]
        assert window["requests_estimated"] is True
        assert window["requests_interval95"][0] < REQUESTS < window["requests_interval95"][1]
        assert "estimated from sampled events: 95% interval" in summary["text"]
    finally:
        await store.close()
        await incidents.close()
