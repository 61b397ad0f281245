"""Redis Streams transport: XADD from a background flusher, XREADGROUP/XACK/XAUTOCLAIM to consume.

`publish()` is called on the request path and Redis is a network hop away, so it only appends to a
bounded in-process buffer; a task on the event loop pipelines the XADDs. Like librdkafka's queue,
that buffer is memory, not durability: an event is durable once XADD returned (and Redis persists,
per its own AOF/RDB settings) or once it is in the spool. Until then it is held in the in-flight
journal (`fallback.hold()`), which a SIGKILL of this process does not lose.

The flusher lingers as librdkafka does (`linger.ms`): it sends `linger_ms` after the first event
of a batch, or as soon as `chunk` events wait, never once per event. At a steady rate a wake-up and
a round trip per event cost ~140 µs of the API's CPU per event (issue #13: the loop iterations,
the pipeline object, the reply parsing), more than the XADDs themselves; one wake per 20 ms
shares that between every event of the interval. A burst fills whole chunks and never lingers.

Each round is one `EVALSHA` of a tiny Lua script that runs the XADDs in order, one stream entry
per event as before, instead of a pipeline of XADDs: redis-py spends ~35 µs of Python per
pipelined command (packing, one timed read and parse per reply) and ~3 µs per event in one
command. Where scripting is refused (an ACL without `@scripting`, a proxy without EVAL), the
publisher says so once and pipelines the XADDs as before.

The stream is capped with `MAXLEN ~ N` so Redis memory stays bounded: N must exceed the largest
backlog you expect, or entries no consumer has read yet are trimmed. The stream is exactly as
durable as Redis is: without AOF persistence a Redis restart loses every entry not yet consumed.

Like Kafka's, the XADDs Redis refuses *for good* — NOPERM (an ACL user who may not write the
stream or run XADD), WRONGTYPE (the stream's key holds another type) — are told apart from the
transient ones (a connection error, OOM under `maxmemory`, LOADING, READONLY after a failover): a
refused entry is spooled, and the replay moves it to the spool's `*.rejected` quarantine instead
of failing its segment forever (`SpoolReplayer`). An entry too large for `proto-max-bulk-len`
cannot happen: its minimum (1 MiB) is above the largest event (`WIDELOG_MAX_EVENT_BYTES`, 900 KiB).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from widelog.pipeline.ports import Message
from widelog.pipeline.replayer import Delivery

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.commands.core import AsyncScript

    from widelog.pipeline.fallback import SpoolFallback

log = logging.getLogger("widelog.redis")
KEY, VALUE = b"k", b"v"
# KEYS[1] the stream, ARGV[1] its MAXLEN (approximate), then key and payload of each event in
# order: the same entries a pipeline of `XADD stream MAXLEN ~ N * k key v payload` makes.
XADD_MANY: Final = """
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'k', ARGV[i], 'v', ARGV[i + 1])
end
return (#ARGV - 1) / 2
"""


def refused_for_good(error: Exception) -> str | None:
    """Why Redis will refuse this XADD however often it is sent; None if it may pass later."""
    if isinstance(error, NoPermissionError):
        return "NOPERM"
    if isinstance(error, ResponseError) and str(error).startswith("WRONGTYPE"):
        return "WRONGTYPE"
    return None


class RedisStreamsEventPublisher:
    def __init__(
        self,
        redis: Redis,
        *,
        stream: str,
        fallback: SpoolFallback,
        maxlen: int = 1_000_000,
        buffer_max: int = 100_000,
        chunk: int = 500,
        linger_ms: float = 20.0,
        retries: int = 3,
        backoff: float = 0.1,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._fallback = fallback
        self._maxlen = maxlen
        self._buffer: collections.deque[tuple[str, bytes]] = collections.deque()
        self._buffer_max = buffer_max
        self._chunk = chunk
        self._linger_s = linger_ms / 1000
        self._send_at = 0.0  # when the oldest buffered event has lingered long enough
        self._hurry = 0  # flush() callers waiting: send without lingering
        self._retries = retries
        self._backoff = backoff
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down = False
        self._inflight: list[tuple[str, bytes]] = []
        self._script: AsyncScript | None = None
        self._scripting = True  # until Redis refuses EVALSHA
        self.delivered = 0

    @property
    def broker_down(self) -> bool:
        return self._down

    @property
    def queue_depth(self) -> int:
        """Events buffered for the flusher, and the batch whose XADD has not answered yet."""
        return len(self._buffer) + len(self._inflight)

    def publish(self, key: str, payload: bytes) -> None:
        """Buffer the event for the flusher; call on the event loop."""
        if self._down or len(self._buffer) >= self._buffer_max:
            self._fallback.spill(key, payload, "redis down" if self._down else "buffer full")
            return
        self._fallback.hold(key, payload)  # until XADDed or spooled: a SIGKILL loses nothing
        buffer = self._buffer
        buffer.append((key, payload))
        if len(buffer) == 1:  # the first of a batch: the flusher may be idle
            loop = asyncio.get_running_loop()
            self._send_at = loop.time() + self._linger_s
            if self._task is None:
                self._task = loop.create_task(self._flush_forever(), name="widelog-redis-flusher")
            self._wakeup.set()
        elif len(buffer) == self._chunk:  # a full XADD round: no reason to linger
            self._wakeup.set()

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._lingers():
                # Woken by the timer, a full chunk, flush() or close(), whichever comes first.
                self._wakeup.clear()
                timer = loop.call_at(self._send_at, self._wakeup.set)
                await self._wakeup.wait()
                timer.cancel()
            batch = [self._buffer.popleft() for _ in range(min(self._chunk, len(self._buffer)))]
            self._inflight = batch  # until XADD answers: close() spools it if it must cancel
            refused = await self._xadd_with_retries(
                batch, retries=0 if self._down else self._retries
            )
            if refused is not None:
                self.delivered += len(batch) - len(refused)
                refused_at = dict(refused)
                for index, (key, payload) in enumerate(batch):
                    if index in refused_at:  # the replay quarantines it if still refused
                        reason = f"refused by Redis: {refused_at[index]}"
                        self._fallback.spill(key, payload, reason, held=True)
                    else:
                        self._fallback.release(key.encode())
                        log.debug(
                            "Published log event to Redis stream: %s, requestId: %s",
                            self._stream,
                            key,
                        )
            else:
                # Redis is down: spool this batch and everything behind it now, rather than let
                # the buffer wait out one socket timeout per batch in memory.
                self._down = True
                self._spill(batch, "redis unavailable")
                self._spill(self._drain_buffer(), "redis unavailable")
            self._inflight = []

    def _lingers(self) -> bool:
        """Whether the flusher should wait for more events before the next XADD round."""
        return (
            len(self._buffer) < self._chunk
            and not (self._closing or self._hurry or self._down)
            and asyncio.get_running_loop().time() < self._send_at
        )

    def _drain_buffer(self) -> list[tuple[str, bytes]]:
        drained = list(self._buffer)
        self._buffer.clear()
        return drained

    def _spill(self, records: Sequence[tuple[str, bytes]], reason: str) -> None:
        """Spool buffered (so held) events."""
        for key, payload in records:
            self._fallback.spill(key, payload, reason, held=True)

    async def _xadd_with_retries(
        self, batch: Sequence[tuple[str, bytes]], *, retries: int
    ) -> list[tuple[int, str]] | None:
        """The refusals for good, by index, once Redis answered; None if it did not.

        A refused or reset connection is retried, never a timeout: a Redis that did not answer
        within the client's socket timeout is hung (stopped, or a network that drops packets),
        and one more wait would only keep the batch and the buffer behind it in memory longer:
        measured with Redis SIGSTOPped, four 5 s timeouts held every event for 21 s before the
        spool got them; now it is one timeout.
        """
        for attempt in range(retries + 1):
            try:
                return await self._xadd(batch)
            except (RedisError, OSError) as exc:
                if isinstance(exc, RedisTimeoutError | TimeoutError):
                    log.warning("XADD timed out (Redis not answering), not retried: %r", exc)
                    return None
                if attempt == retries:
                    log.warning("XADD failed after %d attempts: %r", attempt + 1, exc)
                    return None
                await asyncio.sleep(self._backoff * 2**attempt)
        return None

    async def _xadd(self, batch: Sequence[tuple[str, bytes]]) -> list[tuple[int, str]]:
        """One stream entry per event, in order; (index, reason) of those refused for good.

        One script call, or a pipeline without one. A script stops at its first failing XADD,
        so any refusal inside it sends the batch again as a pipeline, where each command answers
        for itself: one refused entry does not fail the others, and a transient error fails the
        batch (sent again whole: the store dedups what the script had added already).
        """
        if self._scripting:
            if self._script is None:
                self._script = self._redis.register_script(XADD_MANY)
            args: list[str | bytes | int] = [self._maxlen]
            for key, payload in batch:
                args += (key, payload)
            try:
                await self._script(keys=[self._stream], args=args)
            except ResponseError as exc:
                if _refuses_scripting(exc):
                    self._scripting = False
                    log.warning(
                        "Redis refused the XADD script (%s): pipelining XADDs instead, which"
                        " costs the API ~10x more CPU per event",
                        exc,
                    )
            else:
                return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, payload in batch:
                pipe.xadd(
                    self._stream, {KEY: key, VALUE: payload}, maxlen=self._maxlen, approximate=True
                )
            results = await pipe.execute(raise_on_error=False)
        refused = []
        for index, result in enumerate(results):
            if isinstance(result, Exception):
                reason = refused_for_good(result)
                if reason is None:
                    raise result
                refused.append((index, reason))
        return refused

    async def deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> Delivery:
        """XADD and wait for Redis to answer (the spool replay path); refusals for good apart."""
        try:
            refused = await asyncio.wait_for(self._xadd(records), timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("replay XADD failed: %r", exc)
            return Delivery(ok=False)
        if len(refused) < len(records):
            if self._down:
                log.warning("Redis accepts events again: publishing resumes")
            self._down = False
        return Delivery(ok=True, refused=refused)

    async def flush(self, timeout: float) -> int:
        """Send what is buffered now (no lingering); wait until Redis answered every XADD."""
        deadline = time.monotonic() + timeout
        self._hurry += 1
        self._wakeup.set()
        try:
            while self.queue_depth and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded
                await asyncio.sleep(0.005)
        finally:
            self._hurry -= 1
        return self.queue_depth

    async def close(self, timeout: float = 10.0) -> None:
        """Flush the buffer (what is left after `timeout` goes to the spool); close the client."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._spill(self._inflight, "shutdown before XADD answered")
        self._spill(self._drain_buffer(), "shutdown before XADD")
        await self._redis.aclose()


class RedisStreamsEventSource:
    """A consumer in a Redis consumer group; entries are XACKed only after the store has them."""

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        claim_idle_ms: int = 30_000,
        claim_every_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._claim_every_s = claim_every_s
        self._next_claim = 0.0
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def backlog(self) -> dict[str, int]:
        """Pending (delivered, not acknowledged) and unread (not delivered yet) entries.

        Redis >= 7 reports `unread` (the group's lag); older servers give 0 for it.
        """
        await self._ensure_group()
        groups = await self._redis.xinfo_groups(self._stream)
        mine = next((g for g in groups if _text(g.get("name")) == self._group), {})
        return {"pending": int(mine.get("pending") or 0), "unread": int(mine.get("lag") or 0)}

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        await self._ensure_group()
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self._claim_every_s
            claimed = await self._claim_abandoned(max_messages)
            if claimed:
                return claimed
        block = int(timeout * 1000)
        try:
            response = await self._redis.xreadgroup(
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=max_messages,
                block=block if block > 0 else None,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted without persistence: recreate the group
                self._group_ready = False
            raise
        streams: Any = response or []  # RESP2: [[stream, entries]]
        return [message for _, entries in streams for message in _messages(entries)]

    async def _claim_abandoned(self, count: int) -> list[Message]:
        """Take over entries a dead consumer read but never acknowledged."""
        response = await self._redis.xautoclaim(
            self._stream, self._group, self._consumer, self._claim_idle_ms, "0-0", count=count
        )
        messages = list(_messages(response[1]))
        if messages:
            log.info("claimed %d entries left pending by another consumer", len(messages))
        deleted = response[2] if len(response) > 2 else []
        if deleted:
            # Trimmed by MAXLEN before anyone stored them: lost. Raise MAXLEN (or fix the store).
            log.error(
                "%d pending entries were trimmed from %s before being stored: %s",
                len(deleted),
                self._stream,
                deleted[:5],
            )
            await self._redis.xack(self._stream, self._group, *deleted)
        return messages

    async def keepalive(self) -> None:
        return None  # a consumer group has no session to lose while we wait on the store

    async def commit(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._redis.xack(self._stream, self._group, *(m.position for m in messages))

    async def close(self) -> None:
        await self._redis.aclose()


def _refuses_scripting(exc: ResponseError) -> bool:
    """A reply meaning "no scripting here" (ACL, a proxy without EVAL), not "this batch failed".

    NOPERM for the command (`no permissions to run the 'evalsha' command`), not for the stream
    key (`... to access one of the keys`): that one is the batch's refusal, told per entry.
    """
    text = str(exc).lower()
    return (isinstance(exc, NoPermissionError) and "command" in text) or "unknown command" in text


def _messages(entries: Any) -> list[Message]:
    out = []
    for entry_id, fields in entries:
        if fields is None:  # deleted (trimmed) while pending
            continue
        position = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        out.append(Message(fields.get(VALUE, b""), position))
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
