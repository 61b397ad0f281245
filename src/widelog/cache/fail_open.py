"""Caches that fail open: whatever the backend does, a lookup ends in bounded time with an outcome.

Every backend operation runs within `timeout_s` and reports to a `CircuitBreaker`; any failure
(down, slow, refused, garbage) becomes an outcome instead of an exception:

| outcome | meaning |
|---|---|
| `hit` / `miss` | the backend answered |
| `bypass` | not looked up: the request asked for that (`no_cache`) |
| `error` | the lookup failed (timeout, connection, corrupt value) and counted as a miss |
| `degraded` | the circuit is open: not looked up; sessions use the per-instance fallback |

While the circuit is open, session turns go to an in-process fallback. They are "pending": a
read adds them after what Redis holds, and the session's next successful write moves them to
Redis, so a conversation that stayed on one instance is whole again once Redis is back. During
the outage a session does not follow its user to another instance, and continues from the turns
written since the outage began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from widelog.cache.ports import CacheError, CacheUnavailableError, CorruptValueError
from widelog.histogram import Histogram

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from widelog.cache.circuit_breaker import CircuitBreaker
    from widelog.cache.ports import CachedAnswer, ChatTurn, SemanticCachePort, SessionCachePort

log = logging.getLogger("widelog.cache")
V = TypeVar("V")
Outcome = Literal["hit", "miss", "bypass", "error", "degraded"]
WriteOutcome = Literal["ok", "skipped", "error", "degraded"]


@dataclass(slots=True, frozen=True)
class Lookup(Generic[V]):
    outcome: Outcome
    value: V
    ms: float
    reason: str | None = None


@dataclass(slots=True)
class CacheCounters:
    """Outcomes per cache. Hit rate = hits / lookups attempted (every outcome but `bypass`)."""

    lookups: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    lookup_ms: Histogram = field(default_factory=Histogram)

    @property
    def hit_rate(self) -> float:
        attempted = self.lookups.total() - self.lookups["bypass"]
        return self.lookups["hit"] / attempted if attempted else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hit_rate": round(self.hit_rate, 4),
            "lookups": dict(self.lookups),
            "writes": dict(self.writes),
        }


class _ThrottledLog:
    """One warning per `every_s` per cache, with a count: an outage must not flood the log."""

    def __init__(self, name: str, *, every_s: float = 5.0) -> None:
        self._name = name
        self._every_s = every_s
        self._last = -every_s
        self._count = 0

    def warning(self, message: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self._every_s:
            log.warning(
                "%s cache: %s (%d like it since the last)", self._name, message, self._count
            )
            self._last, self._count = now, 0


class _FailOpen:
    def __init__(
        self, name: str, *, breaker: CircuitBreaker | None, timeout_s: float | None
    ) -> None:
        self.name = name
        self.breaker = breaker
        self.timeout_s = timeout_s
        self.counters = CacheCounters()
        self._log = _ThrottledLog(name)

    def _allowed(self) -> bool:
        return self.breaker is None or self.breaker.allow()

    async def _call(self, operation: Callable[[], Awaitable[V]]) -> V:
        """One backend operation within the time budget; every failure becomes a `CacheError`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await operation()
        except CorruptValueError:
            self._succeeded()  # the backend answered; only the value is bad
            raise
        except TimeoutError as exc:
            reason = f"no answer within {self.timeout_s * 1000 if self.timeout_s else 0:.0f} ms"
            self._failed(reason)
            raise CacheUnavailableError(reason) from exc
        except Exception as exc:  # any failure of a cache must stay a miss
            reason = str(exc) if isinstance(exc, CacheError) else repr(exc)
            self._failed(reason)
            raise CacheUnavailableError(reason[:300]) from exc
        self._succeeded()
        return result

    def _succeeded(self) -> None:
        if self.breaker is not None:
            self.breaker.record_success()

    def _failed(self, reason: str) -> None:
        if self.breaker is not None:
            self.breaker.record_failure(reason)
        self._log.warning(f"backend failed, read as a miss: {reason}")

    def _lookup(self, outcome: Outcome, value: V, started: float, reason: str | None) -> Lookup[V]:
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.counters.lookups[outcome] += 1
        self.counters.lookup_ms.observe(elapsed_ms)
        return Lookup(outcome, value, elapsed_ms, reason)

    def _wrote(self, outcome: WriteOutcome) -> WriteOutcome:
        self.counters.writes[outcome] += 1
        return outcome


