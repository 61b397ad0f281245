"""Incidents: what a batch adds to a group, the lifecycle judged on event time, the assembled view.

Shared state is **insert-only** (or has exactly one writer), each record under a deterministic
id, so several workers, a re-delivered batch and a retried `on_stored` call all converge:

- `WorkerMinute` — (minute, worker, write): what one write of that worker adds to its on-time
  requests per scope (the rate's denominator) and matches per group;
- `Contribution` — (incident, minute, batch): the group's matching events and their facts;
- members — (incident, user or session): who was affected;
- `Transition` — (incident, episode, open|resolve): one lifecycle step. The first writer wins, so
  exactly one worker logs each open and resolve. A `facet` record — (incident, episode, facet,
  explained group) — says that another rule's group crossed its thresholds on requests this
  episode explains (`Rule.explains`); it is no lifecycle step, and every lifecycle reader skips it.

Counters updated in place (`$inc`) would be simpler, but FerretDB 1.24 (SQLite backend) applies
concurrent updates of one document as read-modify-write and loses some of them; unique inserts
are atomic on every server, and a record with one writer has no race. Counts are sums over
records (over workers), computed when read.

Times are event times (`timestamp`), cut to milliseconds (what BSON dates keep), so streaming and
`rebuild` judge the same events the same way, whenever a consumer happened to read them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from widelog.incidents.masking import MASKING_VERSION, mask, message_key
from widelog.incidents.rules import Key, Rule, field_value
from widelog.sampling.totals import Total

if TYPE_CHECKING:
    from widelog.sampling.counts import CountRecord

MINUTE: Final = dt.timedelta(minutes=1)
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_SAMPLES: Final = 5
DIMENSIONS: Final = ("llm.model", "llm.prompt_version", "http.status")
MAX_EXAMPLE_CHARS: Final = 500
_GAMMA: Final = 1.02  # duration histogram: buckets 2% wide
_LOG_GAMMA: Final = math.log(_GAMMA)

TransitionKind = Literal["open", "resolve", "facet"]
Status = Literal["open", "resolved"]


def minute_of(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


def minute_number(minute: dt.datetime) -> int:
    return int(minute.timestamp()) // 60


def to_ms(moment: dt.datetime) -> dt.datetime:
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def parse_time(value: object) -> dt.datetime | None:
    """An aware UTC datetime (milliseconds) from a datetime or an ISO/RFC 3339 string."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return to_ms(value.astimezone(dt.UTC))


def event_time(doc: Mapping[str, Any], fallback: dt.datetime) -> dt.datetime:
    """When the request happened; `fallback` (the batch's `now`) for an event without a time."""
    return parse_time(doc.get("timestamp")) or to_ms(fallback)


def duration_bucket(ms: float) -> int:
    return math.ceil(math.log(max(ms, 0.001)) / _LOG_GAMMA)


def bucket_value(bucket: int) -> float:
    """The value a bucket stands for: its midpoint, within 1% of every duration in it."""
    return 2 * _GAMMA**bucket / (_GAMMA + 1)


@dataclass(slots=True, frozen=True)
class Percentile:
    """A duration percentile of an incident's stored events.

    `exact`: it is the duration at the rank. Otherwise it lies between the least and greatest
    durations of the rank's 2% bucket, so it is off by less than their spread.
    """

    ms: float
    exact: bool


