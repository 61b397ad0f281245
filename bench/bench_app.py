"""The reference chat API in the modes the latency benchmark compares; `uvicorn --factory`.

`BENCH_APP_MODE`:
- `none`: the same app without the wide-event middleware (no logging at all);
- `sync`: the specification's "before": one event per request written by an awaited MongoDB
  `insert_one` before the response completes, as the old `LoggingService.finalize()` did through
  its `LoggerPort` (every event, no sampling, no queue). Bench-only: widelog never does this;
- `widelog`: the app as `widelog serve` builds it, transport and store from `WIDELOG_*`.

    uvicorn --factory bench_app:create  (with bench/ on sys.path)
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import msgspec
from pymongo import AsyncMongoClient

from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.config import Settings
from widelog.events.event import encode
from widelog.events.ids import accept_request_id
from widelog.events.logging_service import request_scope
from widelog.pipeline.mongo_store import _to_document

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from fastapi import FastAPI

    from widelog.events.logging_service import LoggingService

    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]


class MongoLoggerPort:
    """The old `LoggerPort`: `await log(event)` inserts one document."""

    def __init__(self, url: str) -> None:
        # PyMongo's defaults (pool of 100), as a user of the old port would have had them.
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
        self._events = self._client.get_default_database()["events"]

    async def log(self, doc: dict[str, Any]) -> None:
        await self._events.insert_one(doc)

    async def close(self) -> None:
        await self._client.close()


class SynchronousLoggingMiddleware:
    """Pure ASGI: the event is written (awaited) before the last body chunk goes out."""

    def __init__(
        self, app: ASGIApp, *, logging_service: LoggingService, port: MongoLoggerPort
    ) -> None:
        self.app = app
        self.logging = logging_service
        self.port = port

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        event = self.logging.begin(
            request_id=accept_request_id(_text(headers.get(b"x-request-id")))
        )
        event.set("http.method", scope["method"])
        status = 500

        async def send_after_logging(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                route = scope.get("route")
                event.set("http.route", getattr(route, "path", None) or "unmatched")
                event.set("http.status", status)
                event.doc["duration_ms"] = (time.perf_counter_ns() - event.started_ns) / 1e6
                doc = msgspec.json.decode(encode(event.doc, max_bytes=64 * 1024))
                await self.port.log(_to_document(doc))
            await send(message)

        with request_scope(event):
            await self.app(scope, receive, send_after_logging)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def create() -> FastAPI:
    mode = os.environ.get("BENCH_APP_MODE", "widelog")
    settings = Settings()
    container = build(settings)
    if mode == "widelog":
        return create_app(container)
    app = create_app(container, instrument=False)
    if mode == "sync":
        port = MongoLoggerPort(settings.mongo_url)
        app.add_middleware(
            SynchronousLoggingMiddleware, logging_service=container.pipeline.logging, port=port
        )
    elif mode != "none":
        raise ValueError(f"BENCH_APP_MODE={mode!r}: none, sync or widelog")
    return app
