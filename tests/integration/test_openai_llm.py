"""The OpenAI-compatible adapter against a real HTTP server on loopback (never the internet)."""

from __future__ import annotations

import socket

import pytest

from widelog.cache.ports import ChatTurn
from widelog.chat.llm import LLMError, LLMRequest
from widelog.chat.openai_llm import OpenAICompatibleLLM


def ask(prompt: str) -> LLMRequest:
    return LLMRequest(messages=[ChatTurn("user", prompt)], prompt_version="v1")


async def test_an_answer_carries_text_model_and_token_counts(stub_server):
    url, app = stub_server
    llm = OpenAICompatibleLLM(base_url=url, model="gpt-x", api_key="sk-test")
    try:
        answer = await llm.complete(ask("hi"))
    finally:
        await llm.close()
    assert ("echo: hi", "gpt-x-2026", 7, 2) == (
        answer.text,
        answer.model,
        answer.input_tokens,
        answer.output_tokens,
    )
    auth, body = app.state.seen[-1]
    assert "Bearer sk-test" == auth
    assert [{"role": "user", "content": "hi"}] == body["messages"]


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ("rate", "LLM_RATE_LIMITED"),
        ("filter", "CONTENT_FILTERED"),
        ("stopped", "CONTENT_FILTERED"),
        ("down", "LLM_UNAVAILABLE"),
        ("html", "LLM_UNAVAILABLE"),
        ("shape", "LLM_BAD_RESPONSE"),
    ],
)
async def test_provider_failures_become_error_codes(stub_server, prompt, code):
    llm = OpenAICompatibleLLM(base_url=stub_server[0], model="gpt-x")
    try:
        with pytest.raises(LLMError) as failure:
            await llm.complete(ask(prompt))
    finally:
        await llm.close()
    assert code == failure.value.code


async def test_a_slow_provider_is_an_llm_timeout(stub_server):
    llm = OpenAICompatibleLLM(base_url=stub_server[0], model="gpt-x", timeout_s=0.2)
    try:
        with pytest.raises(LLMError) as failure:
            await llm.complete(ask("slow"))
    finally:
        await llm.close()
    assert "LLM_TIMEOUT" == failure.value.code


async def test_an_unreachable_provider_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        llm = OpenAICompatibleLLM(base_url=f"http://127.0.0.1:{port}/v1", model="m")
        try:
            with pytest.raises(LLMError) as failure:
                await llm.complete(ask("hi"))
            with pytest.raises(LLMError):
                await llm.ping()
        finally:
            await llm.close()
    assert "LLM_UNAVAILABLE" == failure.value.code


async def test_an_answer_cut_off_by_the_length_limit_is_marked_incomplete(stub_server):
    llm = OpenAICompatibleLLM(base_url=stub_server[0], model="gpt-x")
    try:
        cut, whole = await llm.complete(ask("long")), await llm.complete(ask("hi"))
    finally:
        await llm.close()
    assert (False, True) == (cut.complete, whole.complete)
