"""The reference chat service's composition root: widelog's pipeline plus the LLM and caches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from widelog.bootstrap import build_caches, build_pipeline, logged
from widelog.chat.fake_llm import FakeLLM
from widelog.chat.openai_llm import OpenAICompatibleLLM
from widelog.chat.service import ChatService

if TYPE_CHECKING:
    from widelog.bootstrap import Pipeline
    from widelog.cache.fail_open import ChatCaches
    from widelog.chat.llm import LLMPort
    from widelog.config import Settings
    from widelog.incidents.rules import IncidentRules
    from widelog.sampling.policy import SamplingPolicy


@dataclass
class ChatContainer:
    """What the chat API process runs: the wide-event pipeline and the chat use case."""

    settings: Settings
    pipeline: Pipeline
    llm: LLMPort
    caches: ChatCaches
    chat: ChatService

    async def start(self) -> None:
        await self.pipeline.start()

    async def drained(self) -> None:
        await self.pipeline.drained()

    async def aclose(self) -> None:
        """The pipeline first (it flushes what the last requests logged), then the clients."""
        await self.pipeline.aclose()
        for closer in (self.llm.close, self.caches.aclose):
            await logged(closer())


def build_llm(settings: Settings) -> LLMPort:
    if settings.llm == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAICompatibleLLM(
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            api_key=key,
            timeout_s=settings.openai_timeout_s,
        )
    return FakeLLM(
        latency_median_ms=settings.fake_llm_latency_ms,
        latency_sigma=settings.fake_llm_latency_sigma,
        error_rates=settings.fake_llm_error_rates,
    )


def build(
    settings: Settings,
    *,
    sampling: SamplingPolicy | None = None,
    incident_rules: IncidentRules | None = None,
) -> ChatContainer:
    if "service_name" not in settings.model_fields_set:
        settings = settings.model_copy(update={"service_name": "chat-api"})
    pipeline = build_pipeline(settings, sampling=sampling, incident_rules=incident_rules)
    llm = build_llm(settings)
    caches = build_caches(settings)
    chat = ChatService(
        llm=llm,
        sessions=caches.sessions,
        answers=caches.answers,
        answer_ttl_s=settings.semantic_cache_ttl_s,
    )
    return ChatContainer(settings=settings, pipeline=pipeline, llm=llm, caches=caches, chat=chat)
