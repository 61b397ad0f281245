"""widelog: one wide event per request, published off the hot path, stored in idempotent batches.

from widelog import event
event.set("llm.model", "gpt-4o-mini")   # anywhere inside a request
"""

from widelog.domain.event import WideEvent
from widelog.entrypoints.middleware import WideEventMiddleware
from widelog.service.logging_service import LoggingService, current_event, event, request_scope

__all__ = [
    "LoggingService",
    "WideEvent",
    "WideEventMiddleware",
    "current_event",
    "event",
    "request_scope",
]
