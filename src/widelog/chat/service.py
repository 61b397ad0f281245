"""The chat use case: history in, cached or fresh answer out, both caches recorded on the event.

1. Read the session's history (`cache.session`).
2. Look the answer up by `answer_key(question, context=history, ...)` (`cache.semantic`), unless
   the request said `no_cache`. The history is part of the key, not a reason to bypass: the
   answer depends on it (docs/caches.md says why).
3. On a miss, ask the LLM with the history and the question; concurrent identical misses share
   one call (`SingleFlight`). The caller that made the call stores the answer unless `no_store`;
   failed answers are never stored (an `LLMError` goes straight to the caller).
4. Append the question and the answer to the session (only after a successful answer).

Every cache step is bounded and fails open (`cache/fail_open.py`): a cache can make an answer
slower by a few timeouts at most, never fail it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from widelog.cache.keys import answer_key
from widelog.cache.ports import CachedAnswer, ChatTurn
from widelog.cache.single_flight import SingleFlight
from widelog.chat.llm import LLMRequest
from widelog.events.logging_service import event

if TYPE_CHECKING:
    from widelog.cache.fail_open import (
        FailOpenSemanticCache,
        FailOpenSessionCache,
        Lookup,
        WriteOutcome,
    )
    from widelog.chat.llm import LLMPort


@dataclass(slots=True, frozen=True)
class ChatQuery:
    session_id: str
    message: str
    prompt_version: str
    language: str | None = None
    no_cache: bool = False  # do not serve this request from the response cache
    no_store: bool = False  # do not store this request's answer in the response cache
    ttl_s: float | None = None  # life of the answer it stores; never above the configured TTL


@dataclass(slots=True, frozen=True)
class ChatAnswer:
    text: str
    model: str
    cached: bool


class ChatService:
    def __init__(
        self,
        *,
        llm: LLMPort,
        sessions: FailOpenSessionCache,
        answers: FailOpenSemanticCache,
        answer_ttl_s: float,
    ) -> None:
        self._llm = llm
        self._sessions = sessions
        self._answers = answers
        self._answer_ttl_s = answer_ttl_s
        self._flights: SingleFlight[tuple[CachedAnswer, bool]] = SingleFlight()

    async def answer(self, query: ChatQuery) -> ChatAnswer:
        """The answer to `query` in its session; an `LLMError` from the model goes to the caller."""
        session = await self._sessions.read(query.session_id)
        _record("session", session)
        event.set("cache.session_turns", len(session.value))
        history = session.value
        key = answer_key(
            query.message,
            context=[(t.role, t.content) for t in history],
            prompt_version=query.prompt_version,
            language=query.language,
            model=self._llm.model,
        )
        lookup = await self._answers.get(key, bypass=query.no_cache)
        _record("semantic", lookup)
        cached = lookup.value
        if cached is not None:
            event.update({"llm.cached": True, "llm.model": cached.model})
            event.set("cache.semantic_age_s", round(time.time() - cached.created_at, 3))
            answer, store = cached, False
        else:
            answer, store = await self._ask(key, query, history)
        if store and not query.no_store:
            # A request may shorten its answer's life (it knows it goes stale), never lengthen it.
            ttl_s = min(query.ttl_s or self._answer_ttl_s, self._answer_ttl_s)
            event.set("cache.semantic_ttl_s", ttl_s)
            put = self._answers.put(key, answer, ttl_s=ttl_s)
        else:
            put = _done(self._answers.skipped())
        turns = [ChatTurn("user", query.message), ChatTurn("assistant", answer.text)]
        stored, appended = await asyncio.gather(put, self._sessions.write(query.session_id, turns))
        event.update({"cache.semantic_write": stored, "cache.session_write": appended})
        return ChatAnswer(text=answer.text, model=answer.model, cached=cached is not None)

    async def _ask(
        self, key: str, query: ChatQuery, history: list[ChatTurn]
    ) -> tuple[CachedAnswer, bool]:
        """The LLM's answer, and whether to store it.

        Only the caller that made the call stores, and only a complete answer: one cut off by a
        length limit is served, never cached.
        """
        request = LLMRequest(
            messages=[*history, ChatTurn("user", query.message)],
            prompt_version=query.prompt_version,
            language=query.language,
        )
        joined = self._flights.in_flight(key)
        if joined:
            event.update({"cache.semantic_coalesced": True})
        started = asyncio.get_running_loop().time()
        try:
            answer, complete = await self._flights.run(key, lambda: self._complete(request))
        finally:
            event.set("llm.latency_ms", (asyncio.get_running_loop().time() - started) * 1000)
        event.update(
            {
                "llm.model": answer.model,
                "llm.input_tokens": answer.input_tokens,
                "llm.output_tokens": answer.output_tokens,
            }
        )
        if not complete:
            event.set("llm.truncated", value=True)
        return answer, complete and not joined

    async def _complete(self, request: LLMRequest) -> tuple[CachedAnswer, bool]:
        response = await self._llm.complete(request)
        answer = CachedAnswer(
            text=response.text,
            model=response.model,
            provider=response.provider,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            created_at=time.time(),
        )
        return answer, response.complete


def _record(cache: str, lookup: Lookup[Any]) -> None:
    event.set(f"cache.{cache}", lookup.outcome)
    event.set(f"cache.{cache}_ms", round(lookup.ms, 3))
    if lookup.reason is not None:
        event.set(f"cache.{cache}_reason", lookup.reason)


async def _done(outcome: WriteOutcome) -> WriteOutcome:
    return outcome
