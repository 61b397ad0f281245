"""The app's stdlib `logging` and the wide event, joined both ways.

- `RequestContextFilter` puts the current request's `request_id` and `trace_id` on every record a
  handler sees, so `%(request_id)s` in a format string ties a log line to its event.
- `EventLogHandler` folds records at or above its level into the current event's `logs` list, so
  a WARNING logged deep inside a handler is found in the request's event, in order, with the
  milliseconds since the event began. Bounded: `max_records` entries, then a `logs_dropped`
  count; each message cut at `MAX_MESSAGE_CHARS`.

Records of widelog's own loggers (`widelog`, `widelog.*`) are never folded: a warning about
publishing an event must not grow the next one. Neither class ever raises into a logging call.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

# The ContextVar itself, not `current_event()`: outside a request that builds a detached event,
# and the filter runs on every record the app logs.
from widelog.events.logging_service import _current

if TYPE_CHECKING:
    from widelog.events.event import WideEvent

OUTSIDE_REQUEST: Final = "-"
MAX_MESSAGE_CHARS: Final = 500


class RequestContextFilter(logging.Filter):
    """Adds `request_id` and `trace_id` to each record: the current event's, else `-`.

    `-` rather than None outside a request, so a format string reads the same in both places
    (`None` looks like a bug, and a missing attribute would fail the formatting). Put it on a
    handler (`handler.addFilter(...)`): filters on a logger do not see records that propagate to
    it from child loggers. It keeps every record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        event = _current.get()
        if event is None:
            record.request_id = record.trace_id = OUTSIDE_REQUEST
        else:
            record.request_id = event.doc.get("request_id", OUTSIDE_REQUEST)
            record.trace_id = event.doc.get("trace_id", OUTSIDE_REQUEST)
        return True


class EventLogHandler(logging.Handler):
    """Folds records into the current event's `logs`; outside a request it does nothing.

    A record reaches it only if its logger lets it through first: this handler never lowers any
    logger's level, so folding INFO records also needs loggers that emit INFO.
    """

    def __init__(self, *, level: int | str = logging.WARNING, max_records: int = 20) -> None:
        super().__init__(level)
        self.max_records = max_records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = _current.get()
            if event is None or event.finalized or _is_widelog(record.name):
                return
            # A scrubber for secrets goes here, between the entry and the fold (its own issue).
            fold(event, entry(record, event), max_records=self.max_records)
        except Exception:  # noqa: BLE001 - logging's contract: report it, never raise it
            self.handleError(record)


def entry(record: logging.LogRecord, event: WideEvent) -> dict[str, Any]:
    """What one record keeps: level, logger, the formatted message (cut), time since the start."""
    kept = {
        "level": record.levelname,
        "logger": record.name,
        "message": _cut(record.getMessage()),
        "at_ms": round((time.perf_counter_ns() - event.started_ns) / 1e6, 3),
    }
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        kept["exception"] = _cut(f"{type(exc).__qualname__}: {exc}")
    return kept


def fold(event: WideEvent, entry: dict[str, Any], *, max_records: int) -> None:
    """Append `entry` to the event's `logs`, or count it in `logs_dropped` once the list is full.

    The entry holds only strings and a float, already safe to store, so it is appended as is
    rather than through `event.set`, which would copy the whole list on each record.
    """
    doc = event.doc
    logs = doc.setdefault("logs", [])
    if not isinstance(logs, list):
        return  # the app set `logs` itself: its field, left alone
    if len(logs) < max_records:
        logs.append(entry)
    else:
        doc["logs_dropped"] = doc.get("logs_dropped", 0) + 1


def install(*, level: str, max_records: int) -> EventLogHandler | None:
    """Put one `EventLogHandler` on the root logger, replacing any earlier one; None if `off`.

    Replacing rather than adding makes a second `widelog.init()` in a process fold each record
    once, not twice.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, EventLogHandler):
            root.removeHandler(handler)
    if level.upper() == "OFF":
        return None
    handler = EventLogHandler(level=level.upper(), max_records=max_records)
    root.addHandler(handler)
    return handler


def uninstall(handler: EventLogHandler | None) -> None:
    """Take `handler` off the root logger (nothing if a later `install` already replaced it)."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)


def _is_widelog(name: str) -> bool:
    return name == "widelog" or name.startswith("widelog.")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"
