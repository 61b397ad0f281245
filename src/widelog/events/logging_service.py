"""LoggingService: opens one wide event per request and publishes it once, off the hot path."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from widelog.events.event import WideEvent, encode, is_error
from widelog.events.ids import new_event_id
from widelog.events.otel import active_span_ids
from widelog.histogram import Histogram
from widelog.sampling.counts import MAX_RECORD_BYTES, RequestCounter, new_emitter_id

if TYPE_CHECKING:
    from widelog.events.redaction import Redactor
    from widelog.pipeline.ports import EventPublisher
    from widelog.sampling.policy import TailSampler

log = logging.getLogger("widelog")

_current: contextvars.ContextVar[WideEvent | None] = contextvars.ContextVar(
    "widelog_event", default=None
)


@dataclass(slots=True)
class LoggingStats:
    """Counted on every finalized event, before anything can drop it."""

    finalized: int = 0
    errors: int = 0
    published: int = 0
    sampled_out: int = 0
    publish_failed: int = 0
    finalize_failed: int = 0
    count_records: int = 0  # count records handed to the publisher (re-sends included)
    count_records_failed: int = 0  # refused by the publisher: re-sent with the next change


class LoggingService:
    """Builds events, samples them and hands the kept ones to an `EventPublisher`.

    Sampling is tail-aware: it happens at the end, when status, duration and errors are known.

    `finalize()` is called at the end of every request, so it only encodes and enqueues: it never
    waits on I/O and never raises into the request (a failure is counted and logged instead).
    A `redactor` scrubs secrets from each kept event before it is encoded, so no transport,
    spool, dead letter or store ever holds them; dropped events are never published, so never
    scrubbed.
    """

    def __init__(
        self,
        *,
        publisher: EventPublisher,
        service: str,
        env: str,
        version: str,
        instance: str,
        max_event_bytes: int = 64 * 1024,
        sampler: TailSampler | None = None,
        redactor: Redactor | None = None,
        count_requests: bool = True,
    ) -> None:
        self.publisher = publisher
        self.sampler = sampler
        self.redactor = redactor
        # None: nobody manages a pipeline for this service (a test, a custom setup). False: the
        # pipeline was built but not started, so events may wait in a queue nobody drains.
        self.pipeline_started: bool | None = None
        # `emitter` names this process (and start) in its events and its count records: exact
        # totals are used per emitter-minute only where that emitter's record was received.
        self.emitter = new_emitter_id(instance)
        self._static = {
            "service": service,
            "env": env,
            "version": version,
            "instance": instance,
            "emitter": self.emitter,
        }
        # Every request, before sampling, per (route, status class, minute): `publish_counts`.
        self.counter = (
            RequestCounter(emitter=self.emitter, instance=instance, service=service)
            if count_requests
            else None
        )
        self._max_event_bytes = max_event_bytes
        self.stats = LoggingStats()
        self.durations = Histogram()  # every finalized event's, before sampling

    def begin(self, *, request_id: str | None = None) -> WideEvent:
        event_id = new_event_id()
        doc: dict[str, Any] = {
            "event_id": event_id,
            "request_id": request_id or event_id,
            "timestamp": dt.datetime.now(dt.UTC),
            **self._static,
        }
        if span := active_span_ids():  # the app's trace wins over any id widelog would make
            doc.update(span)
        return WideEvent(doc, started_ns=time.perf_counter_ns())

    def finalize(self, event: WideEvent) -> None:
        """Publish the event once; later calls for the same event do nothing."""
        if event.finalized:
            return
        event.finalized = True
        if self.pipeline_started is False:
            self._warn_not_started()
        stats = self.stats
        try:
            doc = event.doc
            duration = doc.get("duration_ms")
            if duration is None and "duration_ms" not in doc:
                duration = doc["duration_ms"] = (time.perf_counter_ns() - event.started_ns) / 1e6
            stats.finalized += 1
            self.durations.observe(duration)
            if is_error(doc):
                stats.errors += 1
            if self.counter is not None:
                self.counter.count(doc)
            sampler = self.sampler
            if sampler is not None:
                sampling = doc.get("sampling")
                forced = sampling is not None and _forced(sampling)
                decision = sampler.decide(doc, forced=forced)
                if not decision.keep:
                    stats.sampled_out += 1
                    return
                sampler.apply(doc, decision)
            if self.redactor is not None:
                self.redactor.redact(doc)
            payload = encode(doc, max_bytes=self._max_event_bytes)
            key = doc["request_id"]
            if type(key) is not str:
                key = str(key)
        except Exception as exc:  # noqa: BLE001 - logged with its stack by _log_finalize_failure
            # The request has its answer already; losing its log line must not cost it more.
            stats.finalize_failed += 1
            self._log_finalize_failure(event, exc)
            return
        try:
            self.publisher.publish(key, payload)
        except Exception as exc:  # noqa: BLE001 - a transport failure is counted, never raised
            stats.publish_failed += 1
            log.warning("publish failed for request %s: %r", key, exc)
        else:
            stats.published += 1

    def publish_counts(self, now: dt.datetime | None = None, *, final: bool = False) -> int:
        """Publish the count records that are due (`final`: all changed ones, at shutdown).

        Through the same publisher as the events, so the same spool and replay; a record that
        fails to publish is counted in `stats.count_records_failed` (not among the events) and
        re-sent with the next change of its minute (a lost record makes readers estimate that
        minute, never miscount it).
        """
        if self.counter is None:
            return 0
        sent = 0
        for record in self.counter.due(now or dt.datetime.now(dt.UTC), final=final):
            try:
                payload = encode(record.to_doc(), max_bytes=MAX_RECORD_BYTES)
                self.publisher.publish(record.id, payload)
            except Exception as exc:  # noqa: BLE001 - like an event: counted, never raised
                self.stats.count_records_failed += 1
                log.warning("publish failed for count record %s: %r", record.id, exc)
            else:
                sent += 1
        self.stats.count_records += sent
        return sent

    def _log_finalize_failure(self, event: WideEvent, exc: Exception) -> None:
        """Log the failure with its stack but a scrubbed message: the message may quote a secret.

        An exception's message often quotes the value it choked on (a `UnicodeEncodeError`
        quotes the whole string), and the event may not be scrubbed yet. The stack holds only
        file names and source lines.
        """
        request_id = str(event.doc.get("request_id"))
        message = f"{type(exc).__qualname__}: {exc}"
        if self.redactor is not None:
            request_id = self.redactor.scrub_text(request_id)[0]
            message = self.redactor.scrub_text(message)[0]
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.error("finalize failed for request %s: %s\n%s", request_id, message[:500], stack)

    def _warn_not_started(self) -> None:
        self.pipeline_started = None  # once
        log.error(
            "widelog: an event was finalized but the pipeline was never started, so it may never"
            " be stored: `await handle.start()` (or `async with` / `with` the handle, or let the"
            " ASGI server run the app's lifespan)"
        )


def _forced(sampling: object) -> bool:
    """Whether the caller asked for this event to be kept (`sampling.forced`, a debug header)."""
    return isinstance(sampling, dict) and sampling.get("forced") is True


def current_event() -> WideEvent:
    """The event of the request this code runs in, or a detached one that is never published."""
    event = _current.get()
    if event is None:
        return WideEvent({"detached": True}, started_ns=time.perf_counter_ns())
    return event


class request_scope:  # noqa: N801 - used like a function: `with request_scope(event):`
    """Make `event` the current one for the code (and tasks it starts) inside the block."""

    __slots__ = ("_event", "_token")

    def __init__(self, event: WideEvent) -> None:
        self._event = event

    def __enter__(self) -> WideEvent:
        self._token = _current.set(self._event)
        return self._event

    def __exit__(self, *_exc: object) -> None:
        _current.reset(self._token)


class _CurrentEventProxy:
    """`from widelog import event` then `event.set(...)` anywhere inside a request."""

    __slots__ = ()

    def set(self, key: str, value: Any) -> None:
        current_event().set(key, value)

    def update(self, fields: dict[str, Any]) -> None:
        current_event().update(fields)

    def get(self, key: str, default: Any = None) -> Any:
        return current_event().get(key, default)

    def error(self, code: str, *, message: str | None = None, kind: str | None = None) -> None:
        current_event().error(code, message=message, kind=kind)


event = _CurrentEventProxy()
