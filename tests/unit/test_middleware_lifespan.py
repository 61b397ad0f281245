"""With a lifecycle, the middleware starts and closes the pipeline with the app's lifespan.

Also for a plain ASGI app that does not speak lifespan: the middleware answers the server itself,
so the pipeline is started before the first request and flushed at shutdown.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from tests.fakes import RecordingPublisher
from widelog import LoggingService, WideEventMiddleware


class RecordingLifecycle:
    """A fake pipeline handle: records what the middleware asked of it."""

    def __init__(self, *, start_error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.start_error = start_error

    @property
    def started(self) -> bool:
        return "start" in self.calls

    async def start(self) -> None:
        self.calls.append("start")
        if self.start_error is not None:
            raise self.start_error

    async def close(self) -> None:
        self.calls.append("close")


class Server:
    """The server's half of lifespan: scripted messages in, what the app sent recorded."""

    def __init__(self) -> None:
        self.inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        self.sent: list[str] = []

    async def receive(self) -> dict[str, Any]:
        return self.inbox.pop(0)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message["type"])


async def http_only_raising(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"


async def http_only_returning(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return


async def speaks_lifespan(scope: Any, receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


def middleware(app: Any, lifecycle: RecordingLifecycle) -> WideEventMiddleware:
    service = LoggingService(
        publisher=RecordingPublisher(), service="t", env="t", version="1", instance="i"
    )
    return WideEventMiddleware(app, logging_service=service, lifecycle=lifecycle)


@pytest.mark.parametrize("app", [http_only_raising, http_only_returning, speaks_lifespan])
async def test_the_pipeline_starts_and_closes_with_the_lifespan_whether_the_app_speaks_it(app):
    lifecycle, server = RecordingLifecycle(), Server()
    await middleware(app, lifecycle)({"type": "lifespan"}, server.receive, server.send)
    assert ["start", "close"] == lifecycle.calls
    assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == server.sent


async def test_a_pipeline_that_cannot_start_fails_the_startup_of_an_app_without_lifespan():
    lifecycle, server = RecordingLifecycle(start_error=OSError("disk full")), Server()
    with pytest.raises(OSError, match="disk full"):
        await middleware(http_only_raising, lifecycle)(
            {"type": "lifespan"}, server.receive, server.send
        )
    assert ["lifespan.startup.failed"] == server.sent


async def test_an_app_that_fails_its_own_startup_is_not_answered_for():
    async def failing_startup(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("app startup broke")

    lifecycle, server = RecordingLifecycle(), Server()
    with pytest.raises(RuntimeError, match="app startup broke"):
        await middleware(failing_startup, lifecycle)(
            {"type": "lifespan"}, server.receive, server.send
        )
    assert [] == server.sent