@dataclass(slots=True)
class DurationBucket:
    """The durations in one 2%-wide bucket: how many, and the least and greatest of them.

    The bounds make a percentile exact when its rank is the bucket's first or last duration, or
    when they are all equal (30 s timeouts read 30,000 ms, not the midpoint 29,948 ms), at two
    numbers a bucket: the histogram stays bounded, and merges stay exact and order-independent.
    `bounds` is None for buckets read from documents written before bounds were kept.
    """

    count: int
    bounds: tuple[float, float] | None

    def add(self, ms: float) -> None:
        self.count += 1
        if self.bounds is not None and not self.bounds[0] <= ms <= self.bounds[1]:
            self.bounds = (min(self.bounds[0], ms), max(self.bounds[1], ms))

    def merge(self, other: DurationBucket) -> None:
        self.count += other.count
        if self.bounds is None or other.bounds is None:
            self.bounds = None
        else:
            low, high = self.bounds
            self.bounds = (min(low, other.bounds[0]), max(high, other.bounds[1]))

    def at(self, rank: int, bucket: int) -> Percentile:
        """The `rank`-th (from 1) least duration in this bucket (number `bucket`).

        Between its first and last, read as if the durations were evenly spread between them;
        without bounds, the bucket's midpoint.
        """
        if self.bounds is None:
            return Percentile(bucket_value(bucket), exact=False)
        low, high = self.bounds
        if low == high or rank in {1, self.count}:
            return Percentile(low if rank == 1 else high, exact=True)
        return Percentile(low + (high - low) * (rank - 1) / (self.count - 1), exact=False)


def merge_durations(into: dict[int, DurationBucket], other: Mapping[int, DurationBucket]) -> None:
    """Fold `other` in; its buckets are copied, so merging never changes what it was read from."""
    for key, bucket in other.items():
        if key in into:
            into[key].merge(bucket)
        else:
            into[key] = DurationBucket(bucket.count, bucket.bounds)


