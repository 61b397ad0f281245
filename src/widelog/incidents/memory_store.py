"""`IncidentStore` in memory, with the same ids and semantics as the others.

For tests (the property tests share one between two aggregators) and for anyone who wants
incidents without a database.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from widelog.incidents.model import MINUTE, Contribution, WorkerMinute, minute_key

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from widelog.incidents.model import Transition
    from widelog.incidents.watermark import WorkerMark


class InMemoryIncidentStore:
    """Dicts keyed by record id."""

    def __init__(self) -> None:
        self._minutes: dict[str, WorkerMinute] = {}
        self._facts: dict[str, Contribution] = {}
        self._members: dict[str, dt.datetime] = {}
        self._transitions: dict[str, Transition] = {}
        self._marks: dict[str, WorkerMark] = {}
        self.minutes_read = 0  # minutes read back (tests check judging reads a bounded window)

    async def add_batch(
        self, contributions: Sequence[Contribution], minutes: Sequence[WorkerMinute], *, token: str
    ) -> None:
        for part in contributions:
            if part.first is None or part.last is None:
                continue
            self._facts.setdefault(part.record_id(token), Contribution.from_doc(part.to_doc()))
            for kind, hashes in (("user", part.users), ("session", part.sessions)):
                for h in hashes:
                    self._members.setdefault(f"{part.incident_id}|{kind}|{h}", part.minute)
        for counts in minutes:
            stored = WorkerMinute.from_doc(counts.to_doc())
            self._minutes.setdefault(counts.record_id(token), stored)

    async def minute_counts(self, start: dt.datetime, end: dt.datetime) -> list[WorkerMinute]:
        self.minutes_read += (end - start) // MINUTE + 1
        return [
            WorkerMinute.from_doc(m.to_doc())
            for m in self._minutes.values()
            if start <= m.minute <= end
        ]

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

    async def prune(
        self,
        *,
        minutes_before: dt.datetime,
        facts_before: dt.datetime | None = None,
        keep: Collection[str] = (),
    ) -> int:
        kept = set(keep)
        old = [k for k, m in self._minutes.items() if m.minute < minutes_before]
        old_facts, members = [], []
        if facts_before is not None:
            old_facts = [
                k
                for k, f in self._facts.items()
                if f.minute < facts_before and f.incident_id not in kept
            ]
            members = [
                k
                for k, m in self._members.items()
                if m < facts_before and k.split("|")[0] not in kept
            ]
            for worker in [w for w, m in self._marks.items() if m.arrival < facts_before]:
                del self._marks[worker]
        for key in old:
            del self._minutes[key]
        for key in old_facts:
            del self._facts[key]
        for key in members:
            del self._members[key]
        return len(old) + len(old_facts) + len(members)

    async def clear(self) -> None:
        for table in (self._minutes, self._facts, self._members, self._transitions, self._marks):
            table.clear()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
