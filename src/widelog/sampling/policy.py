"""Tail-aware sampling: keep every error, slow request and critical route; a stable few of the rest.

The policy is data (a TOML file plus `WIDELOG_SAMPLING_*` overrides, read by `widelog.policies`),
validated once at startup, so a bad policy fails the start naming the bad key instead of failing a
request. First match wins:

1. error — `error.code` is set, the status is >= 500, or it is one of `error.statuses` (4xx);
2. slow — `duration_ms` above the route's threshold;
3. critical_route — the route matches a `critical.routes` glob;
4. forced — the caller asked for it (e.g. a debug header), only if `forced.allowed`;
5. baseline — kept iff `blake2b-64(salt ":" request_id) < floor(rate * 2**64)`.

The baseline decision is a pure function of request id, salt and rate: every instance, process and
restart decides the same, and a request kept at one rate is kept at every higher rate (nested, like
OpenTelemetry's consistent probability sampling). `docs/sampling.md` specifies it, with a test
vector.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

REASONS: Final = ("error", "slow", "critical_route", "forced", "baseline")
UNKNOWN_ROUTE: Final = "unknown"
OTHER_ROUTES: Final = "<other>"
# Routes are templates, so there are few of them; a caller that logs raw paths must not turn the
# per-route caches and counters into a memory leak.
MAX_ROUTES: Final = 4096
_TWO_64: Final = 1 << 64

Rate = Annotated[float, Field(gt=0, le=1)]
Millis = Annotated[float, Field(gt=0)]
Route = Annotated[str, Field(min_length=1)]


class SamplingPolicyError(ValueError):
    """The policy cannot be used; the message names the bad key (file path or env variable)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorRule(_Section):
    """Any 5xx and any `error.code` always count; `statuses` lists the 4xx that count too."""

    statuses: tuple[int, ...] = (429,)

    @field_validator("statuses")
    @classmethod
    def _only_4xx(cls, statuses: tuple[int, ...]) -> tuple[int, ...]:
        for status in statuses:
            if not 400 <= status <= 499:
                raise ValueError(f"{status} is not a 4xx status (every 5xx already counts)")
        return tuple(sorted(set(statuses)))


class SlowRule(_Section):
    threshold_ms: Millis = 2000.0
    routes: dict[Route, Millis] = Field(default_factory=dict)


class CriticalRule(_Section):
    """Glob patterns (`fnmatch`, case-sensitive; `*` also matches `/`) of routes always kept."""

    routes: tuple[Route, ...] = ()

    @field_validator("routes")
    @classmethod
    def _normalize(cls, routes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(routes)))  # order never changes a match, so not the fingerprint


class ForcedRule(_Section):
    allowed: bool = False


class BaselineRule(_Section):
    rate: Rate = 0.02
    routes: dict[Route, Rate] = Field(default_factory=dict)


class SamplingPolicy(_Section):
    """The whole policy; `fingerprint` is what every kept event records as `sampling.policy`."""

    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "1"
    salt: Annotated[str, Field(min_length=1, max_length=128)] = "widelog-v1"
    dry_run: bool = False
    error: ErrorRule = ErrorRule()
    slow: SlowRule = SlowRule()
    critical: CriticalRule = CriticalRule()
    forced: ForcedRule = ForcedRule()
    baseline: BaselineRule = BaselineRule()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        """`<version>:<12 hex of sha256(canonical JSON)>`: readable, and exact about the content."""
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()
        return f"{self.version}:{digest[:12]}"


def stable_hash(request_id: str, salt: str) -> int:
    """The request's position in [0, 2**64): big-endian blake2b, digest_size 8, of `salt:id`."""
    data = f"{salt}:{request_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def threshold_for(rate: float) -> int:
    """`floor(rate * 2**64)`, exact for the IEEE-754 double `rate` (scaling by 2**64 is exact)."""
    return math.floor(math.ldexp(rate, 64))


@dataclass(slots=True, frozen=True)
class Decision:
    """What the policy decided for one event, and why."""

    keep: bool  # store the event (always true in dry run)
    reason: str  # the rule that decided: one of REASONS
    rate: float  # the probability that rule keeps such an event (1.0 outside baseline)
    would_keep: bool  # what the policy decided, dry run or not
    dry_run: bool = False

    @property
    def weight(self) -> float:
        """How many requests a stored event stands for: 1/rate, or 1 in dry run (none dropped)."""
        return 1.0 if self.dry_run else 1.0 / self.rate


