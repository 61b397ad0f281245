"""Port of the incident feature: the shared state every worker's aggregator keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Collection

    from widelog.incidents.model import Contribution, Transition, WorkerMinute
    from widelog.incidents.watermark import WorkerMark


class IncidentStore(Protocol):
    """Where every worker's incident aggregator keeps its state, so there is one incident per key.

    Insert-only (the marks aside: one writer each): each record has a unique id and a second
    insert of it is ignored, which makes a retried write harmless and needs no atomic update
    (FerretDB loses concurrent updates of one document). Counts are summed when read. `token`
    identifies the write a record came from. Times are aware UTC datetimes; minutes are whole
    minutes.

    The aggregator reads, while judging, one `_id` range of minute counts per judging step.
    FerretDB 1.24 scans the collection for it (as for any find by `_id`), so the counts are kept
    to a window's worth (`prune`) and written by insert, which does not scan.
    """

    async def add_batch(
        self, contributions: Sequence[Contribution], minutes: Sequence[WorkerMinute], *, token: str
    ) -> None:
        """Store what one write adds, each record once (`token` names the write).

        Its (incident, minute) contributions and the members they name first; then the counts
        it adds to each minute (`WorkerMinute.record_id(token)`), which readers sum.
        """
        ...

    async def minute_counts(self, start: dt.datetime, end: dt.datetime) -> list[WorkerMinute]:
        """Every stored count record of the minutes [start, end], of every worker (one range)."""
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

    async def prune(
        self,
        *,
        minutes_before: dt.datetime,
        facts_before: dt.datetime | None = None,
        keep: Collection[str] = (),
    ) -> int:
        """Delete what is older and no longer needed; return how many records.

        Every worker's minute counts before `minutes_before` (read per judged minute, so kept
        few) and, with `facts_before`, the contributions and members before it of groups not in
        `keep` (never opened: the large part), and the marks of workers silent since then.
        """
        ...

    async def clear(self) -> None:
        """Delete every incident record and watermark (before a rebuild)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
