"""The composition root: the one place that turns settings into wired adapters."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from widelog.adapters.fake_llm import FakeLLM
from widelog.adapters.memory_transport import (
    InProcessEventPublisher,
    InProcessEventSource,
    InProcessQueue,
)
from widelog.adapters.openai_llm import OpenAICompatibleLLM
from widelog.adapters.sqlite_store import SQLiteEventStore
from widelog.service.batcher import BatchConsumer
from widelog.service.logging_service import LoggingService

if TYPE_CHECKING:
    from widelog.config import Settings
    from widelog.ports import EventPublisher, LLMPort, LoggerPort


@dataclass
class EmbeddedPipeline:
    """In-process queue → `BatchConsumer` → store, running as a task beside the API."""

    queue: InProcessQueue
    consumer: BatchConsumer
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.consumer.run(self._stop), name="widelog-consumer")

    async def drained(self) -> None:
        await self.queue.drained()

    async def stop(self) -> None:
        """Drain the queue into the store, then stop the consumer (safe to call twice)."""
        self._stop.set()
        if self._task is not None:
            await self._task


@dataclass
class Container:
    settings: Settings
    logging: LoggingService
    publisher: EventPublisher
    store: LoggerPort
    llm: LLMPort
    pipeline: EmbeddedPipeline
    _closed: bool = False

    async def start(self) -> None:
        await self.store.ping()
        self.pipeline.start()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.pipeline.stop()
        await self.publisher.close()
        for closer in (self.store.close, self.llm.close):
            with contextlib.suppress(Exception):
                await closer()


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


def build(settings: Settings) -> Container:
    queue = InProcessQueue(max_events=settings.queue_max_events)
    publisher = InProcessEventPublisher(queue)
    store = SQLiteEventStore(settings.sqlite_path)
    consumer = BatchConsumer(
        InProcessEventSource(queue),
        store,
        source_name="memory",
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval_s,
        write_attempts=settings.write_attempts,
    )
    logging_service = LoggingService(
        publisher=publisher,
        service=settings.service_name,
        env=settings.env,
        version=settings.service_version,
        instance=settings.instance,
        max_event_bytes=settings.max_event_bytes,
    )
    return Container(
        settings=settings,
        logging=logging_service,
        publisher=publisher,
        store=store,
        llm=build_llm(settings),
        pipeline=EmbeddedPipeline(queue=queue, consumer=consumer),
    )
