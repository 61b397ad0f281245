"""Hand-written fakes for the cache tests: a backend that breaks on demand, an LLM that counts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from widelog.cache.memory import InMemorySemanticCache, InMemorySessionCache
from widelog.cache.ports import CachedAnswer, CacheUnavailableError, ChatTurn, CorruptValueError
from widelog.chat.fake_llm import FakeLLM
from widelog.chat.llm import LLMRequest, LLMResponse

Mode = Literal["ok", "down", "slow", "corrupt"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class BreakableCache:
    """Both cache ports over in-memory ones; `mode` makes every call fail the way Redis can."""

    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.calls = 0
        self.sessions = InMemorySessionCache(ttl_s=60, max_turns=20, max_bytes=65536)
        self.answers = InMemorySemanticCache()

    async def _gate(self) -> None:
        self.calls += 1
        if self.mode == "down":
            raise CacheUnavailableError("Redis unavailable: connection refused (fake)")
        if self.mode == "slow":
            await asyncio.sleep(3600)
        if self.mode == "corrupt":
            raise CorruptValueError("not a session turn (fake garbage)")

    async def history(self, session_id: str) -> list[ChatTurn]:
        await self._gate()
        return await self.sessions.history(session_id)

    async def append(self, session_id: str, turns: Sequence[ChatTurn]) -> None:
        await self._gate()
        await self.sessions.append(session_id, turns)

    async def clear(self, session_id: str) -> None:
        await self._gate()
        await self.sessions.clear(session_id)

    async def get(self, key: str) -> CachedAnswer | None:
        await self._gate()
        return await self.answers.get(key)

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> None:
        await self._gate()
        await self.answers.put(key, answer, ttl_s=ttl_s)

    async def close(self) -> None:
        return None


class CountingLLM(FakeLLM):
    """The fake LLM with no latency that records every request; `hold` keeps answers waiting."""

    def __init__(self) -> None:
        super().__init__(latency_median_ms=0, latency_sigma=0)
        self.requests: list[LLMRequest] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        await self.hold.wait()
        return await super().complete(request)
