"""The chat use case over the caches: history goes to the model, answers are reused when (and only
when) the whole conversation matches, failures are never cached, and broken caches cost nothing."""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Any

import pytest

from tests.cache_fakes import BreakableCache, CountingLLM, FakeClock
from widelog import WideEvent, request_scope
from widelog.cache.circuit_breaker import CircuitBreaker
from widelog.cache.fail_open import FailOpenSemanticCache, FailOpenSessionCache
from widelog.cache.memory import InMemorySemanticCache, InMemorySessionCache
from widelog.cache.ports import CachedAnswer, ChatTurn
from widelog.chat.fake_llm import FakeLLM
from widelog.chat.llm import LLMError, LLMRequest
from widelog.chat.service import ChatAnswer, ChatQuery, ChatService

QUESTION = "비밀번호를 어떻게 재설정하나요?"


class RecordingAnswers(InMemorySemanticCache):
    def __init__(self) -> None:
        super().__init__()
        self.ttls: list[float] = []

    async def put(self, key: str, answer: CachedAnswer, *, ttl_s: float) -> None:
        self.ttls.append(ttl_s)
        await super().put(key, answer, ttl_s=ttl_s)


@pytest.fixture
def llm() -> CountingLLM:
    return CountingLLM()


@pytest.fixture
def answers() -> RecordingAnswers:
    return RecordingAnswers()


@pytest.fixture
def service(llm, answers) -> ChatService:
    sessions = InMemorySessionCache(ttl_s=60, max_turns=20, max_bytes=65536)
    return ChatService(
        llm=llm,
        sessions=FailOpenSessionCache(sessions),
        answers=FailOpenSemanticCache(answers),
        answer_ttl_s=3600,
    )


async def ask(
    service: ChatService, message: str, *, session: str = "s1", **options: Any
) -> tuple[ChatAnswer, dict[str, Any]]:
    wide = WideEvent({}, started_ns=0)
    query = ChatQuery(session, message, prompt_version="v3", language="ko", **options)
    with request_scope(wide):
        answer = await service.answer(query)
    return answer, wide.doc


async def model_answer(*turns: str) -> str:
    """What the fake model says after these alternating user/assistant turns."""
    roles = ["user", "assistant"] * len(turns)
    request = LLMRequest(
        [ChatTurn(r, t) for r, t in zip(roles, turns, strict=False)], "v3", language="ko"
    )
    return (await FakeLLM(latency_median_ms=0).complete(request)).text


async def test_a_first_question_misses_both_caches_and_asks_the_model(service, llm):
    answer, doc = await ask(service, QUESTION)
    assert (await model_answer(QUESTION), False) == (answer.text, answer.cached)
    assert [[ChatTurn("user", QUESTION)]] == [list(r.messages) for r in llm.requests]
    assert {"session": "miss", "semantic": "miss", "session_write": "ok"}.items() <= (
        doc["cache"].items()
    )
    assert {"semantic_write": "ok", "session_turns": 0}.items() <= doc["cache"].items()
    assert doc["cache"]["session_ms"] >= 0
    assert doc["cache"]["semantic_ms"] >= 0


async def test_a_follow_up_sends_the_history_and_the_new_question(service, llm):
    first, _ = await ask(service, "hello")
    second, doc = await ask(service, "and then?")
    assert await model_answer("hello", first.text, "and then?") == second.text
    assert 3 == len(llm.requests[-1].messages)
    assert ("hit", 2) == (doc["cache"]["session"], doc["cache"]["session_turns"])


async def test_the_same_first_question_in_another_session_is_served_from_the_cache(service, llm):
    first, _ = await ask(service, QUESTION, session="a")
    second, doc = await ask(service, QUESTION, session="b")
    assert (first.text, True, 1) == (second.text, second.cached, len(llm.requests))
    assert ("hit", "skipped") == (doc["cache"]["semantic"], doc["cache"]["semantic_write"])
    assert doc["llm"]["cached"] is True
    third, _ = await ask(service, "next", session="b")  # the cached turn joined b's history
    assert await model_answer(QUESTION, first.text, "next") == third.text


async def test_an_equivalent_question_in_another_script_form_is_a_hit(service):
    await ask(service, QUESTION, session="a")
    messy = unicodedata.normalize("NFD", "  비밀번호를  어떻게\u3000재설정하나요？")
    answer, _ = await ask(service, messy, session="b")
    assert answer.cached


async def test_the_same_question_after_a_different_conversation_is_a_miss(service, llm):
    await ask(service, QUESTION, session="a")
    await ask(service, "hello", session="b")
    answer, doc = await ask(service, QUESTION, session="b")
    assert (False, "miss") == (answer.cached, doc["cache"]["semantic"])
    assert 3 == len(llm.requests)


