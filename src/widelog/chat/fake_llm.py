"""A built-in LLM for demos and tests: deterministic answers, realistic latency, injectable errors.

Answers depend only on the conversation, so caches and tests can rely on them. Latency is
log-normal around a median (real LLM latencies have a long right tail). Errors come from two
places: per-code rates drawn from a seeded generator, and markers in the last user message —
`[fail:LLM_TIMEOUT]` fails that request, `[slow:1500]` makes it take 1.5 s — so tests and the demo
know exactly which requests fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
from typing import TYPE_CHECKING

from widelog.chat.llm import LLMError, LLMRequest, LLMResponse

if TYPE_CHECKING:
    from collections.abc import Mapping

KNOWN_ERRORS = {
    "LLM_TIMEOUT": "the model did not answer in time",
    "LLM_RATE_LIMITED": "the provider rate-limited this request (429)",
    "CONTENT_FILTERED": "the provider's content filter blocked the answer",
    "LLM_UNAVAILABLE": "the provider returned a server error",
}
_FAIL = re.compile(r"\[fail:([A-Z_]+)\]")
_SLOW = re.compile(r"\[slow:(\d{1,6})\]")


class FakeLLM:
    provider = "fake"

    def __init__(
        self,
        *,
        model: str = "fake-chat-1",
        latency_median_ms: float = 20.0,
        latency_sigma: float = 0.5,
        error_rates: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        unknown = set(error_rates or {}) - set(KNOWN_ERRORS)
        if unknown:
            raise ValueError(f"unknown fake LLM error codes: {sorted(unknown)}")
        self._model = model
        self._median_s = latency_median_ms / 1000
        self._sigma = latency_sigma
        self._error_rates = dict(error_rates or {})
        self._rng = random.Random(seed)

    @property
    def model(self) -> str:
        return self._model

    async def complete(self, request: LLMRequest) -> LLMResponse:
        prompt = request.messages[-1].content if request.messages else ""
        slow = _SLOW.search(prompt)
        delay = int(slow.group(1)) / 1000 if slow else self._draw_latency()
        code = self._draw_error(prompt)
        if code == "LLM_TIMEOUT":
            delay = max(delay, 4 * self._median_s)
        await asyncio.sleep(delay)
        if code is not None:
            raise LLMError(code, KNOWN_ERRORS.get(code, code), retryable=code != "CONTENT_FILTERED")
        text = _answer(request, self._model)
        return LLMResponse(
            text=text,
            model=self._model,
            provider=self.provider,
            input_tokens=sum(len(m.content.split()) for m in request.messages),
            output_tokens=len(text.split()),
        )

    def _draw_latency(self) -> float:
        return self._median_s * math.exp(self._sigma * self._rng.gauss(0.0, 1.0))

    def _draw_error(self, prompt: str) -> str | None:
        forced = _FAIL.search(prompt)
        if forced:
            return forced.group(1)
        for code, rate in self._error_rates.items():
            if self._rng.random() < rate:
                return code
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _answer(request: LLMRequest, model: str) -> str:
    conversation = "\n".join(f"{m.role}:{m.content}" for m in request.messages)
    digest = hashlib.sha256(f"{model}|{request.prompt_version}|{conversation}".encode()).hexdigest()
    question = request.messages[-1].content if request.messages else ""
    language = request.language or "en"
    return f"[{language}] Answer {digest[:8]} to: {question[:200]}"
