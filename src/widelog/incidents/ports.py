"""Port of the incident feature: the shared state every worker's aggregator keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Collection

    from widelog.incidents.model import Contribution, MinuteTotals, ScopeCount, Transition


class IncidentStore(Protocol):
    """Where every worker's incident aggregator keeps its state, so there is one incident per key.

    Insert-only: each record has a deterministic id and a second insert of it is ignored, which
    makes re-delivered and retried batches harmless and needs no atomic update (FerretDB loses
    concurrent updates of one document). Counts are summed when read. `token` identifies the
    batch a record came from. Times are aware UTC datetimes; minutes are whole minutes.
    """

    async def add_scope_counts(self, counts: Sequence[ScopeCount], *, token: str) -> None:
        """Store each (scope, minute) count of this batch once."""
        ...

    async def add_contributions(self, contributions: Sequence[Contribution], *, token: str) -> None:
        """Store each (incident, minute) contribution of this batch once, and its new members."""
        ...

    async def group_series(
        self, incident_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, MinuteTotals]]:
        """Per incident, per minute in [start, end], the sum of its contributions."""
        ...

    async def scope_series(
        self, scope_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, float]]:
        """Per scope, per minute in [start, end], the re-weighted requests."""
        ...

    async def last_event_before(self, incident_id: str, before: dt.datetime) -> dt.datetime | None:
        """The time of the incident's last matching event in a minute before `before`."""
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
        """Delete scope counts before `before`, and older records of groups not in `keep`."""
        ...

    async def clear(self) -> None:
        """Delete every incident record (before a rebuild)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
