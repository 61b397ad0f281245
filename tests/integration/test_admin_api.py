"""The admin routes of the reference service: event lookup, and the token that guards them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.fakes import KEEP_ALL
from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.config import Settings

TOKEN = "s3cret-token"
ADMIN_PATHS = ["/v1/events", "/v1/events/r-1", "/v1/incidents", "/v1/infra", "/metrics"]


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    container = build(settings, sampling=KEEP_ALL)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for i in range(3):
            body = {"session_id": f"s{i % 2}", "message": f"q{i}"}
            await client.post("/v1/chat", json=body, headers={"x-request-id": f"r-{i}"})
        await container.drained()
        yield client
    await container.aclose()


def settings(tmp_path: Path, *, admin_token: SecretStr | None = None) -> Settings:
    return Settings(
        sqlite_path=tmp_path / "e.sqlite3",
        fake_llm_latency_ms=0,
        flush_interval_s=0.05,
        admin_token=admin_token,
    )


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings(tmp_path)):
        yield client


@pytest.fixture
async def guarded_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings(tmp_path, admin_token=SecretStr(TOKEN))):
        yield client


async def test_an_event_is_found_by_its_request_id(open_client):
    response = await open_client.get("/v1/events/r-1")
    assert 200 == response.status_code
    [event] = response.json()["events"]
    assert ("r-1", "/v1/chat", 200) == (
        event["request_id"],
        event["http"]["route"],
        event["http"]["status"],
    )


async def test_an_unknown_request_id_is_a_404_that_says_why(open_client):
    response = await open_client.get("/v1/events/nope")
    assert 404 == response.status_code
    assert "sampled out" in response.json()["detail"]


async def test_search_filters_and_orders_newest_first(open_client):
    found = (await open_client.get("/v1/events", params={"session_id": "s0"})).json()["events"]
    assert ["r-2", "r-0"] == [e["request_id"] for e in found]
    limited = (await open_client.get("/v1/events", params={"limit": 1})).json()["events"]
    assert ["r-2"] == [e["request_id"] for e in limited]
    later = await open_client.get("/v1/events", params={"since": "2999-01-01T00:00:00"})
    assert [] == later.json()["events"]
    assert 422 == (await open_client.get("/v1/events", params={"status": 42})).status_code


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_without_the_token_every_admin_path_is_401(guarded_client, path):
    assert 401 == (await guarded_client.get(path)).status_code
    wrong = {"authorization": "Bearer not-it"}
    assert 401 == (await guarded_client.get(path, headers=wrong)).status_code


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_with_the_token_every_admin_path_answers(guarded_client, path):
    response = await guarded_client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
    assert 200 == response.status_code
    assert TOKEN not in response.text


async def test_the_token_does_not_guard_the_chat_api(guarded_client):
    body = {"session_id": "s", "message": "hello"}
    assert 200 == (await guarded_client.post("/v1/chat", json=body)).status_code
    assert 200 == (await guarded_client.get("/healthz")).status_code


async def test_infra_reports_a_healthy_embedded_pipeline(open_client):
    infra = (await open_client.get("/v1/infra")).json()
    assert ("healthy", [], "memory", "sqlite") == (
        infra["state"],
        infra["problems"],
        infra["transport"],
        infra["store"],
    )
    assert 3 == infra["consumer"]["stored"]
    assert {"baseline": 3} == infra["events"]["kept_by_reason"]
    assert {} == infra["open_incidents"]


async def test_infra_says_degraded_and_why_when_the_store_is_unreachable(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store wants a directory")
    container = build(Settings(sqlite_path=blocked / "e.sqlite3"))
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        infra = (await client.get("/v1/infra")).json()
    await container.aclose()
    assert "degraded" == infra["state"]
    assert infra["problems"][0].startswith("store sqlite unreachable")