@dataclass(slots=True, frozen=True)
class Explanation:
    decision: Decision
    detail: str  # the rule and the values that made it match, in words
    route: str
    hash: int | None = None  # baseline only: the request's stable hash and the keep threshold
    threshold: int | None = None


class _RouteRule:
    """Everything the policy says about one route, resolved once so `decide()` only compares."""

    __slots__ = ("critical", "drop", "keep", "keep_all", "slow_ms", "threshold")

    def __init__(
        self, route: str, policy: SamplingPolicy, critical: re.Pattern[str] | None
    ) -> None:
        rate = policy.baseline.routes.get(route, policy.baseline.rate)
        dry = policy.dry_run
        self.slow_ms = policy.slow.routes.get(route, policy.slow.threshold_ms)
        self.critical = critical is not None and critical.match(route) is not None
        self.threshold = threshold_for(rate)
        self.keep_all = self.threshold >= _TWO_64  # rate 1: every hash is below it, skip it
        self.keep = Decision(keep=True, reason="baseline", rate=rate, would_keep=True, dry_run=dry)
        self.drop = Decision(keep=dry, reason="baseline", rate=rate, would_keep=False, dry_run=dry)


def _route_of(doc: Mapping[str, Any]) -> tuple[str, int]:
    """The route template and status of an event; odd or missing values get neutral ones."""
    http = doc.get("http")
    if not isinstance(http, dict | Mapping):  # dict first: the common case skips the ABC check
        return UNKNOWN_ROUTE, 0
    route, status = http.get("route"), http.get("status")
    return (
        route if isinstance(route, str) else UNKNOWN_ROUTE,
        status if isinstance(status, int) else 0,
    )


