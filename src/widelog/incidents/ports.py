"""Port of the incident feature: the shared state every worker's aggregator keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Collection

    from widelog.incidents.model import (
        Contribution,
        GroupCount,
        MinuteCounts,
        ScopeCount,
        Transition,
    )
    from widelog.incidents.watermark import WorkerMark


class IncidentStore(Protocol):
    """Where every worker's incident aggregator keeps its state, so there is one incident per key.

    Insert-only: each record has a deterministic id and a second insert of it is ignored, which
    makes re-delivered and retried batches harmless and needs no atomic update (FerretDB loses
    concurrent updates of one document). Counts are summed when read. `token` identifies the
    batch a record came from. Times are aware UTC datetimes; minutes are whole minutes.

    Every read the aggregator makes while judging is a range of `_id`s (the minute-first count
    ids, the incident-first fact and transition ids): the one index FerretDB reliably uses.
    """

    async def add_batch(
        self,
        scopes: Sequence[ScopeCount],
        groups: Sequence[GroupCount],
        contributions: Sequence[Contribution],
        *,
        token: str,
    ) -> None:
        """Store what one batch adds, each record once.

        Its (scope or group, minute, late) counts, its (incident, minute) contributions, and
        the members they name first. One write where the server allows it (MongoDB: one
        `insert_many`): each round trip costs the store as much as the events' own write.
        """
        ...

    async def counts(self, start: dt.datetime | None, end: dt.datetime) -> MinuteCounts:
        """Every count record of the minutes [start, end] (from the first if start is None)."""
        ...

    async def scope_series(
        self, scope_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, float]]:
        """Per scope, per minute in [start, end], the re-weighted requests counted on time."""
        ...

    async def publish_watermark(self, worker: str, mark: WorkerMark) -> None:
        """Record how far this worker has read (one document per worker, one writer each)."""
        ...

    async def watermarks(self) -> dict[str, WorkerMark]:
        """Every worker's last published mark."""
        ...

    async def add_transition(self, transition: Transition) -> bool:
        """Record a lifecycle step; True only for the one call that recorded it first."""
        ...

    async def transitions(
        self, incident_ids: Collection[str] | None = None
    ) -> dict[str, list[Transition]]:
        """Every recorded step of these incidents (all incidents if None), by incident."""
        ...

    async def contributions(self, incident_id: str, since: dt.datetime) -> list[Contribution]:
        """The incident's contributions from minute `since` on."""
        ...

    async def member_counts(self, incident_id: str, since: dt.datetime) -> dict[str, int]:
        """Distinct members by kind ("user", "session") first seen from minute `since` on."""
        ...

    async def prune(self, *, before: dt.datetime, keep: Collection[str]) -> int:
        """Delete counts of minutes before `before` and older records of never-opened groups.

        The groups are those the deleted counts name, less `keep` (the opened ones); the marks
        of workers silent since `before` go too.
        """
        ...

    async def clear(self) -> None:
        """Delete every incident record and watermark (before a rebuild)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