class FailOpenSessionCache(_FailOpen):
    def __init__(
        self,
        primary: SessionCachePort,
        *,
        fallback: SessionCachePort | None = None,
        breaker: CircuitBreaker | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__("session", breaker=breaker, timeout_s=timeout_s)
        self._primary = primary
        self._fallback = fallback

    async def read(self, session_id: str) -> Lookup[list[ChatTurn]]:
        started = time.perf_counter()
        pending = await self._fallback.history(session_id) if self._fallback else []
        if not self._allowed():
            return self._lookup("degraded", pending, started, "circuit open: this instance only")
        try:
            turns = await self._call(lambda: self._primary.history(session_id))
        except CorruptValueError as exc:
            self._log.warning(f"corrupt history for session {session_id!r}, cleared: {exc}")
            with contextlib.suppress(CacheError):  # the read is a miss either way
                await self._call(lambda: self._primary.clear(session_id))
            return self._lookup("error", pending, started, f"corrupt value: {exc}")
        except CacheError as exc:
            return self._lookup("error", pending, started, str(exc))
        turns += pending
        return self._lookup("hit" if turns else "miss", turns, started, None)

    async def write(self, session_id: str, turns: Sequence[ChatTurn]) -> WriteOutcome:
        if not self._allowed():
            if self._fallback is not None:
                await self._fallback.append(session_id, turns)
            return self._wrote("degraded")
        pending: list[ChatTurn] = []
        if self._fallback is not None:
            pending = await self._fallback.history(session_id)
            if pending:  # taken now, so a concurrent write of this session does not send them too
                await self._fallback.clear(session_id)
        try:
            await self._call(lambda: self._primary.append(session_id, [*pending, *turns]))
        except CacheError:
            if self._fallback is not None:
                await self._fallback.append(session_id, [*pending, *turns])
            return self._wrote("error")
        return self._wrote("ok")

    async def close(self) -> None:
        await self._primary.close()
        if self._fallback is not None:
            await self._fallback.close()


class FailOpenSemanticCache(_FailOpen):
    def __init__(
        self,
        primary: SemanticCachePort,
        *,
        breaker: CircuitBreaker | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__("semantic", breaker=breaker, timeout_s=timeout_s)
        self._primary = primary

    async def get(self, key: str, *, bypass: bool = False) -> Lookup[CachedAnswer | None]:
        started = time.perf_counter()
        if bypass:
            return self._lookup("bypass", None, started, "no_cache")
        if not self._allowed():
            return self._lookup("degraded", None, started, "circuit open")
        try:
            answer = await self._call(lambda: self._primary.get(key))
        except CorruptValueError as exc:
            self._log.warning(f"corrupt answer at {key}, read as a miss: {exc}")
            return self._lookup("error", None, started, f"corrupt value: {exc}")
        except CacheError as exc:
            return self._lookup("error", None, started, str(exc))
        return self._lookup("miss" if answer is None else "hit", answer, started, None)

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> WriteOutcome:
        if not self._allowed():
            return self._wrote("degraded")
        try:
            await self._call(lambda: self._primary.put(key, answer, ttl_s=ttl_s))
        except CacheError:
            return self._wrote("error")
        return self._wrote("ok")

    def skipped(self) -> WriteOutcome:
        return self._wrote("skipped")

    async def close(self) -> None:
        await self._primary.close()


@dataclass
class ChatCaches:
    """Both caches of one process, what they share (breaker, client) and their counters."""

    sessions: FailOpenSessionCache
    answers: FailOpenSemanticCache
    backend: str
    breaker: CircuitBreaker | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """Hit rates and outcome counts (the demo report and metrics read this)."""
        return {
            "backend": self.backend,
            "session_hit_rate": round(self.sessions.counters.hit_rate, 4),
            "semantic_hit_rate": round(self.answers.counters.hit_rate, 4),
            "session": self.sessions.counters.as_dict(),
            "semantic": self.answers.counters.as_dict(),
            "circuit": self.breaker.state if self.breaker else None,
            "circuit_opened": self.breaker.opened if self.breaker else 0,
        }

    async def aclose(self) -> None:
        await self.sessions.close()
        await self.answers.close()
        for close in self.closers:
            await close()
