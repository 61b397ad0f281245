"""Incident notifications on real parts: events through Redis Streams into `widelog worker`
processes storing in FerretDB, an incident opened and resolved by those events, and a real HTTP
receiver on loopback that fails, hangs, then recovers.

The events are synthetic, with chosen times (a burst five minutes ago, one more error two
minutes ago), so a 1-minute window and quiet period open and resolve the incident at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps import running_api
from tests.incident_traffic import request, spread
from tests.live import free_port
from tests.pipelines import Pipeline
from tests.webhook_receiver import Receiver, receiving
from widelog.bootstrap import build_mq_publisher, build_spool_fallback
from widelog.config import Settings
from widelog.incidents.notify.webhook import SIGNATURE_HEADER, verify

SECRET = "live-test-secret"
MINUTE = dt.timedelta(minutes=1)
NOW = dt.datetime.now(dt.UTC)  # the events' times are set back from here
RULES = """
[[rules]]
id = "errors"
match = {{ error = true }}
window = "1m"
quiet = "{quiet}"
min_count = 5
min_requests = 5
"""


def live(test: Any) -> Any:
    """Needs Redis and FerretDB, and runs `widelog worker` processes (slow)."""
    return pytest.mark.redis(pytest.mark.mongo(pytest.mark.slow(test)))


def notifying(pipeline: Pipeline, receiver: Receiver, tmp_path: Path, *, quiet: str) -> None:
    """Point the pipeline's workers at the receiver, with fast retries and small rules."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(quiet=quiet))
    pipeline.env |= {
        "WIDELOG_INCIDENTS_RULES": str(rules),
        "WIDELOG_INCIDENTS_LATENESS": "5",
        "WIDELOG_INCIDENTS_WEBHOOK_URL": receiver.url,
        "WIDELOG_INCIDENTS_WEBHOOK_SECRET": SECRET,
        "WIDELOG_INCIDENTS_WEBHOOK_TIMEOUT_S": "1",
        "WIDELOG_INCIDENTS_WEBHOOK_BACKOFF_S": "0.2",
        "WIDELOG_INCIDENTS_WEBHOOK_BACKOFF_MAX_S": "1",
        "WIDELOG_INCIDENTS_NOTIFY_POLL_S": "0.2",
        "WIDELOG_ADMIN_BASE_URL": "http://admin.test",
        "WIDELOG_SERVICE_NAME": "chat-live",
    }


def burst(prefix: str, start: dt.datetime, *, errors: int, successes: int) -> list[dict[str, Any]]:
    times = spread(start, 20, errors + successes)
    return [
        request(at, code="LLM_TIMEOUT" if i < errors else None, request_id=f"{prefix}-{i}")
        for i, at in enumerate(times)
    ]


async def publish(pipeline: Pipeline, events: list[dict[str, Any]]) -> set[str]:
    """Through the real Redis Streams publisher, as an API instance would; the request ids."""
    settings = pipeline.settings()
    publisher = build_mq_publisher(settings, build_spool_fallback(settings))
    try:
        for event in events:
            publisher.publish(event["request_id"], json.dumps(event).encode())
        await publisher.flush(10)
    finally:
        await publisher.close()
    return {e["request_id"] for e in events}