def percentile(histogram: Mapping[int, DurationBucket], q: float) -> Percentile | None:
    """Nearest-rank `q`-th percentile (0 < q <= 100) of a duration histogram; None if empty."""
    total = sum(bucket.count for bucket in histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for key in sorted(histogram):
        bucket = histogram[key]
        if seen + bucket.count >= rank:
            return bucket.at(rank - seen, key)
        seen += bucket.count
    return None  # pragma: no cover - unreachable: the ranks add up to total


def member_hash(value: str) -> str:
    """Users and sessions are stored as hashes: only their count is ever shown."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:20]


@dataclass(slots=True)
class MessageStat:
    text: str  # the masked message
    example: str  # one raw message, the earliest seen
    example_at: dt.datetime
    count: int = 0

    def merge(self, other: MessageStat) -> None:
        self.count += other.count
        if (other.example_at, other.example) < (self.example_at, self.example):
            self.example, self.example_at = other.example, other.example_at


@dataclass(slots=True)
class Contribution:
    """What one batch adds to one group in one minute: counts and the facts a summary needs."""

    incident_id: str
    rule_id: str
    key: Key
    scope_id: str
    minute: dt.datetime
    events: int = 0
    weight: float = 0.0  # re-weighted: the requests these events stand for
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    durations: dict[int, DurationBucket] = field(default_factory=dict)
    dims: dict[str, dict[str, int]] = field(default_factory=dict)
    messages: dict[str, MessageStat] = field(default_factory=dict)
    samples: list[tuple[dt.datetime, str]] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    masking: str = MASKING_VERSION
    late: int = 0  # events that arrived after their minute was judged (counted, never judged)

    def add(
        self,
        doc: Mapping[str, Any],
        moment: dt.datetime,
        weight: float,
        *,
        late: bool = False,
    ) -> None:
        self.events += 1
        self.late += late
        self.weight += weight
        self.first = moment if self.first is None else min(self.first, moment)
        self.last = moment if self.last is None else max(self.last, moment)
        duration = doc.get("duration_ms")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and duration >= 0:
            ms = float(duration)
            bucket = self.durations.get(number := duration_bucket(ms))
            if bucket is None:
                self.durations[number] = DurationBucket(1, (ms, ms))
            else:
                bucket.add(ms)
        for dim in DIMENSIONS:
            value = field_value(doc, dim)
            if value is not None:
                values = self.dims.setdefault(dim, {})
                values[value] = values.get(value, 0) + 1
        error = doc.get("error")
        raw = error.get("message") if isinstance(error, Mapping) else None
        if isinstance(raw, str) and raw:
            text = mask(raw)
            stat = MessageStat(text, raw[:MAX_EXAMPLE_CHARS], moment, 1)
            key = message_key(text)
            if key in self.messages:
                self.messages[key].merge(stat)
            else:
                self.messages[key] = stat
        request_id = doc.get("request_id")
        if isinstance(request_id, str) and request_id:
            self.samples = latest_samples([*self.samples, (moment, request_id)])
        for name, members in (("user_id", self.users), ("session_id", self.sessions)):
            value = doc.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                members.add(member_hash(str(value)))

    def merge(self, other: Contribution) -> None:
        """Fold another contribution of the same incident in (reading, or gathering batches)."""
        self.events += other.events
        self.weight += other.weight
        self.late += other.late
        for moment in (other.first, other.last):
            if moment is not None:
                self.first = moment if self.first is None else min(self.first, moment)
                self.last = moment if self.last is None else max(self.last, moment)
        merge_durations(self.durations, other.durations)
        for dim, values in other.dims.items():
            mine = self.dims.setdefault(dim, {})
            for value, n in values.items():
                mine[value] = mine.get(value, 0) + n
        for key, stat in other.messages.items():
            if key in self.messages:
                self.messages[key].merge(stat)
            else:
                self.messages[key] = MessageStat(stat.text, stat.example, stat.example_at, 0)
                self.messages[key].merge(stat)
        self.samples = latest_samples([*self.samples, *other.samples])
        self.users |= other.users
        self.sessions |= other.sessions

    def record_id(self, token: str) -> str:
        return f"{self.incident_id}|{minute_key(self.minute)}|{token}"

    def to_doc(self) -> dict[str, Any]:
        """A JSON/BSON-ready document: maps become lists, so no value is ever a field name."""
        return {
            **_group_doc(self.incident_id, self.rule_id, self.key, self.scope_id),
            "minute": self.minute,
            "events": self.events,
            "weight": self.weight,
            "first": self.first,
            "last": self.last,
            "durations": [
                {"b": key, "n": bucket.count, **_bounds_doc(bucket.bounds)}
                for key, bucket in sorted(self.durations.items())
            ],
            "dims": [
                {"dim": d, "value": v, "n": n}
                for d, values in sorted(self.dims.items())
                for v, n in values.items()
            ],
            "messages": [
                {"key": k, "text": s.text, "example": s.example, "at": s.example_at, "n": s.count}
                for k, s in sorted(self.messages.items())
            ],
            "samples": [{"at": moment, "id": rid} for moment, rid in self.samples],
            "masking": self.masking,
            "late": self.late,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Contribution:
        minute = parse_time(doc["minute"])
        if minute is None:
            raise ValueError(f"contribution without a minute: {doc!r}")
        item = cls(
            incident_id=str(doc["incident"]),
            rule_id=str(doc["rule"]),
            key=_key_from(doc["key"]),
            scope_id=str(doc["scope"]),
            minute=minute,
            events=int(doc["events"]),
            weight=float(doc["weight"]),
            first=parse_time(doc.get("first")),
            last=parse_time(doc.get("last")),
            masking=str(doc.get("masking", MASKING_VERSION)),
            late=int(doc.get("late", 0)),
        )
        item.durations = {
            int(d["b"]): DurationBucket(
                int(d["n"]), (float(d["lo"]), float(d["hi"])) if "lo" in d else None
            )
            for d in doc.get("durations", [])
        }
        for d in doc.get("dims", []):
            item.dims.setdefault(str(d["dim"]), {})[str(d["value"])] = int(d["n"])
        for message in doc.get("messages", []):
            at = parse_time(message["at"]) or minute
            stat = MessageStat(str(message["text"]), str(message["example"]), at, int(message["n"]))
            item.messages[str(message["key"])] = stat
        item.samples = [
            (parse_time(sample["at"]) or minute, str(sample["id"]))
            for sample in doc.get("samples", [])
        ]
        return item


def _bounds_doc(bounds: tuple[float, float] | None) -> dict[str, float]:
    return {} if bounds is None else {"lo": bounds[0], "hi": bounds[1]}


def _group_doc(incident: str, rule: str, key: Key, scope: str) -> dict[str, Any]:
    return {"incident": incident, "rule": rule, "key": _key_doc(key), "scope": scope}


def _key_doc(key: Key) -> list[dict[str, str | None]]:
    # Lists of objects, never lists of lists: FerretDB does not store nested arrays.
    return [{"field": field, "value": value} for field, value in key]


def _key_from(doc: Iterable[Mapping[str, Any]]) -> Key:
    return tuple(
        (str(pair["field"]), None if pair["value"] is None else str(pair["value"])) for pair in doc
    )


def latest_samples(samples: Iterable[tuple[dt.datetime, str]]) -> list[tuple[dt.datetime, str]]:
    """The `MAX_SAMPLES` most recent distinct request ids (recent ones are still in the store)."""
    unique = {rid: moment for moment, rid in sorted(samples)}
    ordered = sorted(((m, r) for r, m in unique.items()), key=lambda s: (-s[0].timestamp(), s[1]))
    return ordered[:MAX_SAMPLES]


def minute_key(minute: dt.datetime) -> str:
    """A minute as fixed-width text, so `_id`s that start with it sort (and range) by time."""
    return f"{minute_number(minute):010d}"


@dataclass(slots=True, frozen=True)
class GroupCount:
    """One group's on-time matching requests in one minute: what its windows are judged on.

    `explained`: how many of them also matched a rule that explains this one, by the explaining
    group, so the group can be judged without what an open incident of that group explains.
    """

    incident_id: str
    rule_id: str
    key: Key
    scope_id: str
    events: int
    weight: float
    explained: Mapping[str, Tally] = field(default_factory=dict)

    def plus(self, other: GroupCount) -> GroupCount:
        explained = dict(self.explained)
        for iid, tally in other.explained.items():
            explained[iid] = explained[iid].plus(tally) if iid in explained else tally
        return GroupCount(
            self.incident_id,
            self.rule_id,
            self.key,
            self.scope_id,
            self.events + other.events,
            self.weight + other.weight,
            explained,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            **_group_doc(self.incident_id, self.rule_id, self.key, self.scope_id),
            "events": self.events,
            "weight": self.weight,
            **(
                {
                    "explained": [
                        {"incident": iid, "events": t.events, "weight": t.weight}
                        for iid, t in sorted(self.explained.items())
                    ]
                }
                if self.explained
                else {}
            ),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> GroupCount:
        return cls(
            str(doc["incident"]),
            str(doc["rule"]),
            _key_from(doc["key"]),
            str(doc["scope"]),
            int(doc["events"]),
            float(doc["weight"]),
            {
                str(e["incident"]): Tally(int(e["events"]), float(e["weight"]))
                for e in doc.get("explained", [])
            },
        )


@dataclass(slots=True, frozen=True)
class RouteCounts:
    """One emitter's count record of one minute, as the aggregator keeps it: requests by route.

    `version` only grows (the requests counted so far): of two copies, the higher one stands.
    """

    version: int
    routes: Mapping[str, int]

    @classmethod
    def of(cls, record: CountRecord) -> RouteCounts:
        routes: dict[str, int] = {}
        for (route, _), n in record.counts.items():
            routes[route] = routes.get(route, 0) + n
        return cls(record.version, routes)

    def requests(self, route: str | None) -> int:
        return sum(self.routes.values()) if route is None else self.routes.get(route, 0)


@dataclass(slots=True)
class WorkerMinute:
    """One worker's on-time counts of one minute, from the batches of one write.

    Stored insert-only, one record per minute and write (`minute|worker|token`), and summed when
    read: FerretDB 1.24 scans its whole collection to find or replace a document (even by
    `_id`), but not to insert one, so counts written every second cost what they add, however
    many scopes a minute has. Every worker reads the minutes it judges with one `_id` range.

    With exact totals on, it also holds what a scope's requests are made of: the kept events'
    estimate by emitter (`estimates`, scope id -> emitter -> `Total`) and the count records
    this worker received (`records`, emitter -> `RouteCounts`), so judging never asks the
    event store (which FerretDB could only answer by scanning every stored event).
    """

    minute: dt.datetime
    worker: str
    scopes: dict[str, float] = field(default_factory=dict)  # scope id -> re-weighted requests
    groups: dict[str, GroupCount] = field(default_factory=dict)  # incident id -> its count
    estimates: dict[str, dict[str, Total]] = field(default_factory=dict)
    records: dict[str, RouteCounts] = field(default_factory=dict)

    def record_id(self, token: str) -> str:
        """`minute|worker|token`: a retried write inserts nothing new, and ids range by minute."""
        return f"{minute_key(self.minute)}|{self.worker}|{token}"

    def copy(self) -> WorkerMinute:
        return WorkerMinute(
            self.minute,
            self.worker,
            dict(self.scopes),
            dict(self.groups),
            {sid: dict(by) for sid, by in self.estimates.items()},
            dict(self.records),
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "minute": self.minute,
            "worker": self.worker,
            "scopes": [{"scope": k, "weight": w} for k, w in sorted(self.scopes.items())],
            "groups": [g.to_doc() for _, g in sorted(self.groups.items())],
        }
        if self.estimates:
            doc["estimates"] = [
                {"scope": sid, "emitter": emitter, **_total_doc(total)}
                for sid, by in sorted(self.estimates.items())
                for emitter, total in sorted(by.items())
            ]
        if self.records:
            doc["records"] = [
                {
                    "emitter": emitter,
                    "version": counts.version,
                    "routes": [
                        {"route": r, "requests": n} for r, n in sorted(counts.routes.items())
                    ],
                }
                for emitter, counts in sorted(self.records.items())
            ]
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> WorkerMinute:
        minute = parse_time(doc["minute"])
        if minute is None:
            raise ValueError(f"worker minute without a minute: {doc!r}")
        groups = [GroupCount.from_doc(g) for g in doc.get("groups", [])]
        estimates: dict[str, dict[str, Total]] = {}
        for e in doc.get("estimates", []):
            estimates.setdefault(str(e["scope"]), {})[str(e["emitter"])] = _total_from(e)
        return cls(
            minute,
            str(doc["worker"]),
            {str(s["scope"]): float(s["weight"]) for s in doc.get("scopes", [])},
            {g.incident_id: g for g in groups},
            estimates,
            {
                str(r["emitter"]): RouteCounts(
                    int(r["version"]), {str(x["route"]): int(x["requests"]) for x in r["routes"]}
                )
                for r in doc.get("records", [])
            },
        )

    def plus(self, other: WorkerMinute) -> WorkerMinute:
        """The counts of both (the same minute): a worker's and a batch's, or two workers'."""
        return self.copy().add(other)

    def add(self, other: WorkerMinute) -> WorkerMinute:
        """Add `other`'s counts to these, in place (a batch's, to those waiting to be written)."""
        for sid, weight in other.scopes.items():
            self.scopes[sid] = self.scopes.get(sid, 0.0) + weight
        for iid, group in other.groups.items():
            mine = self.groups.get(iid)
            self.groups[iid] = group if mine is None else mine.plus(group)
        for sid, by in other.estimates.items():
            into = self.estimates.setdefault(sid, {})
            for emitter, estimate in by.items():
                into[emitter] = into[emitter] + estimate if emitter in into else estimate
        for emitter, counts in other.records.items():
            known = self.records.get(emitter)
            if known is None or counts.version > known.version:
                self.records[emitter] = counts
        return self


@dataclass(slots=True, frozen=True)
class Tally:
    """Matching events and the requests they stand for (re-weighted), in one minute."""

    events: int
    weight: float

    def plus(self, other: Tally) -> Tally:
        return Tally(self.events + other.events, self.weight + other.weight)


@dataclass(slots=True, frozen=True)
class WindowStats:
    """A group in the `window_s` seconds of whole minutes that end with minute `end_minute`."""

    end_minute: dt.datetime
    window_s: int
    events: int  # matching events stored
    matched: float  # re-weighted matching requests
    requests: float  # re-weighted requests in the group's scope
    # The same requests as exact-or-estimated, with what the interval needs, when a
    # `RequestTotals` provider gave them (`incidents/request_totals.py`); None: re-weighted only.
    requests_total: Total | None = None

    @property
    def requests_estimated(self) -> bool:
        return self.requests_total is None or self.requests_total.estimated

    @property
    def start(self) -> dt.datetime:
        return self.end_minute + MINUTE - dt.timedelta(seconds=self.window_s)

    @property
    def end(self) -> dt.datetime:
        return self.end_minute + MINUTE

    @property
    def rate(self) -> float:
        return self.matched / self.requests if self.requests > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "minutes": self.window_s // 60,
            "events": self.events,
            "matched": round(self.matched, 3),
            "requests": round(self.requests, 3),
            "requests_estimated": self.requests_estimated,
            "rate": round(self.rate, 6),
            **self._intervals(),
        }

    def _intervals(self) -> dict[str, list[float]]:
        """95% intervals of an estimated denominator and of the rate; none when exact."""
        total = self.requests_total
        if total is None or not total.estimated:
            return {}
        low, high = total.interval()
        return {
            "requests_interval95": [round(low, 1), round(high, 1)],
            "rate_interval95": [
                round(self.matched / high, 6) if high else 0.0,
                round(min(self.matched / low, 1.0), 6) if low else 1.0,
            ],
        }

    def to_doc(self) -> dict[str, Any]:
        return {
            "end_minute": self.end_minute,
            "window_s": self.window_s,
            "events": self.events,
            "matched": self.matched,
            "requests": self.requests,
            "requests_total": None if (t := self.requests_total) is None else _total_doc(t),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> WindowStats | None:
        if not doc:
            return None
        end = parse_time(doc["end_minute"])
        if end is None:
            return None
        total = doc.get("requests_total")
        return cls(
            end,
            int(doc["window_s"]),
            int(doc["events"]),
            doc["matched"],
            doc["requests"],
            None if not isinstance(total, Mapping) else _total_from(total),
        )


def _total_doc(total: Total) -> dict[str, Any]:
    return {
        "value": total.value,
        "variance": total.variance,
        "certain": total.certain,
        "sampled": total.sampled,
        "estimated": total.estimated,
    }


def _total_from(doc: Mapping[str, Any]) -> Total:
    return Total(
        float(doc["value"]),
        float(doc["variance"]),
        float(doc["certain"]),
        int(doc["sampled"]),
        estimated=bool(doc["estimated"]),
    )


@dataclass(slots=True, frozen=True)
class Transition:
    """One lifecycle step of one incident; `record_id` makes it happen at most once."""

    incident_id: str
    episode: int  # 1 for the first opening; each reopening (a regression) adds one
    kind: TransitionKind
    at: dt.datetime  # event time
    reason: str
    rule: Mapping[str, Any]  # the rule's snapshot (why it was grouped, by what thresholds)
    key: Key
    scope_id: str
    window: WindowStats | None = None
    facet_id: str | None = None  # a facet: the explained group (rule, key, scope are its own)

    @property
    def record_id(self) -> str:
        base = f"{self.incident_id}|{self.episode:06d}|{self.kind}"
        return base if self.facet_id is None else f"{base}|{self.facet_id}"

    def to_doc(self) -> dict[str, Any]:
        return {
            "incident": self.incident_id,
            "episode": self.episode,
            "kind": self.kind,
            "at": self.at,
            "reason": self.reason,
            "rule": dict(self.rule),
            "key": _key_doc(self.key),
            "scope": self.scope_id,
            "window": None if self.window is None else self.window.to_doc(),
            **({} if self.facet_id is None else {"facet": self.facet_id}),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Transition:
        at = parse_time(doc["at"])
        if at is None:
            raise ValueError(f"transition without a time: {doc!r}")
        kind: TransitionKind = doc["kind"] if doc["kind"] in {"open", "facet"} else "resolve"
        return cls(
            incident_id=str(doc["incident"]),
            episode=int(doc["episode"]),
            kind=kind,
            at=at,
            reason=str(doc["reason"]),
            rule=dict(doc["rule"]),
            key=_key_from(doc["key"]),
            scope_id=str(doc["scope"]),
            window=WindowStats.from_doc(doc.get("window")),
            facet_id=None if doc.get("facet") is None else str(doc["facet"]),
        )


def ordered(transitions: Iterable[Transition]) -> list[Transition]:
    """The lifecycle steps (facets left out) in the order they happened."""
    steps = (t for t in transitions if t.kind != "facet")
    return sorted(steps, key=lambda t: (t.episode, t.kind != "open"))


def window_at(
    window_s: int,
    end_minute: dt.datetime,
    series: Mapping[dt.datetime, Tally],
    scope: Mapping[dt.datetime, float],
) -> WindowStats:
    """The group's counts and its scope's requests in the window ending with `end_minute`."""
    events, matched, requests = 0, 0.0, 0.0
    minute = end_minute - dt.timedelta(seconds=window_s) + MINUTE
    while minute <= end_minute:
        totals = series.get(minute)
        if totals is not None:
            events += totals.events
            matched += totals.weight
        requests += scope.get(minute, 0.0)
        minute += MINUTE
    # A matching event is one of its scope's requests; if the scope's counts are gone (pruned),
    # the matches are a lower bound of the requests.
    return WindowStats(end_minute, window_s, events, matched, max(requests, matched))


def crosses(rule: Rule, window: WindowStats) -> bool:
    if window.requests < rule.min_requests or window.events == 0:
        return False
    if rule.min_count is not None and window.matched < rule.min_count:
        return False
    return rule.min_rate is None or window.rate >= rule.min_rate


def why_open(rule: Rule, window: WindowStats, scope: str) -> str:
    parts = [f"{window.matched:,.0f} matching requests"]
    if rule.min_count is not None:
        parts[0] += f" (at least {rule.min_count:,.0f})"
    if rule.min_rate is not None:
        parts.append(f"{window.rate:.2%} of the requests (at least {rule.min_rate:.2%})")
    parts.append(f"out of ~{window.requests:,.0f} requests{scope} (at least {rule.min_requests:g})")
    return f"{', '.join(parts)} in the {window.window_s // 60}-minute window to {hm(window.end)}"


def hm(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def describe_key(key: Key) -> str:
    """`error.code=LLM_TIMEOUT, http.route=/v1/chat`; a missing field reads `(none)`."""
    return ", ".join(f"{field}={'(none)' if value is None else value}" for field, value in key)


def scope_pairs(rule: Rule, key: Key) -> list[tuple[str, str | None]]:
    return [(f, v) for f, v in key if f in rule.rate_scope]


def describe_span(delta: dt.timedelta) -> str:
    """`15 min`, `2 h`, `90 s`: a duration as an operator reads it."""
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


@dataclass(slots=True)
class Episode:
    number: int
    opened_at: dt.datetime
    open_reason: str
    open_window: WindowStats | None
    resolved_at: dt.datetime | None = None
    resolve_reason: str | None = None


@dataclass(slots=True)
class Facet:
    """Another rule's group that crossed its thresholds on requests this incident explains."""

    incident_id: str  # the explained group's own id (its facts are stored under it)
    rule: Mapping[str, Any]  # that rule's snapshot
    key: Key
    at: dt.datetime
    reason: str
    window: WindowStats | None
    p95: Percentile | None = None  # of the group's matching events in the window, when read

    @classmethod
    def of(cls, step: Transition) -> Facet:
        return cls(step.facet_id or "", step.rule, step.key, step.at, step.reason, step.window)


@dataclass(slots=True)
class Incident:
    """One group that crossed its rule's thresholds at least once, as an operator reads it."""

    id: str
    rule: Mapping[str, Any]  # snapshot from the latest opening
    key: Key
    scope_id: str
    episodes: list[Episode]
    facts: Contribution  # every contribution since the incident's first window, folded
    users: int = 0
    sessions: int = 0
    window: WindowStats | None = None  # the window ending at the last event
    facets: list[Facet] = field(default_factory=list)  # of the latest episode

    @property
    def status(self) -> Status:
        return "resolved" if self.episodes[-1].resolved_at is not None else "open"

    @property
    def regressions(self) -> int:
        return len(self.episodes) - 1

    @property
    def first_seen(self) -> dt.datetime:
        return self.facts.first or self.episodes[0].opened_at

    @property
    def last_seen(self) -> dt.datetime:
        return self.facts.last or self.episodes[-1].opened_at


def life_start(transitions: Sequence[Transition]) -> dt.datetime | None:
    """The first minute an incident's facts count from: the window that first opened it."""
    opens = [t for t in ordered(transitions) if t.kind == "open"]
    if not opens:
        return None
    first = opens[0]
    if first.window is not None:
        return first.window.start
    window_s = int(first.rule.get("window_s", 300))
    return minute_of(first.at) - dt.timedelta(seconds=window_s)


def episodes_of(transitions: Sequence[Transition]) -> list[Episode]:
    episodes: dict[int, Episode] = {}
    for step in ordered(transitions):
        if step.kind == "open":
            episodes[step.episode] = Episode(step.episode, step.at, step.reason, step.window)
        elif step.episode in episodes:
            episodes[step.episode].resolved_at = step.at
            episodes[step.episode].resolve_reason = step.reason
    return [episodes[n] for n in sorted(episodes)]


def assemble(
    transitions: Sequence[Transition],
    contributions: Iterable[Contribution],
    *,
    users: int = 0,
    sessions: int = 0,
    scope: Mapping[dt.datetime, float] | None = None,
) -> Incident | None:
    """The incident these records describe, or None if the group never opened.

    `scope` (the scope's requests per minute around the last event) gives the current window; if
    it is gone (pruned), the window that opened the latest episode is shown instead (a resolve's
    own window is empty by definition, a facet's is another group's).
    """
    history = ordered(transitions)
    episodes = episodes_of(history)
    if not episodes:
        return None
    opening = [t for t in history if t.kind == "open"][-1]
    rule_id = str(opening.rule.get("id"))
    facts = Contribution(opening.incident_id, rule_id, opening.key, opening.scope_id, EPOCH)
    series: dict[dt.datetime, Tally] = {}
    for part in contributions:
        facts.merge(part)
        facts.masking = part.masking
        totals = Tally(part.events, part.weight)
        series[part.minute] = series[part.minute].plus(totals) if part.minute in series else totals
    window = opening.window
    window_s = int(opening.rule.get("window_s", 300))
    if scope and facts.last is not None:
        current = window_at(window_s, minute_of(facts.last), series, scope)
        if current.requests > current.matched or window is None:
            window = current
    return Incident(
        id=opening.incident_id,
        rule=opening.rule,
        key=opening.key,
        scope_id=opening.scope_id,
        episodes=episodes,
        facts=facts,
        users=users,
        sessions=sessions,
        window=window,
        facets=[
            Facet.of(t)
            for t in sorted(transitions, key=lambda t: (t.at, t.record_id))
            if t.kind == "facet" and t.episode == episodes[-1].number
        ],
    )
