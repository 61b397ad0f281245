"""Exact request counts before sampling: per (route, status class, minute), per emitting process.

Sampling keeps a few percent of ordinary requests, so totals re-weighted from stored events are
estimates. Each `LoggingService` therefore also counts **every** request it finalizes, before the
sampler drops any, and publishes one compact **count record** per minute through the same
publisher (so the same spool and replay) as its events:

    {"record": "request_counts", "id": "<emitter>|<minute>", "emitter": "...", "minute": "...",
     "version": <requests so far>, "counts": [{"route": "/v1/chat", "status_class": "2xx",
     "requests": 1234}, ...]}

A record is **cumulative** for its (emitter, minute): a request that finishes after its minute's
record went out (a long one; the minute is the event's start, like `timestamp`) marks the minute
again and the next flush re-sends the whole minute. Stores keep one record per `id` and replace it
only with a higher `version`, so a re-sent, duplicated or replayed-out-of-order record replaces,
never adds. A lost record loses nothing either: readers use exact counts for an emitter-minute
only when they hold its record, and re-weighted kept events otherwise (`widelog.sampling.totals`).

The emitter id is `<instance>/<pid>-<nonce>`: unique per process even when several workers share
a host name (`Settings.instance` defaults to it), so two processes never replace each other's
record. Every event carries it as `emitter`.

The hot path (`count`) is a comparison of the event's minute with the current one and a dict
increment; `bench/count_hot_path.py` measures it.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from widelog.sampling.policy import MAX_ROUTES, OTHER_ROUTES, UNKNOWN_ROUTE

RECORD_KIND: Final = "request_counts"
"""The discriminator: a payload whose `record` is this is a count record, not an event."""

MAX_RECORD_BYTES: Final = 900 * 1024  # under `decode`'s 1 MiB; 4,096 routes x 5 classes fit
_MINUTE: Final = dt.timedelta(minutes=1)
_CLASSES: Final = ("unknown", "1xx", "2xx", "3xx", "4xx", "5xx")
_MAX_KEYS: Final = MAX_ROUTES * 2  # (route, class) pairs per minute; more become `<other>`


def new_emitter_id(instance: str) -> str:
    """`<instance>/<pid>-<6 hex>`: one per process and start, whatever the instance name."""
    return f"{instance}/{os.getpid()}-{secrets.token_hex(3)}"


def status_class(status: object) -> str:
    """`2xx` … `5xx`; `unknown` for a missing or odd status (like the sampler's status 0)."""
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return _CLASSES[status // 100]
    return "unknown"


def minute_of(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


def record_id(emitter: str, minute: dt.datetime) -> str:
    return f"{emitter}|{int(minute.timestamp()) // 60}"


@dataclass(slots=True)
class CountRecord:
    """One emitter's exact requests in one minute, by (route, status class)."""

    emitter: str
    minute: dt.datetime  # aware UTC, whole minute
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    instance: str = ""
    service: str = ""

    @property
    def id(self) -> str:
        return record_id(self.emitter, self.minute)

    @property
    def version(self) -> int:
        """Requests counted so far: only grows, so the newest copy of a record has the highest."""
        return sum(self.counts.values())

    def requests(self, route: str | None = None) -> int:
        """Requests of `route` (every route if None), all status classes."""
        return sum(n for (r, _), n in self.counts.items() if route is None or r == route)

    def to_doc(self) -> dict[str, Any]:
        return {
            "record": RECORD_KIND,
            "id": self.id,
            "emitter": self.emitter,
            "instance": self.instance,
            "service": self.service,
            "minute": self.minute.isoformat(),
            "version": self.version,
            "counts": [
                {"route": route, "status_class": cls, "requests": n}
                for (route, cls), n in sorted(self.counts.items())
            ],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CountRecord:
        """The record in `doc`; `ValueError` naming what is wrong (the consumer dead-letters it)."""
        emitter, minute = doc.get("emitter"), doc.get("minute")
        if not isinstance(emitter, str) or not emitter:
            raise ValueError("count record without an emitter")
        moment = minute if isinstance(minute, dt.datetime) else None
        if isinstance(minute, str):
            try:
                moment = dt.datetime.fromisoformat(minute)
            except ValueError:
                moment = None
        if moment is None:
            raise ValueError(f"count record with no valid minute: {minute!r}")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        rows = doc.get("counts")
        if not isinstance(rows, list):
            raise ValueError("count record without a list of counts")  # noqa: TRY004
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            n = row.get("requests") if isinstance(row, Mapping) else None
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"count record with a bad count row: {row!r}")
            key = (str(row.get("route")), str(row.get("status_class")))
            counts[key] = counts.get(key, 0) + n
        return cls(
            emitter=emitter,
            minute=minute_of(moment.astimezone(dt.UTC)),
            counts=counts,
            instance=str(doc.get("instance", "")),
            service=str(doc.get("service", "")),
        )


def latest_records(records: Iterable[CountRecord]) -> list[CountRecord]:
    """One record per id, the highest version: what a store keeps of duplicated copies."""
    latest: dict[str, CountRecord] = {}
    for record in records:
        kept = latest.get(record.id)
        if kept is None or record.version > kept.version:
            latest[record.id] = record
    return list(latest.values())


def is_count_record(doc: Mapping[str, Any]) -> bool:
    return doc.get("record") == RECORD_KIND


class RequestCounter:
    """Counts every finalized request per minute of its `timestamp`; hands out due records.

    Not thread-safe, like the sampler: one per event loop (the request path is single-threaded).
    Minutes are kept `keep_minutes` after they close, so a request that finishes late (its
    minute is when it started) is still counted and its minute re-sent; one later than that is
    counted in `late_dropped` only.
    """

    __slots__ = (
        "_current",
        "_end",
        "_minutes",
        "_sent",
        "_start",
        "emitter",
        "grace",
        "instance",
        "keep_minutes",
        "late_dropped",
        "published",
        "service",
    )

    def __init__(
        self,
        *,
        emitter: str,
        instance: str = "",
        service: str = "",
        grace: dt.timedelta = dt.timedelta(seconds=10),
        keep_minutes: int = 60,
    ) -> None:
        self.emitter = emitter
        self.instance = instance
        self.service = service
        self.grace = grace  # after a minute ends, wait this long for its stragglers before sending
        self.keep_minutes = keep_minutes
        # minute -> {route (2xx) or (route, class): requests}
        self._minutes: dict[dt.datetime, dict[str | tuple[str, int], int]] = {}
        self._sent: dict[dt.datetime, int] = {}  # minute -> version last handed out
        self._start = self._end = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._current: dict[str | tuple[str, int], int] = {}
        self.late_dropped = 0
        self.published = 0

    def count(self, doc: Mapping[str, Any]) -> None:
        """Count one request (its document). The hot path: never raises, allocates rarely."""
        http = doc.get("http")
        if type(http) is dict:  # the common case; anything odd is `unknown`, status 0
            route, status = http.get("route"), http.get("status")
            if type(route) is not str:
                route = UNKNOWN_ROUTE
            klass = status // 100 if type(status) is int and 100 <= status <= 599 else 0
        else:
            route, klass = UNKNOWN_ROUTE, 0
        moment = doc.get("timestamp")
        try:
            if not self._start <= moment < self._end:  # type: ignore[operator]
                self._roll(moment)  # type: ignore[arg-type]
        except TypeError:  # no timestamp, or not an aware datetime
            self._roll(dt.datetime.now(dt.UTC))
        counts = self._current
        # Most requests are 2xx: the route itself is their key (no tuple to build and hash).
        key: str | tuple[str, int] = route if klass == 2 else (route, klass)
        n = counts.get(key)
        if n is None and len(counts) >= _MAX_KEYS:  # raw paths logged as routes: cap the memory
            key = OTHER_ROUTES if klass == 2 else (OTHER_ROUTES, klass)
            n = counts.get(key)
        counts[key] = (n or 0) + 1

    def _roll(self, moment: dt.datetime) -> None:
        """Make `moment`'s minute the current one (a new minute, or a late request's old one)."""
        minute = minute_of(moment)
        counts = self._minutes.get(minute)
        if counts is None:
            newest = max(self._minutes, default=minute)
            if minute < newest - _MINUTE * self.keep_minutes:
                self.late_dropped += 1
                counts = {}  # counted nowhere: that minute's counts are gone from memory
            else:
                counts = self._minutes[minute] = {}
        self._current = counts
        self._start, self._end = minute, minute + _MINUTE

    def due(self, now: dt.datetime, *, final: bool = False) -> list[CountRecord]:
        """Records to send: minutes ended `grace` ago whose counts changed since last sent.

        `final` (shutdown) sends every changed minute, the open one too. Forgets minutes more
        than `keep_minutes` old.
        """
        records = []
        for minute, counts in sorted(self._minutes.items()):
            if not counts or not (final or minute + _MINUTE + self.grace <= now):
                continue
            version = sum(counts.values())
            if self._sent.get(minute) != version:
                self._sent[minute] = version
                records.append(self._record(minute, counts))
        horizon = minute_of(now) - _MINUTE * self.keep_minutes
        for minute in [m for m in self._minutes if m < horizon]:
            del self._minutes[minute]
            self._sent.pop(minute, None)
        self.published += len(records)
        return records

    def _record(
        self, minute: dt.datetime, counts: Mapping[str | tuple[str, int], int]
    ) -> CountRecord:
        rows: dict[tuple[str, str], int] = {}
        for key, n in counts.items():
            route, klass = (key, 2) if isinstance(key, str) else key
            rows[(route, _CLASSES[klass])] = n
        return CountRecord(self.emitter, minute, rows, self.instance, self.service)
