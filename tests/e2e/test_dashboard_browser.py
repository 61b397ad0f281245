"""The dashboard in a real browser, served by the reference chat service under a real uvicorn.

The fake LLM times out on 30% of requests, so the default incident rules open incidents; the
test signs in with the admin token, finds them, follows a sample request id to its stored event,
sees charts with points, and leaves a screenshot under its tmp_path (and, with
`UPDATE_DOCS_SCREENSHOT=1`, in docs/dashboard.png for the README: a test run leaves no change).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps import served_chat_api

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = "browser-test-token"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (scripts/services.sh up installs it)",
    ),
]


@pytest.fixture
def chat_service(tmp_path: Path) -> Iterator[str]:
    """The reference service on a free loopback port, embedded mode, stopped by its PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIDELOG_")}
    env.update(
        {
            "WIDELOG_SQLITE_PATH": str(tmp_path / "events.sqlite3"),
            "WIDELOG_ADMIN_TOKEN": TOKEN,
            "WIDELOG_DASHBOARD_SAMPLE_S": "1",
            "WIDELOG_FLUSH_INTERVAL_S": "0.2",
            "WIDELOG_FAKE_LLM_LATENCY_MS": "5",
            "WIDELOG_FAKE_LLM_ERROR_RATES": json.dumps({"LLM_TIMEOUT": 0.3}),
            # Incidents are judged on complete minutes: with no lateness, the traffic's minute
            # is judged once wall time leaves it (within ~61 s), not 2 minutes later.
            "WIDELOG_INCIDENTS_LATENESS": "0",
        }
    )
    with served_chat_api(tmp_path, env) as served:
        yield served.base
    assert TOKEN not in served.output  # neither the form post nor anything else logs the token


def send_chat_traffic(base: str, requests: int) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(requests):
            body = {"session_id": f"s{i % 25}", "user_id": f"u{i % 40}", "message": f"q{i % 9}"}
            client.post("/v1/chat", json=body)


def wait_for_open_incidents(base: str) -> int:
    deadline = time.monotonic() + 120
    while True:
        page = httpx.get(base + "/dashboard", headers={"authorization": f"Bearer {TOKEN}"})
        heading = re.search(r"Open incidents \((\d+)\)", page.text)
        assert heading is not None, page.text
        if opened := int(heading[1]):
            return opened
        assert time.monotonic() < deadline, "no incident opened"
        time.sleep(0.5)


def test_the_dashboard_shows_incidents_events_and_charts_in_a_browser(chat_service, tmp_path):
    from playwright.sync_api import sync_playwright

    send_chat_traffic(chat_service, 300)
    opened = wait_for_open_incidents(chat_service)
    time.sleep(2.5)  # two more history samples after the traffic
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.goto(chat_service + "/dashboard")
        assert "needs the admin token" in page.content()  # no cookie yet: the sign-in form
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        page.fill("input[name=token]", TOKEN)
        page.click("button:has-text('Open the dashboard')")
        page.wait_for_selector("article.open")

        assert f"Open incidents ({opened})" in page.inner_text("body")
        assert opened == page.locator("article.open").count()
        for incident in page.locator("article.open").all_inner_texts():  # the injected timeouts
            assert "the model did not answer in time" in incident
        paths = page.locator("svg path").evaluate_all("(ps) => ps.map((p) => p.getAttribute('d'))")
        assert max(len(re.findall(r"[ML]", d)) for d in paths) >= 3  # a line through 3+ points
        requests_chart = page.locator("svg[aria-label^='Requests vs kept']").inner_html()
        assert "no data yet" not in requests_chart
        page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

        link = page.locator("article.open a.request").first
        request_id = link.inner_text()
        link.click()
        page.wait_for_selector("pre")
        [stored] = [json.loads(block) for block in page.locator("pre").all_inner_texts()]
        browser.close()

    assert request_id == stored["request_id"]
    assert "LLM_TIMEOUT" == stored["error"]["code"]
    assert [] == problems
    print(f"dashboard screenshot: {tmp_path / 'dashboard.png'}")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "dashboard.png", DOCS / "dashboard.png")
