"""In-process caches: the embedded default, and the session fallback while Redis is unreachable.

Same semantics as the Redis adapters (the shared contract tests hold both to them): sliding TTL on
session writes, the same trimming rule, TTL per answer. Both are bounded by entry count with LRU
eviction, so a fallback that fills up during a long outage costs memory, not the process.
Expired entries are dropped when touched, or evicted as the least recently used.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from widelog.cache.ports import ChatTurn
from widelog.cache.values import encode_turn, first_kept

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from widelog.cache.ports import CachedAnswer

    Clock = Callable[[], float]


@dataclass(slots=True)
class _Session:
    turns: list[ChatTurn] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    expires_at: float = 0.0


class InMemorySessionCache:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_turns: int,
        max_bytes: int,
        max_sessions: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_turns = max_turns
        self._max_bytes = max_bytes
        self._max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[session_id]
            return None
        self._sessions.move_to_end(session_id)
        return session

    async def history(self, session_id: str) -> list[ChatTurn]:
        session = self._live(session_id)
        return list(session.turns) if session else []

    async def append(self, session_id: str, turns: Sequence[ChatTurn]) -> None:
        session = self._live(session_id) or _Session()
        session.turns += turns
        session.sizes += [len(encode_turn(t.role, t.content)) for t in turns]
        start = first_kept(session.sizes, max_turns=self._max_turns, max_bytes=self._max_bytes)
        del session.turns[:start], session.sizes[:start]
        if not session.turns:
            self._sessions.pop(session_id, None)
            return
        session.expires_at = self._clock() + self._ttl_s
        self._sessions[session_id] = session
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    async def clear(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def close(self) -> None:
        self._sessions.clear()


class InMemorySemanticCache:
    def __init__(self, *, max_entries: int = 10_000, clock: Clock = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[CachedAnswer, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        answer, expires_at = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> None:
        self._entries[key] = (answer, self._clock() + ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()
