"""The Redis Streams publisher never loses a buffered event, even when Redis hangs, and tells
refusals for good from transient errors."""

import asyncio
from typing import Any

import pytest
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.redis_streams import RedisStreamsEventPublisher, refused_for_good
from widelog.pipeline.spool import FileSpool


class HangingRedis:
    """A client whose XADD pipeline never answers (a stalled server, a partition)."""

    def __init__(self) -> None:
        self.closed = False

    def pipeline(self, *, transaction: bool) -> Any:
        return self

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def xadd(self, *_: object, **__: object) -> None:
        return None

    async def execute(self, **_: object) -> None:
        await asyncio.sleep(3600)

    async def aclose(self) -> None:
        self.closed = True


async def test_close_spools_the_batch_in_flight_and_the_buffer_when_redis_hangs(tmp_path):
    spool = FileSpool(tmp_path)
    fallback = SpoolFallback(spool)
    redis = HangingRedis()
    publisher = RedisStreamsEventPublisher(
        redis,  # type: ignore[arg-type]
        stream="s",
        fallback=fallback,
        chunk=100,
    )
    for i in range(300):
        publisher.publish(f"req-{i}", b"{}")
    await asyncio.sleep(0.05)  # the flusher took its first 100 and hangs on them
    await publisher.close(timeout=0.2)
    spool.close()
    assert (0, 300) == (publisher.delivered, fallback.spooled)
    assert redis.closed


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (NoPermissionError("this user has no permissions to access one of the keys"), "NOPERM"),
        (
            ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            "WRONGTYPE",
        ),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), None),
        (BusyLoadingError("Redis is loading the dataset in memory"), None),
        (ReadOnlyError("You can't write against a read only replica."), None),
        (RedisConnectionError("Connection closed by server."), None),
    ],
)
def test_only_refusals_that_no_retry_can_change_are_for_good(error, reason):
    assert reason == refused_for_good(error)


class TimingOutRedis(HangingRedis):
    """A client whose XADD pipeline times out, as redis-py does after its socket timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def execute(self, **_: object) -> None:
        self.attempts += 1
        raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")


async def test_a_timed_out_xadd_is_spooled_at_once_not_retried(tmp_path):
    spool = FileSpool(tmp_path)
    fallback = SpoolFallback(spool)
    redis = TimingOutRedis()
    publisher = RedisStreamsEventPublisher(
        redis,  # type: ignore[arg-type]
        stream="s",
        fallback=fallback,
        retries=3,
        backoff=10,  # a retry would outlast the test
    )
    for i in range(50):
        publisher.publish(f"req-{i}", b"{}")
    await asyncio.sleep(0.1)
    assert (1, 50, True) == (redis.attempts, fallback.spooled, publisher.broker_down)
    await publisher.close(timeout=0.2)
    spool.close()
