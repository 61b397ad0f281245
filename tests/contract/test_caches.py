"""Contracts for `SessionCachePort` and `SemanticCachePort`: every adapter runs these.

Subclass and provide a factory fixture. TTLs are a few hundred milliseconds and checked with real
sleeps: Redis expires keys on its own clock, so the in-memory adapter is held to the same timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from widelog.cache.memory import InMemorySemanticCache, InMemorySessionCache
from widelog.cache.ports import (
    CachedAnswer,
    ChatTurn,
    CorruptValueError,
    SemanticCachePort,
    SessionCachePort,
)
from widelog.cache.values import encode_turn

SessionFactory = Callable[..., SessionCachePort]
AnswerFactory = Callable[..., SemanticCachePort]


def turn(i: int, role: str = "user", *, size: int = 10) -> ChatTurn:
    return ChatTurn(role, f"{i:0{size}d}")


def answer(text: str = "Answer 1234 to: 비밀번호를 어떻게 재설정하나요?") -> CachedAnswer:
    return CachedAnswer(
        text=text,
        model="fake-chat-1",
        provider="fake",
        input_tokens=3,
        output_tokens=7,
        created_at=time.time(),
    )


class SessionCacheContract:
    @pytest.fixture
    def make(self) -> SessionFactory:
        """`make(ttl_s=..., max_turns=..., max_bytes=..., namespace=...)` → a session cache."""
        raise NotImplementedError

    @pytest.fixture
    def sessions(self, make):
        return make()

    async def test_an_unknown_session_has_no_history(self, sessions):
        assert [] == await sessions.history("nobody")

    async def test_turns_read_back_in_order_across_appends(self, sessions):
        first = [ChatTurn("user", "비밀번호를 어떻게 재설정하나요?"), ChatTurn("assistant", "…")]
        second = [ChatTurn("user", "配送状況を確認するには？"), ChatTurn("assistant", "ok")]
        await sessions.append("s", first)
        await sessions.append("s", second)
        assert first + second == await sessions.history("s")

    async def test_each_session_has_its_own_history(self, sessions):
        await sessions.append("a", [turn(1)])
        await sessions.append("b", [turn(2)])
        assert ([turn(1)], [turn(2)]) == (
            await sessions.history("a"),
            await sessions.history("b"),
        )

    async def test_history_keeps_only_the_newest_turns(self, make):
        sessions = make(max_turns=4)
        for i in range(0, 10, 2):
            await sessions.append("s", [turn(i), turn(i + 1, "assistant")])
        assert [turn(6), turn(7, "assistant"), turn(8), turn(9, "assistant")] == (
            await sessions.history("s")
        )

    async def test_history_keeps_only_the_newest_turns_that_fit_in_the_byte_cap(self, make):
        size = len(encode_turn("user", "0" * 100))
        sessions = make(max_turns=100, max_bytes=3 * size + size // 2)
        await sessions.append("s", [turn(i, size=100) for i in range(5)])
        await sessions.append("s", [turn(5, size=100)])
        assert [turn(i, size=100) for i in (3, 4, 5)] == await sessions.history("s")

    async def test_a_turn_larger_than_the_byte_cap_is_not_kept(self, make):
        sessions = make(max_bytes=1024)
        await sessions.append("s", [turn(1, size=2000)])
        assert [] == await sessions.history("s")

    async def test_a_session_expires_its_ttl_after_the_last_write(self, make):
        sessions = make(ttl_s=0.3)
        await sessions.append("s", [turn(1)])
        await asyncio.sleep(0.45)
        assert [] == await sessions.history("s")

    async def test_every_write_refreshes_the_ttl(self, make):
        sessions = make(ttl_s=0.4)
        await sessions.append("s", [turn(1)])
        await asyncio.sleep(0.25)
        await sessions.append("s", [turn(2)])
        await asyncio.sleep(0.25)  # 0.5 s after the first write: alive thanks to the second
        assert [turn(1), turn(2)] == await sessions.history("s")
        await asyncio.sleep(0.3)
        assert [] == await sessions.history("s")

    async def test_a_read_does_not_refresh_the_ttl(self, make):
        sessions = make(ttl_s=0.4)
        await sessions.append("s", [turn(1)])
        await asyncio.sleep(0.25)
        assert [turn(1)] == await sessions.history("s")
        await asyncio.sleep(0.3)
        assert [] == await sessions.history("s")

    async def test_clear_forgets_the_session(self, sessions):
        await sessions.append("s", [turn(1)])
        await sessions.clear("s")
        assert [] == await sessions.history("s")

    async def test_namespaces_do_not_see_each_others_sessions(self, make):
        ours, theirs = make(namespace="ours"), make(namespace="theirs")
        await ours.append("s", [turn(1)])
        assert [] == await theirs.history("s")


class SemanticCacheContract:
    @pytest.fixture
    def make(self) -> AnswerFactory:
        """`make(namespace=...)` → a response cache."""
        raise NotImplementedError

    @pytest.fixture
    def answers(self, make):
        return make()

    async def test_an_unknown_key_is_a_miss(self, answers):
        assert await answers.get("n1:missing") is None

    async def test_a_stored_answer_reads_back_unchanged(self, answers):
        stored = answer()
        await answers.put("n1:k", stored, ttl_s=60)
        assert stored == await answers.get("n1:k")

    async def test_a_second_put_overwrites_the_first(self, answers):
        await answers.put("n1:k", answer("old"), ttl_s=60)
        await answers.put("n1:k", answer("new"), ttl_s=60)
        cached = await answers.get("n1:k")
        assert "new" == (cached.text if cached else None)

    async def test_each_answer_expires_after_its_own_ttl(self, answers):
        await answers.put("n1:short", answer(), ttl_s=0.3)
        await answers.put("n1:long", answer(), ttl_s=60)
        await asyncio.sleep(0.45)
        assert await answers.get("n1:short") is None
        assert await answers.get("n1:long") is not None

    async def test_namespaces_do_not_see_each_others_answers(self, make):
        ours, theirs = make(namespace="ours"), make(namespace="theirs")
        await ours.put("n1:k", answer(), ttl_s=60)
        assert await theirs.get("n1:k") is None


def _session_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"ttl_s": 60.0, "max_turns": 20, "max_bytes": 64 * 1024} | options


class TestInMemorySessionCache(SessionCacheContract):
    @pytest.fixture
    def make(self):
        def make(*, namespace: str = "", **options: Any) -> SessionCachePort:
            return InMemorySessionCache(**_session_options(options))

        return make


class TestInMemorySemanticCache(SemanticCacheContract):
    @pytest.fixture
    def make(self):
        def make(*, namespace: str = "") -> SemanticCachePort:
            return InMemorySemanticCache()

        return make


@pytest.fixture
async def redis(live_services) -> AsyncIterator[Redis]:
    from tests.live import REDIS_URL
    from widelog.cache.redis_cache import cache_client

    client = cache_client(REDIS_URL, timeout_s=2.0)
    yield client
    await client.aclose()


@pytest.fixture
async def namespace(redis) -> AsyncIterator[str]:
    """A fresh key prefix per test; its keys are deleted afterwards."""
    from tests.live import unique

    prefix = unique("widelog-test")
    yield prefix
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)


@pytest.mark.redis
class TestRedisSessionCache(SessionCacheContract):
    @pytest.fixture
    def make(self, redis, namespace):
        from widelog.cache.redis_cache import RedisSessionCache

        def make(*, namespace: str = "", **options: Any) -> SessionCachePort:
            return RedisSessionCache(
                redis, namespace=f"{prefix}-{namespace}", **_session_options(options)
            )

        prefix = namespace
        return make

    async def test_two_instances_in_one_namespace_share_sessions(self, make):
        here, there = make(namespace="shared"), make(namespace="shared")
        await here.append("s", [turn(1)])
        await there.append("s", [turn(2)])
        assert [turn(1), turn(2)] == await here.history("s")

    async def test_a_session_never_exists_without_a_ttl(self, make, redis):
        sessions = make(ttl_s=30)
        await sessions.append("s", [turn(1)])
        ttl_ms = await redis.pttl(sessions.key("s"))
        assert 0 < ttl_ms <= 30_000

    async def test_a_garbage_turn_is_a_corrupt_value(self, make, redis):
        sessions = make()
        await sessions.append("s", [turn(1)])
        await redis.rpush(sessions.key("s"), b"\xff\x00 not json")
        with pytest.raises(CorruptValueError):
            await sessions.history("s")

    async def test_a_turn_of_an_unknown_schema_version_is_a_corrupt_value(self, make, redis):
        sessions = make()
        await redis.rpush(sessions.key("s"), b'{"v": 2, "role": "user", "content": "hi"}')
        with pytest.raises(CorruptValueError, match="v2"):
            await sessions.history("s")

    async def test_a_key_of_the_wrong_type_is_corrupt_and_the_next_append_replaces_it(
        self, make, redis
    ):
        sessions = make()
        await redis.set(sessions.key("s"), b"garbage")
        with pytest.raises(CorruptValueError):
            await sessions.history("s")
        await sessions.append("s", [turn(1)])
        assert [turn(1)] == await sessions.history("s")


@pytest.mark.redis
class TestRedisSemanticCache(SemanticCacheContract):
    @pytest.fixture
    def make(self, redis, namespace):
        from widelog.cache.redis_cache import RedisSemanticCache

        def make(*, namespace: str = "") -> SemanticCachePort:
            return RedisSemanticCache(redis, namespace=f"{prefix}-{namespace}")

        prefix = namespace
        return make

    async def test_two_instances_in_one_namespace_share_answers(self, make):
        here, there = make(namespace="shared"), make(namespace="shared")
        await here.put("n1:k", answer(), ttl_s=60)
        assert await there.get("n1:k") is not None

    async def test_answers_live_under_the_namespace_prefix(self, make, redis, namespace):
        await make(namespace="ns").put("n1:k", answer(), ttl_s=60)
        assert [f"{namespace}-ns:answer:n1:k".encode()] == [
            key async for key in redis.scan_iter(match=f"{namespace}-ns:*")
        ]

    async def test_garbage_under_a_key_is_a_corrupt_value(self, make, redis):
        answers = make()
        await redis.set(answers.key("n1:k"), b"\x00\x01garbage")
        with pytest.raises(CorruptValueError):
            await answers.get("n1:k")
