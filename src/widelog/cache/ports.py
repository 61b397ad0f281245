"""Ports of the caches: session history and the exact-key response cache (docs/caches.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, frozen=True)
class ChatTurn:
    role: str  # "system" | "user" | "assistant"
    content: str


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

    Keys come from `widelog.cache.keys.answer_key`; each adapter adds its namespace.
    """

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> None:
        """Store or overwrite the answer under `key` for `ttl_s` seconds."""
        ...

    async def close(self) -> None: ...
