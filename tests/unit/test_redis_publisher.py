"""The Redis Streams publisher never loses a buffered event, even when Redis hangs, batches its
round trips, and tells refusals for good from transient errors."""

import asyncio
import time
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


class RecordingRedis:
    """Answers at once; records each round (script call or pipeline) and the keys it carried."""

    def __init__(self, *, scripting: bool = True) -> None:
        self.scripting = scripting
        self.rounds: list[tuple[str, list[str]]] = []
        self._piped: list[str] = []
        self.closed = False

    def register_script(self, _source: str) -> Any:
        async def run(*, keys: list[str], args: list[Any]) -> int:
            if not self.scripting:
                raise NoPermissionError("this user has no permissions to run the 'evalsha' command")
            self.rounds.append(("script", [str(k) for k in args[1::2]]))
            return len(args) // 2

        return run

    def pipeline(self, *, transaction: bool) -> Any:
        return self

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def xadd(self, _stream: str, fields: dict[bytes, Any], **__: object) -> None:
        self._piped.append(str(fields[b"k"]))

    async def execute(self, **_: object) -> list[bytes]:
        self.rounds.append(("pipeline", self._piped))
        answers, self._piped = [b"0-1"] * len(self._piped), []
        return answers

    async def aclose(self) -> None:
        self.closed = True


class HangingRedis(RecordingRedis):
    """A client whose XADD round never answers (a stalled server, a partition)."""

    def register_script(self, _source: str) -> Any:
        async def run(**_: object) -> None:
            await asyncio.sleep(3600)

        return run


def _publisher(redis: RecordingRedis, tmp_path: Any, **options: Any) -> Any:
    fallback = SpoolFallback(FileSpool(tmp_path))
    publisher = RedisStreamsEventPublisher(
        redis,  # type: ignore[arg-type]
        stream="s",
        fallback=fallback,
        **options,
    )
    return publisher, fallback


async def test_close_spools_the_batch_in_flight_and_the_buffer_when_redis_hangs(tmp_path):
    redis = HangingRedis()
    publisher, fallback = _publisher(redis, tmp_path, chunk=100)
    for i in range(300):
        publisher.publish(f"req-{i}", b"{}")
    await asyncio.sleep(0.05)  # the flusher took its first 100 and hangs on them
    await publisher.close(timeout=0.2)
    fallback.spool.close()
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
    """A client whose XADD round times out, as redis-py does after its socket timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def register_script(self, _source: str) -> Any:
        async def run(**_: object) -> None:
            self.attempts += 1
            raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")

        return run


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


async def test_events_at_a_steady_rate_share_round_trips_in_order(tmp_path):
    redis = RecordingRedis()
    publisher, _ = _publisher(redis, tmp_path, linger_ms=30)
    for i in range(40):
        publisher.publish(f"req-{i}", b"{}")
        await asyncio.sleep(0.002)  # one request ends per loop iteration
    await publisher.close()
    keys = [key for _, batch in redis.rounds for key in batch]
    assert [f"req-{i}" for i in range(40)] == keys
    assert len(redis.rounds) <= 8  # ~100 ms of events in 30 ms rounds, not one round each
    assert 40 == publisher.delivered


async def test_a_full_chunk_is_sent_without_waiting_for_the_linger(tmp_path):
    redis = RecordingRedis()
    publisher, _ = _publisher(redis, tmp_path, linger_ms=10_000, chunk=10)
    for i in range(10):
        publisher.publish(f"req-{i}", b"{}")
    await asyncio.sleep(0.05)
    assert [("script", [f"req-{i}" for i in range(10)])] == redis.rounds
    await publisher.close()


async def test_flush_sends_at_once_instead_of_lingering(tmp_path):
    redis = RecordingRedis()
    publisher, _ = _publisher(redis, tmp_path, linger_ms=10_000)
    publisher.publish("req-1", b"{}")
    started = time.monotonic()
    assert 0 == await publisher.flush(5)
    assert time.monotonic() - started < 1
    assert 1 == publisher.delivered
    await publisher.close()


async def test_without_scripting_it_pipelines_the_xadds_and_loses_nothing(tmp_path):
    redis = RecordingRedis(scripting=False)
    publisher, fallback = _publisher(redis, tmp_path, linger_ms=0)
    for i in range(3):
        publisher.publish(f"req-{i}", b"{}")
    await publisher.flush(5)
    publisher.publish("req-3", b"{}")
    await publisher.close()
    assert [f"req-{i}" for i in range(4)] == [k for _, batch in redis.rounds for k in batch]
    assert {"pipeline"} == {kind for kind, _ in redis.rounds}
    assert (4, 0) == (publisher.delivered, fallback.spooled)
