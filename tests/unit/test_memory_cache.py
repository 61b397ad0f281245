"""The in-process caches stay bounded: least recently used entries go first, expired ones early."""

from __future__ import annotations

from tests.cache_fakes import FakeClock
from widelog.cache.memory import InMemorySemanticCache, InMemorySessionCache
from widelog.cache.ports import CachedAnswer, ChatTurn

ANSWER = CachedAnswer("a", "m", "fake", 1, 1, created_at=0.0)


async def test_the_answer_cache_evicts_the_least_recently_used_entry():
    answers = InMemorySemanticCache(max_entries=2)
    await answers.put("a", ANSWER, ttl_s=60)
    await answers.put("b", ANSWER, ttl_s=60)
    await answers.get("a")  # "b" is now the least recently used
    await answers.put("c", ANSWER, ttl_s=60)
    assert (True, False, True) == tuple([await answers.get(k) is not None for k in ("a", "b", "c")])
    assert 2 == len(answers)


async def test_an_expired_answer_is_gone_on_the_next_read():
    clock = FakeClock()
    answers = InMemorySemanticCache(clock=clock)
    await answers.put("a", ANSWER, ttl_s=10)
    clock.advance(10)
    assert (None, 0) == (await answers.get("a"), len(answers))


async def test_the_session_cache_evicts_the_least_recently_used_session():
    sessions = InMemorySessionCache(ttl_s=60, max_turns=10, max_bytes=4096, max_sessions=2)
    for session in ("a", "b"):
        await sessions.append(session, [ChatTurn("user", session)])
    await sessions.history("a")
    await sessions.append("c", [ChatTurn("user", "c")])
    assert ([], 2) == (await sessions.history("b"), len(sessions))


async def test_a_session_ttl_slides_with_writes_on_the_clock():
    clock = FakeClock()
    sessions = InMemorySessionCache(ttl_s=10, max_turns=10, max_bytes=4096, clock=clock)
    await sessions.append("s", [ChatTurn("user", "1")])
    clock.advance(9)
    await sessions.append("s", [ChatTurn("user", "2")])
    clock.advance(9)
    assert 2 == len(await sessions.history("s"))
    clock.advance(1)
    assert [] == await sessions.history("s")
