"""The seam between incidents and exact request counts: a scope's requests per minute.

Each minute's requests are an exact count or an estimate with its uncertainty
(`widelog.sampling.totals.Total`).

A rate's denominator used to be the re-weighted sum of the stored events of its scope (noisy, and
nothing said how noisy). `RequestTotals` answers it instead when the aggregator and the readers
have one: `StoredRequestTotals` takes, per (emitter, minute), the emitter's count record when the
store holds it, and the kept events' weights when it does not (a lost record, or a minute whose
record is not sent yet). Count records are per route, so scopes of `http.route` (or of nothing:
every request) can be exact; any other scope (say `llm.provider`) is estimated from its events,
with an interval.

The readers (CLI, HTTP API, dashboard) ask `scope_totals` and `annotate`. The aggregator does
not ask the event store while judging (on FerretDB every such query scans all stored events): the
consumer hands it each batch's count records (`on_counts`), it keeps per (minute, scope, emitter)
the kept events' estimate, and it combines the two the same way (`IncidentAggregator
._scope_totals`); a provider only tells it to do so, and gives `rebuild` the stored count records.
Without a provider both work as before, on the incident store's re-weighted scope counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Final, Protocol

from widelog.sampling.counts import minute_of
from widelog.sampling.policy import UNKNOWN_ROUTE
from widelog.sampling.totals import Total

if TYPE_CHECKING:
    from widelog.incidents.model import WindowStats
    from widelog.incidents.rules import Key
    from widelog.pipeline.ports import RequestCountStore
    from widelog.sampling.counts import CountRecord

MINUTE: Final = dt.timedelta(minutes=1)
ROUTE: Final = "http.route"


class RequestTotals(Protocol):
    """Requests of a scope per minute, exact where the counts allow it."""

    async def scope_totals(
        self, scope: Key, start: dt.datetime, end: dt.datetime
    ) -> dict[dt.datetime, Total]:
        """Per minute in [start, end], the requests whose fields have the `scope` values."""
        ...

    async def count_records(self, since: dt.datetime) -> list[CountRecord]:
        """The count records of the minutes from `since` on (for `rebuild`)."""
        ...


def recorded_route(fields: Mapping[str, str | None]) -> tuple[bool, str | None]:
    """Whether count records count this scope, and the route to read (None: every route).

    Records know routes and nothing else: a scope of `http.route` (a missing one is the
    counter's unknown route) or of no field at all.
    """
    if not set(fields) <= {ROUTE}:
        return False, None
    if not fields:
        return True, None
    return True, fields[ROUTE] if fields[ROUTE] is not None else UNKNOWN_ROUTE


class StoredRequestTotals:
    """`RequestTotals` over an event store's count records and kept events."""

    def __init__(self, store: RequestCountStore) -> None:
        self._store = store

    async def count_records(self, since: dt.datetime) -> list[CountRecord]:
        return await self._store.request_counts(since=since)

    async def scope_totals(
        self, scope: Key, start: dt.datetime, end: dt.datetime
    ) -> dict[dt.datetime, Total]:
        fields = dict(scope)
        until = end + MINUTE
        totals: dict[dt.datetime, Total] = {}
        recorded: set[tuple[str, dt.datetime]] = set()
        by_route, route = recorded_route(fields)
        if by_route:
            for record in await self._store.request_counts(since=start, until=until):
                recorded.add((record.emitter, record.minute))
                exact = Total.exact(record.requests(route))
                totals[record.minute] = totals.get(record.minute, Total()) + exact
        for emitter, moment, weight in await self._store.sampled_weights(
            fields, since=start, until=until, exclude=recorded
        ):
            if moment is None:
                continue
            minute = minute_of(moment.astimezone(dt.UTC))
            if emitter is not None and (emitter, minute) in recorded:
                continue  # counted exactly in its emitter's record
            totals[minute] = totals.get(minute, Total(estimated=True)).plus_weight(weight)
        return totals


def window_total(
    per_minute: Mapping[dt.datetime, Total], start: dt.datetime, end: dt.datetime
) -> Total:
    """The sum over the minutes [start, end]."""
    total = Total()
    minute = start
    while minute <= end:
        total += per_minute.get(minute, Total())
        minute += MINUTE
    return total


def annotate(window: WindowStats, per_minute: Mapping[dt.datetime, Total]) -> WindowStats:
    """The window with its requests as a `Total` (exact, or estimated with an interval).

    Where the window's requests were raised to its matching requests (counts gone), the
    denominator is that lower bound: estimated, and not narrower than what was seen.
    """
    total = window_total(per_minute, window.start, window.end_minute)
    if window.requests > total.value:
        total = Total(window.requests, total.variance, total.certain, total.sampled, estimated=True)
    return replace(window, requests=total.value, requests_total=total)


def as_floats(per_minute: Mapping[dt.datetime, Total]) -> dict[dt.datetime, float]:
    """The values alone: what the lifecycle's `window_at` sums."""
    return {minute: total.value for minute, total in per_minute.items()}
