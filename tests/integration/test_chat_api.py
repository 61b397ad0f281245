"""The reference chat service end to end on the embedded pipeline: HTTP in, SQLite rows out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fakes import KEEP_ALL
from widelog.chat.api import create_app
from widelog.chat.bootstrap import ChatContainer, build
from widelog.config import Settings
from widelog.pipeline.ports import EventQuery
from widelog.policies import load_sampling_policy


async def stored(container: ChatContainer, response: httpx.Response) -> dict[str, Any]:
    await container.drained()
    events = await container.pipeline.store.count_events()
    assert events >= 1
    # The API answers with the request id; with no caller id it is the event id too.
    doc = await container.pipeline.store.get_event(response.headers["x-request-id"])
    assert doc is not None
    return doc


def chat(message: str, **extra: Any) -> dict[str, Any]:
    return {"session_id": "s1", "message": message, "prompt_version": "v2", **extra}


async def test_a_chat_is_answered_and_its_event_is_stored_with_llm_facts(container, client):
    response = await client.post("/v1/chat", json=chat("hello", language="ko", user_id="u1"))
    assert 200 == response.status_code
    assert response.json()["answer"].startswith("[ko] Answer")
    doc = await stored(container, response)
    assert {"method": "POST", "route": "/v1/chat", "status": 200} == doc["http"]
    assert ("s1", "u1") == (doc["session_id"], doc["user_id"])
    assert {"provider": "fake", "model": "fake-chat-1", "prompt_version": "v2"}.items() <= (
        doc["llm"].items()
    )
    assert doc["llm"]["input_tokens"] == 1
    assert doc["llm"]["latency_ms"] > 0


async def test_the_same_first_question_gets_the_same_answer_in_any_session(client):
    first = await client.post("/v1/chat", json=chat("same?"))
    second = await client.post("/v1/chat", json=chat("same?", session_id="s2"))
    assert first.json()["answer"] == second.json()["answer"]


@pytest.mark.parametrize(
    ("code", "status"),
    [("LLM_TIMEOUT", 504), ("LLM_RATE_LIMITED", 503), ("CONTENT_FILTERED", 422)],
)
async def test_an_llm_failure_maps_to_a_status_and_its_event_keeps_the_code(
    container, client, code, status
):
    response = await client.post("/v1/chat", json=chat(f"hi [fail:{code}]"))
    assert status == response.status_code
    assert code == response.json()["code"]
    doc = await stored(container, response)
    assert code == doc["error"]["code"]
    assert status == doc["http"]["status"]


async def test_an_invalid_request_is_a_422_whose_event_names_the_bad_fields(container, client):
    response = await client.post("/v1/chat", json={"message": "no session id"})
    assert 422 == response.status_code
    doc = await stored(container, response)
    assert "VALIDATION_ERROR" == doc["error"]["code"]
    assert ["session_id"] == doc["validation"]["fields"]


async def test_a_message_over_the_limit_is_a_413(container, client):
    limit = container.settings.max_message_chars
    response = await client.post("/v1/chat", json=chat("x" * (limit + 1)))
    assert 413 == response.status_code
    doc = await stored(container, response)
    assert "MESSAGE_TOO_LARGE" == doc["error"]["code"]


async def test_a_streamed_answer_is_one_event_after_the_last_chunk(container, client):
    response = await client.post("/v1/chat", json=chat("stream me", stream=True))
    assert 200 == response.status_code
    assert "stream me" in response.text
    doc = await stored(container, response)
    assert doc["chat"]["stream"] is True
    assert 1 == await container.pipeline.store.count_events()


async def test_a_retry_with_the_same_request_id_is_a_second_event_with_its_own_event_id(
    container, client
):
    """One event per HTTP request: the request id is the caller's, the event id is ours."""
    headers = {"x-request-id": "retried-after-a-reset"}
    for _ in range(2):
        assert (
            200 == (await client.post("/v1/chat", json=chat("again"), headers=headers)).status_code
        )
    await container.drained()
    events = await container.pipeline.store.find_events(
        EventQuery(request_id="retried-after-a-reset")
    )
    assert 2 == len(events)
    assert 2 == len({e["event_id"] for e in events})


async def test_health_and_readiness_report_each_dependency(client):
    assert {"status": "ok"} == (await client.get("/healthz")).json()
    ready = await client.get("/readyz")
    assert 200 == ready.status_code
    checks = ready.json()["checks"]
    assert {"store": "ok", "llm": "ok"}.items() <= checks.items()
    assert checks["queue_depth"] >= 0  # events and count records not yet stored


async def test_readiness_fails_with_the_reason_when_the_store_is_down(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store wants a directory")
    container = build(Settings(sqlite_path=blocked / "events.sqlite3"))
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        ready = await client.get("/readyz")
    assert 503 == ready.status_code
    assert ready.json()["checks"]["store"].startswith("error:")


async def test_shutdown_drains_events_still_in_the_queue(tmp_path):
    path = tmp_path / "events.sqlite3"
    settings = Settings(sqlite_path=path, fake_llm_latency_ms=0, flush_interval_s=30)
    container = build(settings, sampling=KEEP_ALL)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for i in range(30):
            await client.post("/v1/chat", json=chat(f"q{i}"))
    await container.aclose()  # well before the 30 s flush interval
    reopened = build(Settings(sqlite_path=path))
    assert 30 == await reopened.pipeline.store.count_events()
    await reopened.pipeline.store.close()


async def test_a_sampled_out_request_is_counted_but_not_stored(tmp_path):
    settings = Settings(sqlite_path=tmp_path / "e.sqlite3", fake_llm_latency_ms=0)
    container = build(settings)  # the default policy: 2% of ordinary requests
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for i in range(100):
            await client.post("/v1/chat", json=chat(f"q{i}"))
        failed = await client.post("/v1/chat", json=chat("x [fail:LLM_TIMEOUT]"))
    await container.drained()
    stats = container.pipeline.logging.stats
    assert stats.finalized == stats.published + stats.sampled_out
    assert stats.sampled_out > 90
    stored = await container.pipeline.store.get_event(failed.headers["x-request-id"])
    assert stored is not None
    assert {"kept": True, "reason": "error", "rate": 1.0}.items() <= stored["sampling"].items()
    await container.aclose()


async def test_the_debug_header_forces_a_keep_only_when_the_policy_allows_it(tmp_path):

    allowed = load_sampling_policy(None, {"WIDELOG_SAMPLING_FORCED_ALLOWED": "true"})
    container = build(Settings(sqlite_path=tmp_path / "e.sqlite3"), sampling=allowed)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        headers = {"x-widelog-force-sample": "1", "x-request-id": "debug-me"}
        await client.post("/v1/chat", json=chat("q"), headers=headers)
    await container.drained()
    [stored] = [doc async for doc in container.pipeline.store.scan_events()]
    assert ("debug-me", "forced") == (stored["request_id"], stored["sampling"]["reason"])
    await container.aclose()
