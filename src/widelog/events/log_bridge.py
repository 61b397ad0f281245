"""The app's stdlib `logging` and the wide event, joined both ways.

- `RequestContextFilter` puts the current request's `request_id` and `trace_id` on every record a
  handler sees, so `%(request_id)s` in a format string ties a log line to its event.
- `EventLogFolder` folds records at or above its level into the current event's `logs` list, so
  a WARNING logged deep inside a handler is found in the request's event, in order, with the
  milliseconds since the event began. Bounded: `max_records` entries, then a `logs_dropped`
  count; each message cut at `MAX_MESSAGE_CHARS`. With a `Redactor`, secrets in the message and
  exception are scrubbed before the entry is folded (and counted in the event's `redacted`).

Records of widelog's own loggers (`widelog`, `widelog.*`) are never folded: a warning about
publishing an event must not grow the next one. Neither class ever raises into a logging call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

# The ContextVar itself, not `current_event()`: outside a request that builds a detached event,
# and the filter runs on every record the app logs.
from widelog.events.logging_service import _current

if TYPE_CHECKING:
    from widelog.events.event import WideEvent
    from widelog.events.redaction import Redactor

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


class EventLogFolder:
    """A log record factory that folds each record at or above `level` into the current event.

    Installed with `logging.setLogRecordFactory`, wrapping the factory before it (OpenTelemetry's
    logging instrumentation does the same), rather than as a handler on the root logger: a root
    handler would make the app's later `logging.basicConfig()` a no-op and silence
    `logging.lastResort`, so an app that never configured logging would lose its warnings.
    It sees each record that passed its logger's level, whatever handlers or propagation do
    with it after; it never lowers a level, so folding INFO records needs loggers that emit INFO.
    """

    def __init__(
        self,
        inner: Callable[..., logging.LogRecord],
        *,
        level: int | str,
        max_records: int,
        redactor: Redactor | None = None,
    ) -> None:
        self.inner = inner
        self.redactor = redactor
        self.level = logging.getLevelNamesMapping()[level] if isinstance(level, str) else level
        self.max_records = max_records
        self.enabled = True  # False once uninstalled: a factory wrapped after it still calls it
        self.failures = 0  # records that could not be folded (arguments that do not format)
        self._lock = threading.Lock()  # one event may log from several threads

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        if self.enabled and record.levelno >= self.level:
            self.observe(record)
        return record

    def observe(self, record: logging.LogRecord) -> None:
        """Fold `record` into the current event, if any; never raises into the logging call."""
        try:
            event = _current.get()
            if event is None or event.finalized or _is_widelog(record.name):
                return
            kept, redacted = entry(record, event, redactor=self.redactor)
            with self._lock:
                fold(event, kept, max_records=self.max_records, redacted=redacted)
        except Exception:  # noqa: BLE001 - losing one entry is better than failing the app's call
            self.failures += 1


def entry(
    record: logging.LogRecord, event: WideEvent, *, redactor: Redactor | None = None
) -> tuple[dict[str, Any], int]:
    """What one record keeps (level, logger, message, time since the start), and secrets scrubbed.

    The scrubber runs before messages are cut: `finalize()` scrubs the event again, but a token
    cut in half at 500 characters would no longer look like one there.
    """
    message = record.getMessage()
    exception = None
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        exception = f"{type(exc).__qualname__}: {exc}"
    redacted = 0
    if redactor is not None:
        message, redacted = redactor.scrub_text(message)
        if exception is not None:
            exception, found = redactor.scrub_text(exception)
            redacted += found
    kept = {
        "level": record.levelname,
        "logger": record.name,
        "message": _cut(message),
        "at_ms": round((time.perf_counter_ns() - event.started_ns) / 1e6, 3),
    }
    if exception is not None:
        kept["exception"] = _cut(exception)
    return kept, redacted


def fold(event: WideEvent, entry: dict[str, Any], *, max_records: int, redacted: int = 0) -> None:
    """Append `entry` to the event's `logs`, or count it in `logs_dropped` once the list is full.

    `redacted` (secrets scrubbed from the entry) is added to the event's `redacted` count.

    The entry holds only strings and a float, already safe to store, so it is appended as is
    rather than through `event.set`, which would copy the whole list on each record.
    """
    doc = event.doc
    logs = doc.setdefault("logs", [])
    if not isinstance(logs, list):
        return  # the app set `logs` itself: its field, left alone
    if len(logs) < max_records:
        logs.append(entry)
        if redacted:
            before = doc.get("redacted")
            doc["redacted"] = redacted + (before if type(before) is int else 0)
    else:
        doc["logs_dropped"] = doc.get("logs_dropped", 0) + 1


_installed: EventLogFolder | None = None


def install(
    *, level: str, max_records: int, redactor: Redactor | None = None
) -> EventLogFolder | None:
    """Make an `EventLogFolder` the record factory, replacing an earlier one; None for `off`.

    Replacing rather than adding makes a second `widelog.init()` in a process fold each record
    once, not twice.
    """
    global _installed  # noqa: PLW0603 - one folder per process, like the record factory itself
    uninstall(_installed)
    if level.upper() == "OFF":
        return None
    _installed = EventLogFolder(
        logging.getLogRecordFactory(),
        level=level.upper(),
        max_records=max_records,
        redactor=redactor,
    )
    logging.setLogRecordFactory(_installed)
    return _installed


def uninstall(folder: EventLogFolder | None) -> None:
    """Stop `folder`; take it out of the factory chain when nothing was wrapped around it since."""
    global _installed  # noqa: PLW0603 - see install()
    if folder is None:
        return
    folder.enabled = False
    if logging.getLogRecordFactory() is folder:
        logging.setLogRecordFactory(folder.inner)
    if _installed is folder:
        _installed = None


def restore(folder: EventLogFolder | None) -> None:
    """Put back a folder a later `install()` replaced (e.g. after `widelog.testing`'s capture)."""
    global _installed  # noqa: PLW0603 - see install()
    uninstall(_installed)
    if folder is not None:
        folder.enabled = True
        logging.setLogRecordFactory(folder)
    _installed = folder


def _is_widelog(name: str) -> bool:
    return name == "widelog" or name.startswith("widelog.")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"
