"""The Redis Streams publisher never loses a buffered event, and batches its round trips."""

import asyncio
import time
from typing import Any

from redis.exceptions import NoPermissionError

from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.redis_streams import RedisStreamsEventPublisher
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

    async def execute(self) -> None:
        self.rounds.append(("pipeline", self._piped))
        self._piped = []

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