async def test_no_cache_asks_the_model_again_and_stores_the_fresh_answer(service, llm):
    await ask(service, QUESTION, session="a")
    answer, doc = await ask(service, QUESTION, session="b", no_cache=True)
    assert (False, 2) == (answer.cached, len(llm.requests))
    assert ("bypass", "ok") == (doc["cache"]["semantic"], doc["cache"]["semantic_write"])


async def test_no_store_answers_without_caching_the_answer(service, llm, answers):
    _, doc = await ask(service, QUESTION, session="a", no_store=True)
    assert ("skipped", 0) == (doc["cache"]["semantic_write"], len(answers))
    answer, _ = await ask(service, QUESTION, session="b")
    assert (False, 2) == (answer.cached, len(llm.requests))


async def test_an_answer_cut_off_by_a_length_limit_is_served_but_never_cached(answers):
    import dataclasses

    class TruncatingLLM(CountingLLM):
        async def complete(self, request: LLMRequest) -> Any:
            return dataclasses.replace(await super().complete(request), complete=False)

    llm = TruncatingLLM()
    sessions = InMemorySessionCache(ttl_s=60, max_turns=20, max_bytes=65536)
    service = ChatService(
        llm=llm,
        sessions=FailOpenSessionCache(sessions),
        answers=FailOpenSemanticCache(answers),
        answer_ttl_s=3600,
    )
    answer, doc = await ask(service, QUESTION, session="a")
    assert answer.text
    assert (0, True, "skipped") == (
        len(answers),
        doc["llm"]["truncated"],
        doc["cache"]["semantic_write"],
    )


async def test_a_request_can_shorten_its_answers_ttl_but_not_lengthen_it(service, answers):
    await ask(service, "one", session="a", ttl_s=60)
    await ask(service, "two", session="b")
    _, doc = await ask(service, "three", session="c", ttl_s=86400)
    assert [60, 3600, 3600] == answers.ttls
    assert 3600 == doc["cache"]["semantic_ttl_s"]


async def test_a_failed_answer_is_neither_cached_nor_added_to_the_history(service, llm):
    failing = f"{QUESTION} [fail:LLM_TIMEOUT]"
    with pytest.raises(LLMError):
        await ask(service, failing)
    with pytest.raises(LLMError):
        await ask(service, failing, session="other")
    _, doc = await ask(service, "hello")
    assert 3 == len(llm.requests)
    assert ("miss", 0) == (doc["cache"]["session"], doc["cache"]["session_turns"])


async def test_concurrent_identical_misses_ask_the_model_once(service, llm, answers):
    llm.hold.clear()
    asking = [asyncio.create_task(ask(service, QUESTION, session=f"s{i}")) for i in range(8)]
    await asyncio.sleep(0.01)
    llm.hold.set()
    results = await asyncio.gather(*asking)
    assert 1 == len(llm.requests)
    assert 1 == len({answer.text for answer, _ in results})
    assert 7 == sum(doc["cache"].get("semantic_coalesced", False) for _, doc in results)
    assert 1 == len(answers.ttls)  # written once, by the caller that asked


async def test_one_models_answer_never_serves_another(llm, answers):
    def service_for(model: str) -> ChatService:
        return ChatService(
            llm=FakeLLM(model=model, latency_median_ms=0),
            sessions=FailOpenSessionCache(
                InMemorySessionCache(ttl_s=60, max_turns=20, max_bytes=65536)
            ),
            answers=FailOpenSemanticCache(answers),
            answer_ttl_s=3600,
        )

    await ask(service_for("small"), QUESTION)
    answer, _ = await ask(service_for("large"), QUESTION)
    assert (False, "large") == (answer.cached, answer.model)


async def test_broken_caches_never_fail_a_chat_and_say_so_on_the_event(llm):
    backend, clock = BreakableCache(), FakeClock()
    breaker = CircuitBreaker(name="redis", failure_threshold=2, clock=clock)
    fallback = InMemorySessionCache(ttl_s=60, max_turns=20, max_bytes=65536)
    service = ChatService(
        llm=llm,
        sessions=FailOpenSessionCache(backend, fallback=fallback, breaker=breaker, timeout_s=0.05),
        answers=FailOpenSemanticCache(backend, breaker=breaker, timeout_s=0.05),
        answer_ttl_s=3600,
    )
    backend.mode = "down"
    _, first = await ask(service, "hello")
    second_answer, second = await ask(service, "again")
    assert ("error", "error") == (first["cache"]["session"], first["cache"]["semantic"])
    assert ("degraded", "degraded") == (second["cache"]["session"], second["cache"]["semantic"])
    assert 2 == len(llm.requests[-1].messages[:-1])  # the history lived on in memory
    assert second_answer.text
