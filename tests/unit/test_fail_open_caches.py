"""Caches that fail open: a broken backend becomes an outcome, in bounded time, never an error."""

from __future__ import annotations

import time

import pytest

from tests.cache_fakes import BreakableCache, FakeClock
from widelog.cache.circuit_breaker import CircuitBreaker
from widelog.cache.fail_open import FailOpenSemanticCache, FailOpenSessionCache
from widelog.cache.memory import InMemorySessionCache
from widelog.cache.ports import CachedAnswer, ChatTurn

TIMEOUT_S = 0.05
HELLO = [ChatTurn("user", "hi"), ChatTurn("assistant", "hello")]
ANSWER = CachedAnswer("hello", "m", "fake", 1, 1, created_at=0.0)


@pytest.fixture
def backend() -> BreakableCache:
    return BreakableCache()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    return CircuitBreaker(name="redis", failure_threshold=3, reset_timeout_s=2, clock=clock)


@pytest.fixture
def fallback() -> InMemorySessionCache:
    return InMemorySessionCache(ttl_s=60, max_turns=20, max_bytes=65536)


@pytest.fixture
def sessions(backend, fallback, breaker) -> FailOpenSessionCache:
    return FailOpenSessionCache(backend, fallback=fallback, breaker=breaker, timeout_s=TIMEOUT_S)


@pytest.fixture
def answers(backend, breaker) -> FailOpenSemanticCache:
    return FailOpenSemanticCache(backend, breaker=breaker, timeout_s=TIMEOUT_S)


async def test_a_healthy_backend_gives_misses_then_hits(sessions, answers):
    assert "miss" == (await sessions.read("s")).outcome
    assert "ok" == await sessions.write("s", HELLO)
    assert ("hit", HELLO) == ((read := await sessions.read("s")).outcome, read.value)
    assert "miss" == (await answers.get("k")).outcome
    assert "ok" == await answers.put("k", ANSWER, ttl_s=60)
    assert ("hit", ANSWER) == ((got := await answers.get("k")).outcome, got.value)


async def test_a_backend_that_is_down_is_an_error_and_then_degraded(sessions, backend):
    backend.mode = "down"
    outcomes = [(await sessions.read("s")).outcome for _ in range(5)]
    assert ["error", "error", "error", "degraded", "degraded"] == outcomes
    assert 3 == backend.calls  # the open circuit spares the backend


async def test_a_backend_that_never_answers_costs_one_timeout(sessions, backend):
    backend.mode = "slow"
    started = time.perf_counter()
    lookup = await sessions.read("s")
    elapsed = time.perf_counter() - started
    assert ("error", "no answer within 50 ms") == (lookup.outcome, lookup.reason)
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 0.1


async def test_a_corrupt_value_is_an_error_that_leaves_the_circuit_closed(
    sessions, backend, breaker
):
    backend.mode = "corrupt"
    lookups = [await sessions.read("s") for _ in range(5)]
    assert {"error"} == {lookup.outcome for lookup in lookups}
    assert lookups[0].reason is not None
    assert lookups[0].reason.startswith("corrupt value")
    assert "closed" == breaker.state


async def test_while_the_circuit_is_open_sessions_continue_in_memory(sessions, backend):
    backend.mode = "down"
    for _ in range(3):
        await sessions.read("s")
    assert "degraded" == await sessions.write("s", HELLO)
    read = await sessions.read("s")
    assert ("degraded", HELLO) == (read.outcome, read.value)
    assert [] == await backend.sessions.history("s")


async def test_turns_written_during_the_outage_move_to_the_backend_when_it_is_back(
    sessions, backend, fallback, clock
):
    await backend.sessions.append("s", [ChatTurn("user", "before")])
    backend.mode = "down"
    for _ in range(3):
        await sessions.read("s")
    await sessions.write("s", HELLO)
    backend.mode = "ok"
    clock.advance(2)  # the breaker half-opens; the next call is its probe
    read = await sessions.read("s")
    assert ("hit", [ChatTurn("user", "before"), *HELLO]) == (read.outcome, read.value)
    assert "ok" == await sessions.write("s", [ChatTurn("user", "after")])
    expected = [ChatTurn("user", "before"), *HELLO, ChatTurn("user", "after")]
    assert (expected, []) == (await backend.sessions.history("s"), await fallback.history("s"))


async def test_a_failed_write_keeps_the_turns_in_memory_for_the_next_try(
    sessions, backend, fallback
):
    backend.mode = "down"
    assert "error" == await sessions.write("s", HELLO)
    assert HELLO == await fallback.history("s")
    backend.mode = "ok"
    assert "ok" == await sessions.write("s", [ChatTurn("user", "next")])
    assert [*HELLO, ChatTurn("user", "next")] == await backend.sessions.history("s")


async def test_a_no_cache_lookup_is_a_bypass_that_never_touches_the_backend(answers, backend):
    lookup = await answers.get("k", bypass=True)
    assert ("bypass", 0) == (lookup.outcome, backend.calls)


async def test_answers_are_neither_read_nor_written_while_the_circuit_is_open(answers, backend):
    backend.mode = "down"
    assert ["error"] * 3 == [(await answers.get("k")).outcome for _ in range(3)]
    backend.mode = "ok"
    assert ("degraded", "degraded") == (
        (await answers.get("k")).outcome,
        await answers.put("k", ANSWER, ttl_s=60),
    )
    assert 3 == backend.calls


async def test_a_corrupt_answer_reads_as_an_error_with_the_reason(answers, backend):
    backend.mode = "corrupt"
    lookup = await answers.get("k")
    assert (None, "error") == (lookup.value, lookup.outcome)
    assert "corrupt value: not a session turn (fake garbage)" == lookup.reason


async def test_the_hit_rate_counts_every_lookup_but_bypasses(answers):
    await answers.put("k", ANSWER, ttl_s=60)
    for key in ("k", "k", "k", "other"):
        await answers.get(key)
    await answers.get("k", bypass=True)
    assert 0.75 == answers.counters.hit_rate
    assert {"hit": 3, "miss": 1, "bypass": 1} == dict(answers.counters.lookups)


async def test_caches_without_a_breaker_never_degrade(backend):
    sessions = FailOpenSessionCache(backend)
    backend.mode = "down"
    assert ["error"] * 10 == [(await sessions.read("s")).outcome for _ in range(10)]
