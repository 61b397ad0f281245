"""The middleware finalizes exactly one event per request, whatever way the request ends."""

import asyncio
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from tests.fakes import RecordingPublisher
from widelog import LoggingService, WideEventMiddleware, event


class Boom(Exception):
    code = "BOOM_CODE"


def make_app(publisher: RecordingPublisher) -> FastAPI:
    service = LoggingService(publisher=publisher, service="t", env="t", version="1", instance="i")
    app = FastAPI()
    app.add_middleware(WideEventMiddleware, logging_service=service)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        event.set("item.id", item_id)
        return {"id": item_id}

    @app.get("/sync")
    def sync_handler() -> dict[str, bool]:
        event.set("ran_in_thread", value=True)  # FastAPI runs this in its threadpool
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/boom-with-code")
    async def boom_with_code() -> None:
        event.error("UPSTREAM_BROKE", message="root cause")
        raise Boom

    @app.get("/sleep")
    async def sleep() -> None:
        await asyncio.sleep(10)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(3):
                # The event must not be published before the body is complete.
                assert [] == publisher.events
                yield f"chunk{i}\n"

        return StreamingResponse(chunks())

    return app


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def client(publisher):
    transport = httpx.ASGITransport(app=make_app(publisher), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_a_request_gets_one_event_with_the_route_template_not_the_raw_path(client, publisher):
    response = await client.get("/items/42")
    assert 200 == response.status_code
    [only] = publisher.events
    assert {"method": "GET", "route": "/items/{item_id}", "status": 200} == only["http"]
    assert 42 == only["item"]["id"]
    assert only["request_id"] == response.headers["x-request-id"]


async def test_fields_set_in_a_sync_handler_reach_the_event(client, publisher):
    await client.get("/sync")
    assert publisher.events[0]["ran_in_thread"] is True


async def test_a_caller_request_id_and_traceparent_are_kept(client, publisher):
    headers = {
        "x-request-id": "abc-123",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    await client.get("/items/1", headers=headers)
    [only] = publisher.events
    assert "abc-123" == only["request_id"]
    assert "4bf92f3577b34da6a3ce929d0e0e4736" == only["trace_id"]
    assert "00f067aa0ba902b7" == only["parent_span_id"]
    assert 16 == len(only["span_id"])


@pytest.mark.parametrize(("path", "status"), [("/items/x", 422), ("/nope", 404)])
async def test_client_errors_get_one_event_each(client, publisher, path, status):
    response = await client.get(path)
    assert status == response.status_code
    [only] = publisher.events
    assert status == only["http"]["status"]


async def test_an_unhandled_exception_is_a_500_with_its_type_and_message(client, publisher):
    response = await client.get("/boom")
    assert 500 == response.status_code
    [only] = publisher.events
    assert 500 == only["http"]["status"]
    assert {"UNHANDLED_EXCEPTION", "RuntimeError", "kaput"} <= set(only["error"].values())
    assert "test_middleware.py" in only["error"]["where"]


async def test_an_exception_keeps_the_error_code_the_handler_recorded(client, publisher):
    await client.get("/boom-with-code")
    [only] = publisher.events
    assert "UPSTREAM_BROKE" == only["error"]["code"]
    assert "Boom" == only["error"]["type"]


async def test_a_streamed_response_is_finalized_once_after_its_last_chunk(client, publisher):
    response = await client.get("/stream")
    assert "chunk0\nchunk1\nchunk2\n" == response.text
    [only] = publisher.events
    assert 200 == only["http"]["status"]


async def call_raw(app: Any, path: str, receive: Any, send: Any) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)


async def test_a_client_that_disconnects_mid_stream_gets_one_event_marked_499():
    publisher = RecordingPublisher()
    service = LoggingService(publisher=publisher, service="t", env="t", version="1", instance="i")
    app = FastAPI()
    app.add_middleware(WideEventMiddleware, logging_service=service)

    @app.get("/endless")
    async def endless() -> StreamingResponse:
        async def forever() -> Any:
            while True:
                yield "tick\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(forever())

    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        message = next(messages, None)
        if message is None:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}
        return message

    await asyncio.wait_for(call_raw(app, "/endless", receive, send), timeout=5)
    [only] = publisher.events
    assert 499 == only["http"]["status"]
    assert only["http"]["client_disconnected"] is True


async def test_a_send_that_fails_because_the_client_left_gets_one_event_marked_499(publisher):
    app = make_app(publisher)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")

    with pytest.raises(OSError, match="reset"):
        await call_raw(app, "/items/7", receive, send)
    [only] = publisher.events
    assert 499 == only["http"]["status"]
    assert "error" not in only


async def test_a_cancelled_request_is_still_finalized_once(publisher):
    app = make_app(publisher)

    request = asyncio.create_task(call_raw(app, "/sleep", receive, send))
    await asyncio.sleep(0.05)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    [only] = publisher.events
    assert 499 == only["http"]["status"]
    assert "/sleep" == only["http"]["route"]


async def test_non_http_scopes_pass_through_without_an_event(publisher):
    service = LoggingService(publisher=publisher, service="t", env="t", version="1", instance="i")
    seen = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await WideEventMiddleware(inner, logging_service=service)({"type": "lifespan"}, receive, send)
    assert ["lifespan"] == seen
    assert [] == publisher.events


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: MutableMapping[str, Any]) -> None:
    return None
