"""Ports: what the core needs from the outside world, as small structural Protocols.

Adapters satisfy these without inheriting from them; `bootstrap.py` picks one per port from
settings. Every adapter of a port passes the same contract tests (`tests/contract/`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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

    async def close(self) -> None: ...


@dataclass(slots=True)
class WriteResult:
    """What a batch write did, by index in the batch.

    Duplicates are events already stored (a re-delivery): success, not failure, but they must not
    be counted again by anything downstream (incidents), hence their indexes.
    """

    inserted: int = 0
    duplicate_indexes: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_indexes)


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A message set aside with the reason, so it can be inspected and never stalls the source."""

    payload: bytes
    error: str
    source: str  # where it came from, e.g. "kafka@log-events/2@1234"
    # The message's unique position when the source has one: a re-delivered poison message is
    # set aside once, not once per delivery. None (in-process queue): every letter is kept.
    letter_id: str | None = None


class LoggerPort(Protocol):
    """Durable event storage. `write_batch` is idempotent: `event_id` is the key.

    Events read back as they were written, except `timestamp`: an aware `datetime` (stores differ
    in precision; MongoDB keeps milliseconds).
    """

    async def write_batch(self, events: Sequence[Mapping[str, Any]]) -> WriteResult: ...

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    async def get_event(self, event_id: str) -> dict[str, Any] | None: ...

    async def count_events(self, *, errors_only: bool = False) -> int: ...

    def scan_events(self, *, batch_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Every stored event, oldest first (for re-weighting, rebuilds and exports)."""
        ...

    async def count_dead_letters(self) -> int: ...

    async def ping(self) -> None:
        """Raise if the store cannot serve requests."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class ChatTurn:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(slots=True, frozen=True)
class LLMRequest:
    messages: Sequence[ChatTurn]
    prompt_version: str
    language: str | None = None


@dataclass(slots=True, frozen=True)
class LLMResponse:
    text: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    complete: bool = True  # False when the model was cut off (a length limit): never cached


class LLMError(Exception):
    """A failed completion; `code` (e.g. LLM_TIMEOUT) is what events and incidents group by."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class LLMPort(Protocol):
    """A chat completion backend."""

    @property
    def model(self) -> str: ...

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """The answer, or `LLMError` with a code; never another exception for provider failures."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


# --- Caches: session history and the exact-key response cache (docs/caches.md) ----------------


class CacheError(Exception):
    """A cache could not answer. Callers read it as a miss: a cache never fails a request."""


class CacheUnavailableError(CacheError):
    """The backend did not answer (down, refused, timed out): counts against its circuit breaker."""


class CorruptValueError(CacheError):
    """The backend answered with a value this code cannot read (garbage, unknown schema version).

    The backend is healthy, so this never opens a circuit; the value reads as a miss.
    """


class SessionCachePort(Protocol):
    """Conversation history per session, capped in turns and bytes, expiring after the last write.

    The TTL slides on writes only (a read does not keep a session alive). Caps drop the oldest
    turns first; bytes are counted as stored (the encoded turn), so every adapter trims alike.
    """

    async def history(self, session_id: str) -> list[ChatTurn]:
        """Oldest turn first; empty for an unknown or expired session."""
        ...

    async def append(self, session_id: str, turns: Sequence[ChatTurn]) -> None:
        """Add `turns` at the end, trim to the caps and refresh the TTL, all at once."""
        ...

    async def clear(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class CachedAnswer:
    """A complete, successful LLM answer as the response cache keeps it."""

    text: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    created_at: float  # Unix seconds


class SemanticCachePort(Protocol):
    """Exact-key response cache ("semantic" in the spec; no similarity search in this phase).

    Keys come from `widelog.domain.cache_keys.answer_key`; each adapter adds its namespace.
    """

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> None:
        """Store or overwrite the answer under `key` for `ttl_s` seconds."""
        ...

    async def close(self) -> None: ...


# --- Incidents (issue 6): shared, insert-only state of the incident aggregator ------------------

from typing import TYPE_CHECKING  # noqa: E402 - appended section; kept apart from the ports above

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Collection

    from widelog.domain.incidents import Contribution, MinuteTotals, ScopeCount, Transition


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
