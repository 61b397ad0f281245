"""`/dashboard` of the reference service: the token, escaping, event pages, an empty history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.fakes import KEEP_ALL
from widelog.admin.auth import DASHBOARD_COOKIE
from widelog.admin.dashboard import dashboard_page
from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.config import Settings

TOKEN = "s3cret-token"
HOSTILE = '"><script>alert(1)</script>'
PAGES = ["/dashboard", "/dashboard/events/r-1", "/dashboard/events?request_id=r-1"]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        sqlite_path=tmp_path / "e.sqlite3",
        fake_llm_latency_ms=0,
        flush_interval_s=0.05,
        admin_token=SecretStr(TOKEN),
    )
    container = build(settings, sampling=KEEP_ALL)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        await client.post("/v1/chat", json={"session_id": "s", "message": "hi"}, headers=rid("r-1"))
        body = {"session_id": HOSTILE, "message": "hi", "user_id": HOSTILE}
        await client.post("/v1/chat", json=body, headers=rid("r-hostile"))
        await container.drained()
        yield client
    await container.aclose()


def rid(request_id: str) -> dict[str, str]:
    return {"x-request-id": request_id}


BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", PAGES)
async def test_without_the_token_a_page_is_a_401_sign_in_form(client, path):
    response = await client.get(path)
    assert 401 == response.status_code
    assert '<form method="post" action="/dashboard/login"' in response.text
    wrong = await client.get(path, headers={"authorization": "Bearer nope"})
    assert 401 == wrong.status_code
    forged = await client.get(path, headers={"cookie": f"{DASHBOARD_COOKIE}={TOKEN}"})
    assert 401 == forged.status_code  # the cookie holds an HMAC of the token, not the token


async def test_a_wrong_token_in_the_form_sets_no_cookie(client):
    response = await client.post("/dashboard/login", data={"token": "nope"})
    assert (401, None) == (response.status_code, response.headers.get("set-cookie"))
    assert "not the admin token" in response.text


async def test_the_sign_in_form_sets_a_cookie_that_opens_the_dashboard_only(client):
    response = await client.post("/dashboard/login", data={"token": TOKEN})
    assert (303, "/dashboard") == (response.status_code, response.headers["location"])
    cookie = response.headers["set-cookie"]
    assert TOKEN not in cookie
    for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict"):
        assert attribute in cookie
    assert 200 == (await client.get("/dashboard")).status_code  # the client kept the cookie
    assert 401 == (await client.get("/v1/events/r-1")).status_code  # not the JSON API


async def test_the_dashboard_refreshes_itself_and_shows_no_data_yet_before_any_sample(client):
    page = (await client.get("/dashboard", headers=BEARER)).text
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "Open incidents (0)" in page
    assert 5 == page.count("no data yet")
    assert TOKEN not in page


async def test_an_event_page_shows_the_whole_event_with_hostile_values_escaped(client):
    response = await client.get("/dashboard/events/r-hostile", headers=BEARER)
    assert 200 == response.status_code
    assert "<script>" not in response.text
    assert "&quot;session_id&quot;: &quot;\\&quot;&gt;&lt;script&gt;" in response.text
    assert "&quot;request_id&quot;: &quot;r-hostile&quot;" in response.text


async def test_an_unknown_request_id_is_a_404_page_that_says_why(client):
    response = await client.get(f"/dashboard/events/{HOSTILE}", headers=BEARER)
    assert 404 == response.status_code
    for reason in ("Sampled out", "Not yet stored", "Expired"):
        assert reason in response.text
    assert "<script>" not in response.text


async def test_the_search_box_leads_to_the_event_page(client):
    response = await client.get("/dashboard/events", params={"request_id": " a/b "}, headers=BEARER)
    assert (303, "/dashboard/events/a%2Fb") == (
        response.status_code,
        response.headers["location"],
    )


def test_incident_summaries_are_escaped_and_link_their_sample_requests(tmp_path):
    summary = {
        "status": "open",
        "rule": {"id": "errors"},
        "group": {"error.code": HOSTILE},
        "text": f"Message: {HOSTILE}",
        "sample_request_ids": ["r-1", HOSTILE],
    }
    page = dashboard_page(
        "/dashboard",
        settings=Settings(sqlite_path=tmp_path / "e.sqlite3"),
        incidents=[summary],
        problem=None,
        samples=[],
        interval_s=10,
    )
    assert "<script>" not in page
    assert 'href="/dashboard/events/r-1"' in page
    assert 'href="/dashboard/events/%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in page
    assert "Open incidents (1)" in page
