"""Contract for `LLMPort`: the fake and the OpenAI-compatible adapter answer alike."""

from __future__ import annotations

import pytest

from widelog.cache.ports import ChatTurn
from widelog.chat.fake_llm import FakeLLM
from widelog.chat.llm import LLMPort, LLMRequest
from widelog.chat.openai_llm import OpenAICompatibleLLM

REQUEST = LLMRequest(
    messages=[ChatTurn("system", "be brief"), ChatTurn("user", "What is a wide event?")],
    prompt_version="v1",
    language="en",
)


class LLMContract:
    @pytest.fixture
    def llm(self) -> LLMPort:
        raise NotImplementedError

    async def test_an_answer_has_text_model_provider_and_token_counts(self, llm):
        answer = await llm.complete(REQUEST)
        assert answer.text
        assert answer.model.startswith(llm.model)
        assert answer.provider
        assert answer.input_tokens > 0
        assert answer.output_tokens > 0

    async def test_ping_succeeds_when_the_provider_is_up(self, llm):
        await llm.ping()


class TestFakeLLM(LLMContract):
    @pytest.fixture
    async def llm(self):
        llm = FakeLLM(latency_median_ms=1)
        yield llm
        await llm.close()


class TestOpenAICompatibleLLM(LLMContract):
    @pytest.fixture
    async def llm(self, stub_server):
        llm = OpenAICompatibleLLM(base_url=stub_server[0], model="gpt-x")
        yield llm
        await llm.close()


def test_the_fake_refuses_error_codes_it_does_not_know():
    with pytest.raises(ValueError, match="NOT_A_CODE"):
        FakeLLM(error_rates={"NOT_A_CODE": 0.5})


async def test_the_fake_injects_errors_at_the_configured_rate():
    llm = FakeLLM(latency_median_ms=0, error_rates={"LLM_RATE_LIMITED": 0.3}, seed=1)
    failures = 0
    for _ in range(1000):
        try:
            await llm.complete(REQUEST)
        except Exception:
            failures += 1
    assert 240 < failures < 360
