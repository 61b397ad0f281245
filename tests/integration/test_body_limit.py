"""A request body over WIDELOG_MAX_BODY_BYTES gets a 413 before it is parsed, and its event says so.

In-process through the real chat app (httpx's ASGI transport), and once under a real uvicorn
with a 10 MB body of which only the start is ever sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps import served_chat_api
from tests.fakes import KEEP_ALL
from widelog.chat.api import create_app
from widelog.chat.bootstrap import ChatContainer, build
from widelog.config import Settings
from widelog.pipeline.ports import EventQuery
from widelog.pipeline.sqlite_store import SQLiteEventStore

LIMIT = 4096


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[tuple[ChatContainer, httpx.AsyncClient]]:
    settings = Settings(
        sqlite_path=tmp_path / "events.sqlite3",
        fake_llm_latency_ms=1,
        flush_interval_s=0.05,
        max_body_bytes=LIMIT,
    )
    container = build(settings, sampling=KEEP_ALL)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield container, client
    await container.aclose()


async def stored_event(container: ChatContainer, request_id: str) -> dict[str, Any]:
    await container.drained()
    found = await container.pipeline.store.get_event(request_id)
    assert found is not None
    return found


def body(size: int) -> bytes:
    return json.dumps({"session_id": "s1", "message": "x" * size}).encode()


async def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs(limited):
    container, client = limited
    response = await client.post(
        "/v1/chat", content=body(LIMIT), headers={"content-type": "application/json"}
    )
    assert 413 == response.status_code
    assert "BODY_TOO_LARGE" == response.json()["code"]
    doc = await stored_event(container, response.headers["x-request-id"])
    assert "BODY_TOO_LARGE" == doc["error"]["code"]
    assert 413 == doc["http"]["status"]
    assert "llm" not in doc  # the endpoint never ran


async def test_a_streamed_body_crossing_the_limit_is_refused_where_it_crosses(limited):
    container, client = limited
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 1 MB in all, without a Content-Length
            sent += 1024
            yield b"x" * 1024

    response = await client.post("/v1/chat", content=chunks())
    assert 413 == response.status_code
    doc = await stored_event(container, response.headers["x-request-id"])
    assert "BODY_TOO_LARGE" == doc["error"]["code"]
    assert 413 == doc["http"]["status"]
    assert "llm" not in doc


async def test_a_body_under_the_limit_is_answered_as_before(limited):
    container, client = limited
    response = await client.post("/v1/chat", json={"session_id": "s1", "message": "hello"})
    assert 200 == response.status_code
    doc = await stored_event(container, response.headers["x-request-id"])
    assert "error" not in doc


@pytest.mark.slow
def test_uvicorn_answers_413_to_a_10_mb_body_long_before_it_is_sent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIDELOG_")}
    env["WIDELOG_SQLITE_PATH"] = str(tmp_path / "events.sqlite3")
    env["WIDELOG_FLUSH_INTERVAL_S"] = "0.1"
    with served_chat_api(tmp_path, env) as served:
        size = 10 * 1024 * 1024
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/chat HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n"
                b"x-request-id: big-body-1\r\ncontent-length: " + str(size).encode() + b"\r\n\r\n"
            )
            conn.sendall(b"x" * 65536)  # the rest is never sent
            answer = ""
            while chunk := conn.recv(65536):  # the server closes: `connection: close`
                answer += chunk.decode()
        assert answer.startswith("HTTP/1.1 413"), answer
        assert "BODY_TOO_LARGE" in answer
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    [doc] = asyncio.run(store.find_events(EventQuery(request_id="big-body-1")))
    asyncio.run(store.close())
    assert "BODY_TOO_LARGE" == doc["error"]["code"]
    assert 413 == doc["http"]["status"]
