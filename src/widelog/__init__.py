"""widelog: one wide event per request, published off the hot path, stored in idempotent batches.

    import widelog
    handle = widelog.instrument(app, service="billing-api")  # any ASGI app
    widelog.event.set("llm.model", "gpt-4o-mini")            # anywhere inside a request
    with widelog.unit("nightly-export") as ev:                # work outside HTTP
        ev.set("rows", 1200)

Importing widelog loads no driver: Kafka, Redis and MongoDB clients are imported by the builder
that needs them (`pip install 'widelog[kafka]'` and so on).
"""

from widelog._instrument import Widelog, active, init, instrument, unit
from widelog.config import Settings, SettingsError
from widelog.events.event import WideEvent
from widelog.events.logging_service import LoggingService, current_event, event, request_scope
from widelog.events.middleware import WideEventMiddleware

__all__ = [
    "LoggingService",
    "Settings",
    "SettingsError",
    "WideEvent",
    "WideEventMiddleware",
    "Widelog",
    "active",
    "current_event",
    "event",
    "init",
    "instrument",
    "request_scope",
    "unit",
]
