"""Pure ASGI middleware: one wide event per HTTP request, finalized exactly once.

Pure ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs the endpoint in another task and
so hides the ContextVar the endpoint writes to. Wrapping `send` shows the status and the end of
the body, so streamed responses are finalized when their last chunk is sent; the `finally`
finalizes everything else (exceptions, cancellations, client disconnects).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from widelog.events.ids import accept_request_id, new_span_id, parse_traceparent
from widelog.events.logging_service import request_scope

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from widelog.events.event import WideEvent
    from widelog.events.logging_service import LoggingService

    Scope = MutableMapping[str, Any]
    ASGIMessage = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[ASGIMessage]]
    Send = Callable[[ASGIMessage], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("widelog")
FORCE_SAMPLE_HEADER = "x-widelog-force-sample"
CLIENT_CLOSED_REQUEST = 499  # nginx's convention: the client went away before the answer


class Lifecycle(Protocol):
    """What the middleware starts with the app's lifespan (the pipeline's handle)."""

    @property
    def started(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class WideEventMiddleware:
    """One event per request; with a `lifecycle`, it also starts and stops with the app.

    The pipeline starts when the server sends `lifespan.startup` (before the app's own startup
    runs) and closes once the app reported `lifespan.shutdown.complete` (after its own shutdown,
    so events logged there are flushed); for an app that does not speak lifespan, the middleware
    answers the server itself. A server that runs no lifespan gets the pipeline started at the
    first request, with a warning: nothing would flush it at shutdown but `close()`.
    """

    def __init__(
        self, app: ASGIApp, *, logging_service: LoggingService, lifecycle: Lifecycle | None = None
    ) -> None:
        self.app = app
        self.logging = logging_service
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.lifecycle is not None:
            await self._lifespan(scope, receive, send, self.lifecycle)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.lifecycle is not None and not self.lifecycle.started:
            await self._start_late(self.lifecycle)
        headers = _headers(scope)
        event = self.logging.begin(request_id=accept_request_id(headers.get("x-request-id")))
        event.set("http.method", scope["method"])
        if headers.get(FORCE_SAMPLE_HEADER) == "1":
            event.set("sampling.forced", value=True)  # honoured only if the policy allows it
        # With an OpenTelemetry span active, `begin()` took its ids: that span already continued
        # the caller's traceparent, and its span_id is the one the app's trace shows.
        traceparent = "" if "trace_id" in event.doc else headers.get("traceparent", "")
        if trace := parse_traceparent(traceparent):
            event.set("trace_id", trace[0])
            event.set("parent_span_id", trace[1])
            event.set("span_id", new_span_id())
        request_id_header = (b"x-request-id", event.request_id.encode())
        response = _Response()

        async def receive_watching_disconnect() -> ASGIMessage:
            message = await receive()
            if message["type"] == "http.disconnect":
                response.disconnected = True
            return message

        async def send_and_finish(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            try:
                await send(message)
            except BaseException:
                response.disconnected = True  # the server could not deliver it: the client is gone
                raise
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response.complete = True
                self._finish(event, scope, response)

        with request_scope(event):
            try:
                await self.app(scope, receive_watching_disconnect, send_and_finish)
            except Exception as exc:
                if not response.complete and not response.disconnected:
                    event.record_exception(exc)
                    response.status = 500
                raise
            except asyncio.CancelledError:
                response.disconnected = True  # the server gave up on the request (shutdown)
                raise
            finally:
                self._finish(event, scope, response)

    async def _start_late(self, lifecycle: Lifecycle) -> None:
        """Start at the first request when no lifespan did; a failure never fails the request."""
        self.lifecycle = None  # one attempt: a pipeline that cannot start is reported, not retried
        log.warning(
            "widelog: the ASGI server ran no lifespan startup; starting the pipeline at the"
            " first request. Call `await handle.close()` at shutdown to flush its events."
        )
        try:
            await lifecycle.start()
        except Exception:
            log.exception("widelog: the pipeline could not start; events are not being stored")

    async def _lifespan(
        self, scope: Scope, receive: Receive, send: Send, lifecycle: Lifecycle
    ) -> None:
        app_speaks_lifespan = False

        async def receive_starting() -> ASGIMessage:
            nonlocal app_speaks_lifespan
            app_speaks_lifespan = True
            message = await receive()
            if message["type"] == "lifespan.startup":
                await lifecycle.start()  # a failure here fails the app's startup, as it should
            return message

        async def send_closing(message: ASGIMessage) -> None:
            if message["type"] in {"lifespan.shutdown.complete", "lifespan.shutdown.failed"}:
                await lifecycle.close()
            await send(message)

        try:
            await self.app(scope, receive_starting, send_closing)
        except Exception:
            if app_speaks_lifespan:
                raise
            # The ASGI spec's way to say "no lifespan here": raise before receiving anything.
            log.debug("the app does not support lifespan; widelog answers it", exc_info=True)
        if not app_speaks_lifespan:
            await _answer_lifespan(receive, send, lifecycle)

    def _finish(self, event: WideEvent, scope: Scope, response: _Response) -> None:
        if event.finalized:
            return
        route = scope.get("route")
        event.set("http.route", getattr(route, "path", None) or "unmatched")
        if not response.complete and response.disconnected:
            event.set("http.client_disconnected", value=True)
            event.set("http.status", CLIENT_CLOSED_REQUEST)
        else:
            event.set("http.status", response.status or 500)
        self.logging.finalize(event)


async def _answer_lifespan(receive: Receive, send: Send, lifecycle: Lifecycle) -> None:
    """Speak lifespan for an app that does not, so its pipeline still starts and flushes at exit.

    A plain ASGI app often handles `http` only and returns (or raises) on a `lifespan` scope; the
    server then skips lifespan and the pipeline would start late and never be closed.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await lifecycle.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                raise
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Response:
    __slots__ = ("complete", "disconnected", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.complete = False
        self.disconnected = False


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
