"""XADDs Redis refuses for good are quarantined like Kafka's, and published once fixed.

Against the real Redis: an ACL user who may not write the stream (NOPERM) publishing through the
live path and the replay in-process, and a stream key holding a string (WRONGTYPE) replayed by
`widelog replay` in a separate process.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.integration.test_kafka_refusals_live import event, replay
from tests.live import REDIS_PORT, REDIS_URL, unique
from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.redis_streams import RedisStreamsEventPublisher
from widelog.pipeline.replayer import SpoolReplayer
from widelog.pipeline.spool import FileSpool

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(120)]


async def request_ids_in(redis: Redis, stream: str) -> list[str]:
    entries: Any = await redis.xrange(stream)
    return sorted(json.loads(fields[b"v"])["request_id"] for _, fields in entries)


@pytest.fixture
async def admin(live_services) -> AsyncIterator[Redis]:
    redis = Redis.from_url(REDIS_URL)
    yield redis
    await redis.aclose()


@pytest.fixture
async def writer_without_permission(admin: Redis) -> AsyncIterator[tuple[str, str]]:
    """An ACL user allowed every command, on keys other than the stream; (user, stream)."""
    user, stream = unique("widelog-test-user"), unique("log-events")
    await admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=[f"{stream}-other*"], commands=["+@all"]
    )
    yield user, stream
    await admin.acl_deluser(user)
    await admin.delete(stream)


async def test_an_acl_user_who_may_not_write_the_stream_quarantines_then_delivers_after_the_fix(
    admin: Redis, writer_without_permission: tuple[str, str], tmp_path: Path
) -> None:
    user, stream = writer_without_permission
    spool = FileSpool(tmp_path / "spool")
    fallback = SpoolFallback(spool)
    publisher = RedisStreamsEventPublisher(
        Redis.from_url(f"redis://{user}:pw@127.0.0.1:{REDIS_PORT}/0"),
        stream=stream,
        fallback=fallback,
        retries=0,
    )
    keys = [f"noperm-{i}" for i in range(30)]
    for key in keys:
        publisher.publish(key, event(key))
    assert 0 == await publisher.flush(10)
    assert (0, 30, False) == (publisher.delivered, fallback.spooled, publisher.broker_down)

    replayer = SpoolReplayer(spool, publisher)
    assert 0 == await replayer.replay_once()
    assert (30, [], 1) == (replayer.stats.rejected, spool.segments(), len(spool.rejected()))
    assert 0 == await admin.exists(stream)

    await admin.acl_setuser(user, enabled=True, keys=[stream])
    assert 30 == await replayer.replay_once(rejected=True)
    assert ([], 30) == (spool.rejected(), await admin.xlen(stream))
    assert sorted(keys) == await request_ids_in(admin, stream)
    await publisher.close()
    spool.close()


async def test_a_stream_key_of_another_type_quarantines_the_replay_then_delivers_after_the_fix(
    admin: Redis, tmp_path: Path
) -> None:
    stream = unique("log-events")
    await admin.set(stream, "not a stream")
    spool_dir = tmp_path / "spool"
    spool = FileSpool(spool_dir)
    keys = [f"wrongtype-{i}" for i in range(20)]
    for key in keys:
        spool.append(key, event(key))
    spool.close()
    env = {
        **os.environ,
        "WIDELOG_TRANSPORT": "redis",
        "WIDELOG_REDIS_URL": REDIS_URL,
        "WIDELOG_REDIS_STREAM": stream,
        "WIDELOG_SPOOL_DIR": str(spool_dir),
    }
    try:
        first = replay(env)
        assert 0 == first.returncode, first.stderr
        assert "refused 20 events" in first.stderr
        assert "WRONGTYPE" in first.stderr
        assert [] == FileSpool(spool_dir, fsync="never").segments()

        await admin.delete(stream)
        fixed = replay(env, "--rejected")
        assert 0 == fixed.returncode, fixed.stderr
        assert "replayed 20 rejected events" in fixed.stderr
        assert sorted(keys) == await request_ids_in(admin, stream)
        assert [] == FileSpool(spool_dir, fsync="never").rejected()
    finally:
        await admin.delete(stream)
