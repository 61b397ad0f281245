"""Ports of the pipeline: publishing, consuming and storing events, and the spool.

Adapters satisfy these structurally (no inheritance); `widelog.bootstrap` picks one per port from
settings. Every adapter of a port passes the same contract tests (`tests/contract/`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from widelog.sampling.counts import CountRecord


class PublishError(Exception):
    """The transport could not accept an event right now (queue full, broker known down)."""


class EventPublisher(Protocol):
    """Hands serialized events to a transport. Called on the request path: must not block."""

    def publish(self, key: str, payload: bytes) -> None:
        """Accept the event or raise `PublishError`; never wait on the network."""
        ...

    async def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for events to leave the process; return how many remain."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Message:
    """One payload read from a transport; `position` is what the source needs to commit it."""

    payload: bytes
    position: Any = None


class EventSource(Protocol):
    """The consumer side of a transport. Nothing is committed until the store has it."""

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages`, waiting at most `timeout` s for the first one."""
        ...

    async def commit(self, messages: Sequence[Message]) -> None:
        """Mark messages as stored so they are never delivered to this group again."""
        ...

    async def keepalive(self) -> None:
        """Called while the store is down: stay a live member of the group without fetching."""
        ...

    async def backlog(self) -> dict[str, int]:
        """Messages not yet committed, by part (Kafka: partition; Redis: pending and unread).

        Their sum is the consumer lag that `/metrics` and readiness report; it asks the broker,
        so it raises while the broker does not answer.
        """
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class WriteResult:
    """What a batch write did, by index in the batch.

    Duplicates are events already stored (a re-delivery): success, not failure, but they must not
    be counted again by anything downstream (incidents), hence their indexes. Conflicts are events
    whose `event_id` is stored with *other* content: the stored version stays, the new one is kept
    among the store's conflicts (`pipeline/conflicts.py`); not counted downstream either.
    """

    inserted: int = 0
    duplicate_indexes: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)
    conflict_indexes: list[int] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_indexes)

    @property
    def conflicts(self) -> int:
        return len(self.conflict_indexes)


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A message set aside with the reason, so it can be inspected and never stalls the source."""

    payload: bytes
    error: str
    source: str  # where it came from, e.g. "kafka@log-events/2@1234"
    # The message's unique position when the source has one: a re-delivered poison message is
    # set aside once, not once per delivery. None (in-process queue): every letter is kept.
    letter_id: str | None = None


@dataclass(slots=True, frozen=True)
class EventQuery:
    """An operator's search: every filter optional, all given must hold; newest first."""

    request_id: str | None = None
    since: dt.datetime | None = None  # inclusive, aware
    until: dt.datetime | None = None  # exclusive, aware
    route: str | None = None  # the template, e.g. /v1/chat
    status: int | None = None
    error_code: str | None = None
    session_id: str | None = None
    model: str | None = None  # llm.model
    limit: int = 50


class EventStore(Protocol):
    """Durable event storage. `write_batch` is idempotent: `event_id` is the key.

    Events read back as they were written, except `timestamp`: an aware `datetime` (stores differ
    in precision; MongoDB keeps milliseconds).
    """

    async def write_batch(self, events: Sequence[Mapping[str, Any]]) -> WriteResult: ...

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    async def get_event(self, event_id: str) -> dict[str, Any] | None: ...

    async def count_events(
        self, *, errors_only: bool = False, request_ids: Collection[str] | None = None
    ) -> int:
        """How many are stored; with `request_ids`, only those (a run's own, in a shared store)."""
        ...

    async def find_events(self, query: EventQuery) -> list[dict[str, Any]]:
        """The stored events that match, newest first, at most `query.limit`; served by indexes."""
        ...

    def scan_events(self, *, batch_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Every stored event, oldest first (for re-weighting, rebuilds and exports)."""
        ...

    async def count_dead_letters(self) -> int: ...

    async def find_conflicts(self, event_id: str) -> list[dict[str, Any]]:
        """The versions of `event_id` that arrived after another was stored, oldest first.

        Each: `event_id`, `reason` ("conflicting duplicate"), `received_at`, `content_hash`,
        `stored_hash` (of the version the store kept) and `event` (the version set aside).
        """
        ...

    async def count_conflicts(self) -> int: ...

    async def expire(self, *, now: dt.datetime | None = None) -> int:
        """Delete events past the retention period where the server does not; return how many."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot serve requests."""
        ...

    async def close(self) -> None: ...


class RequestCountStore(Protocol):
    """Where count records (`widelog.sampling.counts`) are kept, beside the events.

    One record per `id` (emitter|minute): a record with a higher `version` replaces the stored
    one, any other is ignored, so re-sent, duplicated and out-of-order copies never add up.
    """

    async def write_request_counts(self, records: Sequence[CountRecord]) -> None: ...

    async def request_counts(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[CountRecord]:
        """The records of the minutes in [since, until) (every record if both are None)."""
        ...

    async def sampled_weights(
        self,
        scope: Mapping[str, str | None],
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        exclude: Collection[tuple[str, dt.datetime]] = (),
    ) -> list[tuple[str | None, dt.datetime | None, float]]:
        """(emitter, timestamp, weight) of each stored event in [since, until) in `scope`.

        `scope` maps dot paths to values (None: missing). Estimates stand on these where a
        count record is missing; events of the (emitter, minute)s in `exclude` (those with a
        record) are left out by the store, so it sends only what is needed.
        """
        ...


class CountingEventStore(EventStore, RequestCountStore, Protocol):
    """An event store that also keeps count records (both built-in stores)."""


class Quarantine(Protocol):
    """Records refused for good during one replay; `commit` keeps them, `discard` forgets them."""

    path: Path
    count: int

    def add(self, key: str, payload: bytes) -> None: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class Spool(Protocol):
    """Durable local storage for events the message queue could not take, replayed later.

    Segments are appended to by one writer each and claimed by one replayer at a time; a claimed
    segment is deleted (by its path) only after every record in it was acknowledged.
    """

    def append(self, key: str, payload: bytes) -> None: ...

    def bytes_used(self) -> int:
        """Bytes the spool holds, segments and quarantined records (may be a second old)."""
        ...

    def rotate(self) -> None:
        """Seal the segment being written so a replayer can claim it."""
        ...

    def segments(self) -> list[Path]: ...

    def rejected(self) -> list[Path]:
        """Files of records the broker refused for good (replayed only on demand)."""
        ...

    def quarantine(self, of: Path) -> Quarantine:
        """Where the records of `of` (a segment or a rejected file) that are refused go."""
        ...

    def has_pending(self) -> bool: ...

    def claim(
        self, path: Path
    ) -> contextlib.AbstractContextManager[Iterator[tuple[str, bytes]] | None]:
        """The segment's records, or None if another process holds it."""
        ...

    def close(self) -> None: ...
