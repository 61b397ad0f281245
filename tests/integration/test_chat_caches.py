"""The chat API's cache controls and the cache facts on stored events (embedded caches)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from widelog.chat.bootstrap import ChatContainer


def chat(message: str, session: str, **extra: Any) -> dict[str, Any]:
    return {"session_id": session, "message": message, "prompt_version": "v3", **extra}


async def stored_cache_fields(container: ChatContainer, response: httpx.Response) -> dict[str, Any]:
    await container.drained()
    doc = await container.pipeline.store.get_event(response.headers["x-request-id"])
    assert doc is not None
    return dict(doc["cache"])


async def test_a_repeated_first_question_is_answered_from_the_cache(container, client):
    first = await client.post("/v1/chat", json=chat("What is the refund policy?", "a"))
    second = await client.post("/v1/chat", json=chat("what is the REFUND policy?", "b"))
    assert (False, True) == (first.json()["cached"], second.json()["cached"])
    assert first.json()["answer"] == second.json()["answer"]
    fields = await stored_cache_fields(container, second)
    assert ("miss", "hit") == (fields["session"], fields["semantic"])


@pytest.mark.parametrize(
    ("options", "headers"),
    [({"cache": {"no_cache": True}}, {}), ({}, {"cache-control": "no-cache"})],
)
async def test_no_cache_in_the_body_or_the_header_skips_the_lookup(
    container, client, options, headers
):
    await client.post("/v1/chat", json=chat("hours?", "a"))
    response = await client.post("/v1/chat", json=chat("hours?", "b", **options), headers=headers)
    assert response.json()["cached"] is False
    assert "bypass" == (await stored_cache_fields(container, response))["semantic"]


@pytest.mark.parametrize(
    ("options", "headers"),
    [({"cache": {"no_store": True}}, {}), ({}, {"cache-control": "max-age=0, No-Store"})],
)
async def test_no_store_in_the_body_or_the_header_keeps_the_answer_out(
    container, client, options, headers
):
    first = await client.post("/v1/chat", json=chat("ship?", "a", **options), headers=headers)
    second = await client.post("/v1/chat", json=chat("ship?", "b"))
    assert "skipped" == (await stored_cache_fields(container, first))["semantic_write"]
    assert second.json()["cached"] is False


async def test_cache_options_are_validated(container, client):
    bad = [{"ttl_s": 0}, {"ttl_s": 10**9}, {"no_cahce": True}]
    statuses = [
        (await client.post("/v1/chat", json=chat("q", "a", cache=options))).status_code
        for options in bad
    ]
    assert [422, 422, 422] == statuses


async def test_every_chat_event_records_both_caches_with_their_lookup_time(container, client):
    response = await client.post("/v1/chat", json=chat("hello", "a"))
    fields = await stored_cache_fields(container, response)
    assert {"session", "session_ms", "semantic", "semantic_ms"} <= set(fields)


async def test_an_oversized_message_bypasses_both_caches(container, client):
    too_long = "x" * (container.settings.max_message_chars + 1)
    response = await client.post("/v1/chat", json=chat(too_long, "a"))
    fields = await stored_cache_fields(container, response)
    assert (413, "bypass", "bypass") == (
        response.status_code,
        fields["session"],
        fields["semantic"],
    )


async def test_readiness_reports_the_cache(client):
    ready = await client.get("/readyz")
    assert "ok" == ready.json()["checks"]["cache"]
