"""`IncidentStore` in memory, with the same ids and semantics as the others.

For tests (the property tests share one between two aggregators) and for anyone who wants
incidents without a database.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from widelog.incidents.model import (
    Contribution,
    MinuteCounts,
    Transition,
    count_id_range,
    is_late_record,
    minute_key,
    scope_id_ranges,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from widelog.incidents.model import GroupCount, ScopeCount
    from widelog.incidents.watermark import WorkerMark


class InMemoryIncidentStore:
    """Dicts keyed by record id; ranges by sorted id, like the `_id` index of the others."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float, dict[str, Any] | None]] = {}
        self._facts: dict[str, Contribution] = {}
        self._members: dict[str, dt.datetime] = {}
        self._transitions: dict[str, Transition] = {}
        self._marks: dict[str, WorkerMark] = {}
        self.count_reads = 0  # how many range reads of the counts (a test checks it is bounded)

    def _range(self, low: str, high: str) -> list[str]:
        return sorted(k for k in self._counts if low <= k < high)

    async def add_batch(
        self,
        scopes: Sequence[ScopeCount],
        groups: Sequence[GroupCount],
        contributions: Sequence[Contribution],
        *,
        token: str,
    ) -> None:
        for scope in scopes:
            self._counts.setdefault(scope.record_id(token), (scope.events, scope.weight, None))
        for group in groups:
            self._counts.setdefault(
                group.record_id(token), (group.events, group.weight, group.to_doc())
            )
        for part in contributions:
            if part.first is None or part.last is None:
                continue
            self._facts.setdefault(part.record_id(token), Contribution.from_doc(part.to_doc()))
            for kind, hashes in (("user", part.users), ("session", part.sessions)):
                for h in hashes:
                    self._members.setdefault(f"{part.incident_id}|{kind}|{h}", part.minute)

    async def counts(self, start: dt.datetime | None, end: dt.datetime) -> MinuteCounts:
        self.count_reads += 1
        result = MinuteCounts()
        for key in self._range(*count_id_range(start, end)):
            events, weight, doc = self._counts[key]
            result.add_record(key, events, weight, doc)
        return result

    async def scope_series(
        self, scope_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, float]]:
        result: dict[str, dict[dt.datetime, float]] = {}
        for scope, minute, low, high in scope_id_ranges(scope_ids, start, end):
            for key in self._range(low, high):
                if not is_late_record(key):
                    series = result.setdefault(scope, {})
                    series[minute] = series.get(minute, 0.0) + self._counts[key][1]
        return result

    async def publish_watermark(self, worker: str, mark: WorkerMark) -> None:
        self._marks[worker] = mark

    async def watermarks(self) -> dict[str, WorkerMark]:
        return dict(self._marks)

    async def add_transition(self, transition: Transition) -> bool:
        if transition.record_id in self._transitions:
            return False
        self._transitions[transition.record_id] = transition
        return True

    async def transitions(
        self, incident_ids: Collection[str] | None = None
    ) -> dict[str, list[Transition]]:
        wanted = None if incident_ids is None else set(incident_ids)
        result: dict[str, list[Transition]] = {}
        for step in self._transitions.values():
            if wanted is None or step.incident_id in wanted:
                result.setdefault(step.incident_id, []).append(step)
        return result

    async def contributions(self, incident_id: str, since: dt.datetime) -> list[Contribution]:
        low, high = f"{incident_id}|{minute_key(since)}", f"{incident_id}|~"
        return [
            Contribution.from_doc(self._facts[k].to_doc())
            for k in sorted(self._facts)
            if low <= k < high
        ]

    async def member_counts(self, incident_id: str, since: dt.datetime) -> dict[str, int]:
        counts = {"user": 0, "session": 0}
        for key, minute in self._members.items():
            incident, kind, _ = key.split("|")
            if incident == incident_id and minute >= since:
                counts[kind] += 1
        return counts

    async def prune(self, *, before: dt.datetime, keep: Collection[str]) -> int:
        cut = minute_key(before)
        old = [k for k in self._counts if k < cut]
        noise = {k.split("|")[2] for k in old if k.split("|")[1] == "g"} - set(keep)
        for key in old:
            del self._counts[key]
        deleted = len(old)
        for key in [k for k in self._facts if k.split("|")[0] in noise]:
            if self._facts[key].minute < before:
                del self._facts[key]
                deleted += 1
        for key in [k for k, m in self._members.items() if k.split("|")[0] in noise]:
            if self._members[key] < before:
                del self._members[key]
                deleted += 1
        for worker in [w for w, m in self._marks.items() if m.arrival < before]:
            del self._marks[worker]
        return deleted

    async def clear(self) -> None:
        for table in (self._counts, self._facts, self._members, self._transitions, self._marks):
            table.clear()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
