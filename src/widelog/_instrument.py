"""One call to adopt widelog: `init()` for a process, `instrument(app)` for an ASGI app, `unit()`.

`init()` builds the pipeline from `WIDELOG_*` settings (or a `Settings` object) and makes it the
process's active one; `instrument(app)` also adds the middleware and ties the pipeline to the
app's lifespan (started before the app's own startup, closed after its own shutdown, without
replacing either). `unit()` gives one wide event to work that is not an HTTP request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from widelog.bootstrap import build_pipeline
from widelog.config import load_settings
from widelog.events import log_bridge
from widelog.events.logging_service import request_scope
from widelog.events.middleware import WideEventMiddleware

if TYPE_CHECKING:
    from types import TracebackType

    from widelog.bootstrap import Pipeline
    from widelog.config import Settings
    from widelog.events.event import WideEvent
    from widelog.events.log_bridge import EventLogFolder
    from widelog.events.logging_service import LoggingService
    from widelog.events.middleware import ASGIApp
    from widelog.incidents.rules import IncidentRules
    from widelog.pipeline.ports import EventPublisher
    from widelog.sampling.policy import SamplingPolicy

log = logging.getLogger("widelog")

_active: Widelog | None = None


class Widelog:
    """The handle of one process's pipeline: start it, close it, and (plain ASGI) serve `app`.

    Inside a running event loop, `await start()` / `await close()` (or `async with`). From
    synchronous code, `with widelog.init(...)` runs the pipeline on a background thread with its
    own event loop; events finalized on other threads are handed to that loop.
    """

    def __init__(self, pipeline: Pipeline, *, log_folder: EventLogFolder | None = None) -> None:
        self.pipeline = pipeline
        self.log_folder = log_folder  # folds app log records into events until close()
        self.app: ASGIApp | None = None  # the instrumented app, when `instrument` wrapped it
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, app: Any) -> Widelog:
        """Add the middleware to `app` (Starlette, FastAPI) or wrap it (`self.app`, any ASGI)."""
        if callable(getattr(app, "add_middleware", None)):
            app.add_middleware(WideEventMiddleware, logging_service=self.logging, lifecycle=self)
            self.app = app
        else:
            self.app = WideEventMiddleware(app, logging_service=self.logging, lifecycle=self)
        return self

    @property
    def logging(self) -> LoggingService:
        return self.pipeline.logging

    @property
    def started(self) -> bool:
        return self.pipeline.started

    async def start(self) -> None:
        """Start the background tasks (consumer, replayer, sweeper); a second call does nothing."""
        await self.pipeline.start()

    async def close(self) -> None:
        """Flush what is in flight and close every client; safe to call twice."""
        global _active  # noqa: PLW0603 - the process-wide handle `unit()` uses
        if _active is self:
            _active = None
        log_bridge.uninstall(self.log_folder)
        await self.pipeline.aclose()

    async def __aenter__(self) -> Widelog:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __enter__(self) -> Widelog:
        """Run the pipeline on a thread of its own, for synchronous scripts and jobs."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self.logging.publisher = _LoopPublisher(self.logging.publisher, loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="widelog-pipeline", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()


class _LoopPublisher:
    """Hands each event to the pipeline's loop: its publishers are not thread-safe."""

    def __init__(self, inner: EventPublisher, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop

    def publish(self, key: str, payload: bytes) -> None:
        self._loop.call_soon_threadsafe(self._publish, key, payload)

    def _publish(self, key: str, payload: bytes) -> None:
        try:
            self._inner.publish(key, payload)
        except Exception as exc:  # noqa: BLE001 - counted where it can be: logged, never raised
            log.warning("publish failed for request %s: %r", key, exc)

    async def flush(self, timeout: float) -> int:
        return await self._inner.flush(timeout)

    async def close(self) -> None:
        await self._inner.close()


def init(
    *,
    service: str | None = None,
    settings: Settings | None = None,
    sampling: SamplingPolicy | None = None,
    incident_rules: IncidentRules | None = None,
    publisher: EventPublisher | None = None,
) -> Widelog:
    """Build this process's pipeline and make it the one `unit()` and `instrument()` use.

    `service` names the events' `service` (else `WIDELOG_SERVICE_NAME`, else
    `unknown_service`); `publisher` replaces the configured transport (tests, custom transports).
    App log records at `WIDELOG_LOG_BRIDGE_LEVEL` and above are folded into the current event
    (`widelog.events.log_bridge`) until `close()`. Nothing connects until `start()`.
    """
    global _active  # noqa: PLW0603 - the process-wide handle, as `sentry_sdk.init` keeps one
    settings = settings if settings is not None else load_settings()
    if service is not None:
        settings = settings.model_copy(update={"service_name": service})
    pipeline = build_pipeline(
        settings, sampling=sampling, incident_rules=incident_rules, publisher=publisher
    )
    folder = log_bridge.install(
        level=settings.log_bridge_level,
        max_records=settings.log_bridge_max_records,
        redactor=pipeline.logging.redactor,
    )
    _active = Widelog(pipeline, log_folder=folder)
    return _active


def instrument(
    app: Any,
    *,
    service: str | None = None,
    settings: Settings | None = None,
    sampling: SamplingPolicy | None = None,
    incident_rules: IncidentRules | None = None,
    publisher: EventPublisher | None = None,
) -> Widelog:
    """Give every HTTP request of `app` one wide event; start and stop with the app's lifespan.

    A Starlette or FastAPI app is changed in place (`add_middleware`). Any other ASGI callable
    cannot be, so serve the returned handle's `app` instead of it.
    """
    handle = init(
        service=service,
        settings=settings,
        sampling=sampling,
        incident_rules=incident_rules,
        publisher=publisher,
    )
    return handle.attach(app)


def active() -> Widelog:
    """The handle `init()` or `instrument()` made last; a clear error if there is none."""
    if _active is None:
        raise RuntimeError(
            "widelog is not set up in this process: call widelog.init(service=...) or"
            " widelog.instrument(app, service=...) first"
        )
    return _active


class unit:  # noqa: N801 - used like a function: `with widelog.unit("nightly-export") as ev:`
    """One wide event for one unit of work outside HTTP: a job, a queued message, a script step.

    The event is current inside the block (`widelog.event.set(...)` works in code it calls),
    records an exception that leaves the block (and lets it propagate), and is finalized once,
    with `unit.name`, `unit.status` (`ok` | `error`) and `duration_ms`.
    """

    __slots__ = ("_event", "_fields", "_logging", "_name", "_scope")

    def __init__(self, name: str, **fields: Any) -> None:
        self._name = name
        self._fields = fields

    def __enter__(self) -> WideEvent:
        self._logging = active().logging
        self._event = self._logging.begin()
        self._event.set("unit.name", self._name)
        self._event.update(self._fields)
        self._scope = request_scope(self._event)
        return self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        del exc_type, tb
        self._scope.__exit__()
        event = self._event
        if exc is not None:
            event.record_exception(exc)
        event.set("unit.status", "error" if event.has_error else "ok")
        self._logging.finalize(event)

    async def __aenter__(self) -> WideEvent:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