async def wait_until(condition: Any, *, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def outbox_keys(pipeline: Pipeline) -> set[str]:
    outbox = pipeline.mongo.get_default_database()["incident_outbox"]
    return {str(doc["_id"]) async for doc in outbox.find({}, {"_id": 1})}


async def wait_for_outbox(pipeline: Pipeline, suffix: str, *, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (found := [k for k in await outbox_keys(pipeline) if k.endswith(suffix)]):
        assert time.monotonic() < deadline, f"no {suffix} message enqueued"
        await asyncio.sleep(0.2)
    [key] = found
    return key


async def open_incident(
    pipeline: Pipeline, receiver: Receiver, tmp_path: Path, *, workers: int, quiet: str
) -> tuple[set[str], str]:
    """Workers notifying the receiver, a burst of timeouts five minutes ago that they turn into
    an incident, and successes three minutes later, whose event time completes the burst's
    minutes (and `quiet`, if it is short): the events' request ids and the open message's key."""
    notifying(pipeline, receiver, tmp_path, quiet=quiet)
    for _ in range(workers):
        pipeline.start_worker()
    sent = await publish(pipeline, burst("a", NOW - 5 * MINUTE, errors=30, successes=30))
    sent |= await publish(pipeline, burst("b", NOW - 2 * MINUTE, errors=0, successes=10))
    return sent, await wait_for_outbox(pipeline, ":1:open")


@live
async def test_open_and_resolve_reach_the_receiver_after_500s_once_each_across_two_workers(
    redis_pipeline, tmp_path
):
    pipeline = redis_pipeline
    with receiving("fail") as receiver:
        sent, open_key = await open_incident(pipeline, receiver, tmp_path, workers=2, quiet="1m")
        resolve_key = await wait_for_outbox(pipeline, ":1:resolve")
        await receiver.wait_for_attempts(3)  # the open, answered 500 and retried

        await pipeline.wait_until_stored(sent, timeout=30)  # stored while the receiver fails
        receiver.mode = "ok"
        await receiver.wait_for({open_key, resolve_key})
        await asyncio.sleep(1.5)  # a duplicate delivery would show up now

    delivered = receiver.delivered()
    assert [open_key, resolve_key] == [r.key for r in delivered]  # in order, each once
    assert {open_key: len(receiver.requests) - 2} == Counter(
        r.key for r in receiver.requests if r.status == 500
    )
    assert all(
        verify(SECRET.encode(), r.body, r.headers[SIGNATURE_HEADER.lower()])
        for r in receiver.requests
    )
    opened, resolved = (r.payload for r in delivered)
    incident_id = open_key.split(":")[0]
    assert ("4", "firing", "resolved") == (opened["version"], opened["status"], resolved["status"])
    assert {
        "alertname": "errors",
        "error_code": "LLM_TIMEOUT",
        "http_route": "/v1/chat",
        "service": "chat-live",
    } == opened["alerts"][0]["labels"]
    assert f"http://admin.test/v1/incidents/{incident_id}" == opened["alerts"][0]["generatorURL"]
    assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert {open_key, resolve_key} == await outbox_keys(pipeline)


@live
async def test_a_hanging_receiver_never_delays_storing_and_gets_the_message_once_it_answers(
    redis_pipeline, tmp_path
):
    pipeline = redis_pipeline
    with receiving("hang") as receiver:
        port = free_port()
        pipeline.env["WIDELOG_WORKER_HTTP_PORT"] = str(port)
        _, open_key = await open_incident(pipeline, receiver, tmp_path, workers=1, quiet="30m")
        await receiver.wait_for_attempts(1)

        took = []
        for wave in range(3):  # while every delivery attempt hangs until it times out
            started = time.monotonic()
            ids = await publish(
                pipeline, burst(f"w{wave}", NOW - 4 * MINUTE, errors=0, successes=50)
            )
            await pipeline.wait_until_stored(ids, timeout=20)
            took.append(time.monotonic() - started)
        hung = len(receiver.requests)
        receiver.mode = "ok"
        await receiver.wait_for({open_key})
        await asyncio.sleep(0.5)  # the sender's pass after the delivery updates `pending`
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text

    assert hung >= 2, "the receiver was not retried while it hung"
    assert [open_key] == [r.key for r in receiver.delivered()]
    assert "widelog_notifications_sent_total 1.0" in metrics
    failed = len(receiver.requests) - 1  # every attempt is one request; the last one went
    assert f"widelog_notifications_failed_total {failed}.0" in metrics
    assert "widelog_notifications_pending 0.0" in metrics
    # Each wave includes wait_until_stored's 1 s check for duplicates; a consumer waiting on
    # the receiver would never finish a wave.
    assert all(t < 15 for t in took), took


async def test_the_embedded_pipeline_notifies_and_reports_it_on_metrics_and_infra(tmp_path):
    with receiving() as receiver:
        settings = Settings(
            sqlite_path=tmp_path / "events.sqlite3",
            fake_llm_latency_ms=0,
            flush_interval_s=0.05,
            incidents_webhook_url=receiver.url,
            incidents_notify_poll_s=0.2,
        )
        async with running_api(settings) as (client, container):
            for i in range(40):
                message = "[fail:LLM_TIMEOUT] hi" if i % 3 == 0 else "hi"
                await client.post("/v1/chat", json={"session_id": "s", "message": message})
            await container.pipeline.drained()
            assert container.pipeline.aggregator is not None
            await container.pipeline.aggregator.settle()  # judged on complete minutes only
            await wait_until(lambda: bool(receiver.delivered()))
            assert 1 == len({r.key for r in receiver.requests})
            metrics = (await client.get("/metrics")).text
            infra = (await client.get("/v1/infra")).json()

    assert "widelog_notifications_sent_total 1.0" in metrics
    assert "widelog_notifications_pending 0.0" in metrics
    assert 1 == infra["notifications"]["outbox"]["delivered"]
    assert 0 == infra["notifications"]["outbox"]["pending"]
    assert "http://127.0.0.1" in infra["notifications"]["target"]
