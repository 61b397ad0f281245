"""Totals of the traffic from the events that were kept: each stored event counts `weight` times.

A kept event records `sampling.weight` (= 1 / `sampling.rate`, or 1 in dry run, where nothing was
dropped), so summing weights is the Horvitz-Thompson estimate of how many requests there were; it is
unbiased per route whatever the per-route rates. Errors are kept at rate 1, so error counts come out
exact. The standard error comes from the same weights: each kept event adds `w * (w - 1)` to the
variance estimate (`(1 - p) / p**2` with `p = 1 / w`), so a route's total is reported with the
uncertainty sampling put there.

The exact, unsampled counts are the sampler's in-process counters; this is what stored events say
after the fact (incident rates, dashboards over a time range, a store filled by many instances).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from widelog.events.event import is_error
from widelog.sampling.counts import latest_records, minute_of
from widelog.sampling.policy import UNKNOWN_ROUTE
from widelog.sampling.totals import Total

if TYPE_CHECKING:
    from collections.abc import Iterable

    from widelog.pipeline.ports import CountingEventStore, EventStore
    from widelog.sampling.counts import CountRecord


def weight_of(doc: Mapping[str, Any]) -> float:
    """How many requests a stored event stands for: `sampling.weight`, else 1/`rate`, else 1."""
    sampling = doc.get("sampling")
    if not isinstance(sampling, Mapping):
        return 1.0  # stored before sampling existed, or by a producer that keeps everything
    weight = sampling.get("weight")
    if _number(weight) and weight >= 1:
        return float(weight)
    if sampling.get("dry_run") is True:
        return 1.0
    rate = sampling.get("rate")
    if _number(rate) and 0 < rate <= 1:
        return 1.0 / rate
    return 1.0


def counts_as_error(doc: Mapping[str, Any]) -> bool:
    """The sampler's verdict (`sampling.reason == "error"`), else the domain's `is_error`."""
    sampling = doc.get("sampling")
    if isinstance(sampling, Mapping) and isinstance(sampling.get("reason"), str):
        return bool(sampling["reason"] == "error")
    return is_error(doc)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(slots=True)
class RouteEstimate:
    """Estimated traffic of one route (or of all of them), with what it was estimated from."""

    route: str
    sampled: int = 0  # stored events
    sampled_errors: int = 0
    requests: float = 0.0  # estimated requests: the sum of weights
    errors: float = 0.0
    requests_variance: float = 0.0
    errors_variance: float = 0.0
    # Requests as exact counts (count records) plus estimates where no record was held.
    total: Total = field(default_factory=Total)

    def add(self, weight: float, *, error: bool, counted: bool = False) -> None:
        """One stored event; `counted`: its emitter-minute's exact count is in `total` already."""
        self.sampled += 1
        self.requests += weight
        self.requests_variance += weight * (weight - 1)
        if not counted:
            self.total = self.total.plus_weight(weight)
        if error:
            self.sampled_errors += 1
            self.errors += weight
            self.errors_variance += weight * (weight - 1)

    @property
    def requests_stderr(self) -> float:
        return math.sqrt(self.requests_variance)

    @property
    def errors_stderr(self) -> float:
        return math.sqrt(self.errors_variance)

    @property
    def error_rate(self) -> float:
        """Errors (kept at rate 1: exact) over the requests, exact where counts were held."""
        return self.errors / self.total.value if self.total.value else 0.0

    def add_exact(self, requests: int) -> None:
        self.total += Total.exact(requests)

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "sampled": self.sampled,
            "sampled_errors": self.sampled_errors,
            # `requests`: exact where count records were held, else re-weighted (see `total`)
            "requests": round(self.total.value, 3),
            "requests_total": self.total.as_dict(),
            "reweighted_requests": round(self.requests, 3),
            "requests_stderr": round(self.requests_stderr, 3),
            "errors": round(self.errors, 3),
            "errors_stderr": round(self.errors_stderr, 3),
            "error_rate": round(self.error_rate, 6),
        }


@dataclass(slots=True)
class Estimate:
    """Per-route estimates, their total, and which policies and reasons the events came from."""

    routes: dict[str, RouteEstimate] = field(default_factory=dict)
    total: RouteEstimate = field(default_factory=lambda: RouteEstimate("*"))
    by_reason: dict[str, int] = field(default_factory=dict)  # stored events per sampling.reason
    by_policy: dict[str, int] = field(default_factory=dict)  # stored events per sampling.policy
    # (emitter, minute) of every count record added: their events are counted exactly already
    recorded: set[tuple[str, dt.datetime]] = field(default_factory=set)
    count_records: int = 0

    def _route(self, route: str) -> RouteEstimate:
        per_route = self.routes.get(route)
        if per_route is None:
            per_route = self.routes[route] = RouteEstimate(route)
        return per_route

    def add_record(self, record: CountRecord) -> None:
        """A count record: exact requests of its emitter-minute (add before the events)."""
        self.count_records += 1
        self.recorded.add((record.emitter, record.minute))
        for (route, _), n in sorted(record.counts.items()):
            self._route(route).add_exact(n)
            self.total.add_exact(n)

    def add(self, doc: Mapping[str, Any]) -> None:
        http = doc.get("http")
        route = http.get("route") if isinstance(http, Mapping) else None
        route = route if isinstance(route, str) else UNKNOWN_ROUTE
        weight, error = weight_of(doc), counts_as_error(doc)
        counted = _recorded(doc, self.recorded)
        self._route(route).add(weight, error=error, counted=counted)
        self.total.add(weight, error=error, counted=counted)
        sampling = doc.get("sampling")
        if isinstance(sampling, Mapping):
            reason, policy = str(sampling.get("reason")), str(sampling.get("policy"))
        else:
            reason = policy = "unsampled"
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        self.by_policy[policy] = self.by_policy.get(policy, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.routes.values(), key=lambda r: (-r.total.value, r.route))
        return {
            "count_records": self.count_records,
            "total": self.total.as_dict(),
            "routes": [r.as_dict() for r in ordered],
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_policy": dict(sorted(self.by_policy.items())),
        }


def _recorded(doc: Mapping[str, Any], recorded: set[tuple[str, dt.datetime]]) -> bool:
    if not recorded:
        return False
    emitter, stamp = doc.get("emitter"), doc.get("timestamp")
    if not isinstance(emitter, str) or not isinstance(stamp, dt.datetime):
        return False
    return (emitter, minute_of(stamp)) in recorded


def estimate(docs: Iterable[Mapping[str, Any]], records: Iterable[CountRecord] = ()) -> Estimate:
    """Requests, errors and error rate per route from stored (sampled) events.

    With count `records`, each route's `total` is exact for the emitter-minutes they cover and
    re-weighted (with an interval) for the rest.
    """
    result = Estimate()
    for record in latest_records(records):
        result.add_record(record)
    for doc in docs:
        result.add(doc)
    return result


async def estimate_from_store(
    store: EventStore | CountingEventStore, *, batch_size: int = 1000
) -> Estimate:
    """`estimate()` over every event (and count record) in the store, events read in pages."""
    result = Estimate()
    if hasattr(store, "request_counts"):
        for record in latest_records(await store.request_counts()):
            result.add_record(record)
    async for doc in store.scan_events(batch_size=batch_size):
        result.add(doc)
    return result
