"""`widelog.instrument`, `init` and `unit`: the one-call setup, driven the way servers drive it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import widelog
from widelog.config import Settings
from widelog.events import log_bridge
from widelog.testing import RecordingPublisher, capture_events, keep_all


@pytest.fixture(autouse=True)
def no_active_setup() -> Iterator[None]:
    """Each test starts as a fresh process does: nothing set up."""
    yield
    widelog._instrument._active = None
    log_bridge.uninstall(log_bridge._installed)


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[list[str]]:
    """Run the ASGI lifespan protocol as a server does; yields the messages the app sent."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[str] = []
    started = asyncio.Event()

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            started.set()

    inbox.put_nowait({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, send))
    await asyncio.wait_for(started.wait(), 10)
    try:
        yield sent
    finally:
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 10)


def starlette_app(journal: list[str]) -> Starlette:
    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        journal.append("app startup")
        yield
        widelog.event.set("never", "published")  # outside a request: a detached event
        journal.append("app shutdown")

    async def pay(request: Any) -> JSONResponse:
        widelog.event.set("invoice.id", request.path_params["invoice_id"])
        return JSONResponse({"paid": True})

    return Starlette(routes=[Route("/pay/{invoice_id}", pay, methods=["POST"])], lifespan=lifespan)


def embedded(tmp_path: Any) -> Settings:
    return Settings(sqlite_path=tmp_path / "events.sqlite3", flush_interval_s=0.05)


async def test_instrument_stores_one_event_per_request_and_keeps_the_apps_own_lifespan(tmp_path):
    journal: list[str] = []
    app = starlette_app(journal)
    handle = widelog.instrument(
        app, service="billing-api", settings=embedded(tmp_path), sampling=keep_all()
    )
    async with running(app) as sent:
        assert handle.started
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for rid in ("a", "b"):
                await client.post(f"/pay/{rid}", headers={"x-request-id": f"req-{rid}"})
    assert ["app startup", "app shutdown"] == journal
    assert "lifespan.shutdown.complete" == sent[-1]
    reopened = widelog.init(settings=embedded(tmp_path)).pipeline.store
    stored = [event async for event in reopened.scan_events()]
    await reopened.close()
    assert ["req-a", "req-b"] == sorted(e["request_id"] for e in stored)
    assert {"billing-api"} == {e["service"] for e in stored}


async def test_a_server_without_lifespan_gets_the_pipeline_started_at_the_first_request(
    tmp_path, caplog
):
    app = starlette_app([])
    handle = widelog.instrument(app, service="s", settings=embedded(tmp_path), sampling=keep_all())
    transport = httpx.ASGITransport(app=app)  # httpx runs no lifespan
    with caplog.at_level(logging.WARNING, logger="widelog"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert 200 == (await client.post("/pay/x")).status_code
            assert 200 == (await client.post("/pay/y")).status_code
    assert handle.started
    await handle.pipeline.drained()
    assert 2 == await handle.pipeline.store.count_events()
    await handle.close()
    assert 1 == sum("ran no lifespan startup" in r.getMessage() for r in caplog.records)


async def test_an_event_finalized_before_start_is_reported_once_loudly(tmp_path, caplog):
    handle = widelog.init(service="s", settings=embedded(tmp_path), sampling=keep_all())
    with caplog.at_level(logging.ERROR, logger="widelog"):
        for _ in range(3):
            with widelog.unit("job"):
                pass
    assert 1 == sum("never started" in r.getMessage() for r in caplog.records)
    async with handle:  # started late, nothing was lost: the queue held the events
        await handle.pipeline.drained()
        assert 3 == await handle.pipeline.store.count_events()


async def test_a_plain_asgi_app_is_served_through_the_handle():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    recorder = RecordingPublisher()
    handle = widelog.instrument(app, service="plain", publisher=recorder, sampling=keep_all())
    assert handle.app is not None
    assert handle.app is not app
    transport = httpx.ASGITransport(app=handle.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/anything", headers={"x-request-id": "r1"})
    assert "r1" == response.headers["x-request-id"]
    assert [("r1", 204, "plain")] == [
        (e["request_id"], e["http"]["status"], e["service"]) for e in recorder.events
    ]


def test_a_unit_records_the_exception_that_leaves_it_and_lets_it_propagate():
    def failing_import() -> None:
        with widelog.unit("import", source="s3") as ev:
            ev.set("rows", 10)
            raise KeyError("missing")

    with capture_events() as events:
        with pytest.raises(KeyError):
            failing_import()
        with widelog.unit("import", source="s3"):
            widelog.event.set("rows", 5)  # the unit's event is the current one
    failed, ok = events
    assert {"name": "import", "status": "error"} == failed["unit"]
    assert "KeyError" == failed["error"]["type"]
    assert "UNHANDLED_EXCEPTION" == failed["error"]["code"]
    assert {"name": "import", "status": "ok"} == ok["unit"]
    assert (10, 5) == (failed["rows"], ok["rows"])
    assert "s3" == ok["source"]


async def test_units_work_in_async_code():
    with capture_events() as events:
        async with widelog.unit("consume", message_id="m1"):
            await asyncio.sleep(0)
    assert ["m1"] == [e["message_id"] for e in events]
    assert events[0]["duration_ms"] >= 0


def test_a_unit_without_setup_says_what_to_call():
    with pytest.raises(RuntimeError, match=r"widelog\.init\(service=\.\.\.\)"):
        widelog.unit("job").__enter__()


def test_capture_events_restores_the_setup_it_replaced():
    outer = widelog.init(service="outer", publisher=RecordingPublisher())
    with capture_events():
        assert outer is not widelog.active()
    assert outer is widelog.active()


def test_the_service_argument_wins_over_the_default_name():
    assert "unknown_service" == Settings().service_name
    handle = widelog.init(service="billing-api", publisher=RecordingPublisher())
    assert "billing-api" == handle.pipeline.settings.service_name


def test_capture_events_leaves_the_log_record_factory_as_it_found_it():
    before = logging.getLogRecordFactory()
    with capture_events():
        assert before is not logging.getLogRecordFactory()  # the bridge folds logs meanwhile
    assert before is logging.getLogRecordFactory()