class SamplingCounters:
    """Counted on every decided event, before any is dropped, so operator rates are exact.

    `kept_by_reason` and `dropped` are the policy's decisions; in dry run the dropped ones are
    stored anyway and also counted in `dry_run_kept`. Not thread-safe: one sampler per event loop.
    """

    __slots__ = ("dropped", "dry_run_kept", "errors_by_route", "kept_by_reason", "seen", "seen_by")

    def __init__(self) -> None:
        self.seen = 0
        self.seen_by: dict[str, dict[int, int]] = {}  # route → status → events
        self.errors_by_route: dict[str, int] = {}
        self.kept_by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.dropped = 0
        self.dry_run_kept = 0

    def record(self, route: str, status: int, decision: Decision) -> None:
        self.seen += 1
        statuses = self.seen_by.get(route)
        if statuses is None:
            if len(self.seen_by) >= MAX_ROUTES:
                route = OTHER_ROUTES
            statuses = self.seen_by.setdefault(route, {})
        statuses[status] = statuses.get(status, 0) + 1
        reason = decision.reason
        if reason == "error":
            self.errors_by_route[route] = self.errors_by_route.get(route, 0) + 1
        if decision.would_keep:
            self.kept_by_reason[reason] += 1
        else:
            self.dropped += 1
            if decision.keep:
                self.dry_run_kept += 1

    @property
    def kept(self) -> int:
        return sum(self.kept_by_reason.values())

    @property
    def retention_rate(self) -> float:
        """The share of events the policy keeps (1.0 before any event)."""
        return self.kept / self.seen if self.seen else 1.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready report (status codes become string keys)."""
        return {
            "seen": self.seen,
            "kept": self.kept,
            "dropped": self.dropped,
            "dry_run_kept": self.dry_run_kept,
            "retention_rate": round(self.retention_rate, 6),
            "kept_by_reason": dict(self.kept_by_reason),
            "seen_by_route_status": {
                route: {str(status): n for status, n in sorted(statuses.items())}
                for route, statuses in sorted(self.seen_by.items())
            },
            "errors_by_route": dict(sorted(self.errors_by_route.items())),
        }


class TailSampler:
    """Decides, for each finished event, whether to store it; counts every decision."""

    def __init__(self, policy: SamplingPolicy) -> None:
        self.policy = policy
        self.fingerprint = policy.fingerprint
        self.counters = SamplingCounters()
        self._salt = f"{policy.salt}:".encode("utf-8", "surrogatepass")
        self._error_statuses = frozenset(policy.error.statuses)
        self._allow_forced = policy.forced.allowed
        patterns = policy.critical.routes
        self._critical = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
            if patterns
            else None
        )
        dry = policy.dry_run
        self._always = {
            reason: Decision(keep=True, reason=reason, rate=1.0, would_keep=True, dry_run=dry)
            for reason in REASONS
        }
        self._routes: dict[str, _RouteRule] = {}
        self._records: dict[int, tuple[Decision, dict[str, Any]]] = {}
        for route in (*policy.slow.routes, *policy.baseline.routes):
            self._rule(route)

    def _rule(self, route: str) -> _RouteRule:
        rule = self._routes.get(route)
        if rule is None:
            rule = _RouteRule(route, self.policy, self._critical)
            if len(self._routes) < MAX_ROUTES:
                self._routes[route] = rule
        return rule

    def decide(self, doc: Mapping[str, Any], *, forced: bool = False) -> Decision:
        """The decision for one finished event (`doc` is its nested document); never raises."""
        route, status = _route_of(doc)
        decision = self._decide(doc, route, status, forced=forced)
        self.counters.record(route, status, decision)
        return decision

    def _decide(self, doc: Mapping[str, Any], route: str, status: int, *, forced: bool) -> Decision:
        error = doc.get("error")
        if (
            status >= 500
            or status in self._error_statuses
            or (error is not None and isinstance(error, dict | Mapping) and error.get("code"))
        ):
            return self._always["error"]
        rule = self._routes.get(route) or self._rule(route)
        duration = doc.get("duration_ms")
        if (
            isinstance(duration, (float, int)) and duration > rule.slow_ms
        ):  # a tuple: faster than int | float
            return self._always["slow"]
        if rule.critical:
            return self._always["critical_route"]
        if forced and self._allow_forced:
            return self._always["forced"]
        if rule.keep_all:
            return rule.keep
        request_id = doc.get("request_id")
        if not isinstance(request_id, str):
            request_id = "" if request_id is None else str(request_id)
        try:
            data = self._salt + request_id.encode()
        except UnicodeEncodeError:  # a lone surrogate: hash its bytes rather than fail
            data = self._salt + request_id.encode("utf-8", "surrogatepass")
        position = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
        return rule.keep if position < rule.threshold else rule.drop

    def explain(self, doc: Mapping[str, Any], *, forced: bool = False) -> Explanation:
        """The decision `decide()` makes for `doc` and the rule and values behind it; uncounted."""
        route, status = _route_of(doc)
        rule = self._rule(route)
        decision = self._decide(doc, route, status, forced=forced)
        reason = decision.reason
        if reason == "error":
            if status >= 500:
                detail = f"error: status {status} >= 500"
            elif status in self._error_statuses:
                detail = f"error: status {status} is in error.statuses"
            else:
                detail = f"error: error.code {doc['error']['code']!r} is set"
        elif reason == "slow":
            detail = f"slow: duration_ms {doc.get('duration_ms')} > {rule.slow_ms} for {route}"
        elif reason == "critical_route":
            detail = f"critical_route: {route} matches {list(self.policy.critical.routes)}"
        elif reason == "forced":
            detail = "forced: the request asked to be kept and the policy allows it"
        else:
            request_id = doc.get("request_id")
            position = stable_hash("" if request_id is None else str(request_id), self.policy.salt)
            sign = "<" if decision.would_keep else ">="
            detail = (
                f"baseline: hash {position:#018x} {sign} threshold {rule.threshold:#018x}"
                f" (rate {decision.rate} for {route})"
            )
            return Explanation(decision, detail, route, position, rule.threshold)
        return Explanation(decision, detail, route)

    def apply(self, doc: MutableMapping[str, Any], decision: Decision) -> None:
        """Write the decision into `doc["sampling"]`: stored events explain and weigh themselves."""
        sampling = doc.get("sampling")
        record = self.record(decision)
        if isinstance(sampling, dict):
            sampling.update(record)
        else:
            doc["sampling"] = record.copy()  # each event its own: a caller may change it after

    def record(self, decision: Decision) -> dict[str, Any]:
        """What `apply` writes for `decision`; built once per decision (there are a few)."""
        cached = self._records.get(id(decision))
        if cached is not None and cached[0] is decision:
            return cached[1]
        record: dict[str, Any] = {
            "kept": decision.keep,
            "reason": decision.reason,
            "rate": decision.rate,
            "weight": decision.weight,
            "policy": self.fingerprint,
        }
        if decision.dry_run:
            record["dry_run"] = True
            record["would_keep"] = decision.would_keep
        if len(self._records) >= 2 * MAX_ROUTES:  # past MAX_ROUTES, rules are not kept either
            self._records.clear()
        # Keyed by identity, the decision kept beside it: a freed decision's id may come back.
        self._records[id(decision)] = (decision, record)
        return record
