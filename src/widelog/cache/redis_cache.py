"""Redis caches shared by every API instance: session history (a list) and answers (strings).

Keys: `<namespace>:session:<session id>` (a list of versioned JSON turns, oldest first) and
`<namespace>:answer:<key>` (one versioned JSON answer). The namespace lets several deployments
or tests share one Redis and lets operators find or drop one deployment's keys by prefix.

A session append is one Lua script, so the push, both trims and the TTL refresh happen atomically:
there is never a moment when a session exists without its TTL or above its caps, and two
instances appending to one session at once never lose a turn.

The client is made for failing fast (`cache_client`): the caller bounds every operation anyway
(`cache/fail_open.py`), and a retry here would only spend that budget on a backend that is down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from widelog.cache.ports import CachedAnswer, CacheUnavailableError, ChatTurn, CorruptValueError
from widelog.cache.values import (
    UndecodableValueError,
    decode_answer,
    decode_turn,
    encode_answer,
    encode_turn,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

T = TypeVar("T")

# KEYS[1] the session list; ARGV: max turns, max bytes, TTL in ms, then the encoded turns.
# The byte trim mirrors `widelog.cache.values.first_kept`. A key holding something other
# than a list (garbage written by hand or by a bug) is replaced instead of failing every append.
APPEND_SCRIPT: Final = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local total = 0
for _, item in ipairs(items) do total = total + #item end
local drop = 0
while drop < #items and total > tonumber(ARGV[2]) do
  drop = drop + 1
  total = total - #items[drop]
end
if drop == #items then
  redis.call('DEL', KEYS[1])
  return 0
end
if drop > 0 then redis.call('LTRIM', KEYS[1], drop, -1) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return #items - drop
"""


def cache_client(url: str, *, timeout_s: float) -> Redis:
    """A client that fails fast: short connect and read timeouts, no retries, no pings."""
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


async def _translated(operation: Awaitable[T]) -> T:
    """Redis failures as the port's errors: unavailable (breaker) or corrupt (a miss)."""
    try:
        return await operation
    except ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):
            raise CorruptValueError(f"wrong Redis type: {exc}") from exc
        raise CacheUnavailableError(f"Redis refused: {exc}") from exc
    except (RedisError, OSError) as exc:
        raise CacheUnavailableError(f"Redis unavailable: {exc!r}") from exc


class RedisSessionCache:
    def __init__(
        self, redis: Redis, *, namespace: str, ttl_s: float, max_turns: int, max_bytes: int
    ) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:session:"
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._max_turns = max_turns
        self._max_bytes = max_bytes
        self._append = redis.register_script(APPEND_SCRIPT)

    def key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def history(self, session_id: str) -> list[ChatTurn]:
        raw = await _translated(self._redis.lrange(self.key(session_id), 0, -1))
        try:
            return [ChatTurn(*decode_turn(item)) for item in raw]
        except UndecodableValueError as exc:
            raise CorruptValueError(str(exc)) from exc

    async def append(self, session_id: str, turns: Sequence[ChatTurn]) -> None:
        if not turns:
            return
        encoded = [encode_turn(t.role, t.content) for t in turns]
        limits = [self._max_turns, self._max_bytes, self._ttl_ms]
        await _translated(self._append(keys=[self.key(session_id)], args=[*limits, *encoded]))

    async def clear(self, session_id: str) -> None:
        await _translated(self._redis.delete(self.key(session_id)))

    async def close(self) -> None:
        """Nothing to do: the client is shared, and closed by whoever made it (bootstrap)."""


class RedisSemanticCache:
    def __init__(self, redis: Redis, *, namespace: str) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:answer:"

    def key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> CachedAnswer | None:
        raw = await _translated(self._redis.get(self.key(key)))
        if raw is None:
            return None
        try:
            stored = decode_answer(raw)
        except UndecodableValueError as exc:
            raise CorruptValueError(str(exc)) from exc
        return CachedAnswer(
            text=stored.text,
            model=stored.model,
            provider=stored.provider,
            input_tokens=stored.input_tokens,
            output_tokens=stored.output_tokens,
            created_at=stored.created_at,
        )

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> None:
        value = encode_answer(
            text=answer.text,
            model=answer.model,
            provider=answer.provider,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            created_at=answer.created_at,
        )
        px = max(1, round(ttl_s * 1000))
        await _translated(self._redis.set(self.key(key), value, px=px))

    async def close(self) -> None:
        """Nothing to do: the client is shared, and closed by whoever made it (bootstrap)."""
