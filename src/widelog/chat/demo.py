"""`widelog demo`: the chat service in-process under synthetic traffic, then a report.

The traffic mix is seeded, so two runs with the same arguments send the same requests: normal
chats, repeated questions, slow answers, injected LLM errors, invalid and oversized requests.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.incidents.queries import incident_summaries
from widelog.stats import percentile
from widelog.worker import run_worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from widelog.bootstrap import Pipeline
    from widelog.chat.bootstrap import ChatContainer
    from widelog.config import Settings
    from widelog.pipeline.consumer import ConsumerStats

FAQ = [
    "How do I reset my password?",
    "What are your opening hours?",
    "비밀번호를 어떻게 재설정하나요?",
    "Can I change my delivery address?",
    "Wie kann ich mein Abo kündigen?",
    "What is the refund policy?",
    "配送状況を確認するには？",
    "Do you ship internationally?",
]
TOPICS = ["billing", "shipping", "accounts", "the API", "rate limits", "exports", "SSO", "webhooks"]
INJECTED_ERRORS = ["LLM_TIMEOUT", "LLM_RATE_LIMITED", "CONTENT_FILTERED"]

# (kind, weight): what a day of traffic to a support chatbot roughly looks like.
MIX = [
    ("chat", 83.0),
    ("repeat", 10.0),
    ("slow", 1.5),
    ("llm_error", 3.5),
    ("invalid", 1.5),
    ("oversize", 0.5),
]


def synthetic_requests(
    count: int, *, seed: int = 7, max_chars: int = 8000
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body) pairs; slow answers take 2.1-3 s, past the default 2 s slow threshold."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    bodies = []
    for i in range(count):
        kind = rng.choices(kinds, weights)[0]
        session = f"s-{rng.randrange(count // 4 + 1)}"
        body: dict[str, Any] = {"session_id": session, "prompt_version": "v3", "language": "en"}
        if kind == "chat":
            body["message"] = f"Question {i} about {rng.choice(TOPICS)}?"
        elif kind == "repeat":
            body["message"] = rng.choice(FAQ)
        elif kind == "slow":
            body["message"] = f"Summarize {rng.choice(TOPICS)} [slow:{rng.randrange(2100, 3000)}]"
        elif kind == "llm_error":
            body["message"] = (
                f"Tell me about {rng.choice(TOPICS)} [fail:{rng.choice(INJECTED_ERRORS)}]"
            )
        elif kind == "invalid":
            del body["session_id"]
            body["message"] = "no session"
        else:
            body["message"] = "x" * (max_chars + 1)
        bodies.append((kind, body))
    return bodies


async def run_demo(
    settings: Settings,
    *,
    requests: int,
    concurrency: int = 32,
    on_progress: Callable[[int], None] | None = None,
    drain_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Send `requests` chats through the full pipeline; wait until it drained; report.

    On the embedded transport the consumer runs in the API's pipeline; on Kafka or Redis Streams
    the demo runs `widelog worker`'s own code beside the API, as a task on the same loop. The
    counts are read back from the store, for the demo's own request ids: a shared store may hold
    other events. A SQLite store is a temporary file of the demo's unless `WIDELOG_SQLITE_PATH`
    names one (then its events can be looked up afterwards: `widelog events get ID`).
    """
    with tempfile.TemporaryDirectory(prefix="widelog-demo-") as tmp:
        if settings.store == "sqlite" and "sqlite_path" not in settings.model_fields_set:
            settings = settings.model_copy(update={"sqlite_path": Path(tmp) / "events.sqlite3"})
        container = build(settings)
        app = create_app(container)
        traffic = synthetic_requests(requests, max_chars=settings.max_message_chars)
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        cached: Counter[str] = Counter()  # answers served from the response cache, by kind
        request_ids: set[str] = set()
        pending = iter(traffic)

        async def client_loop(client: httpx.AsyncClient) -> None:
            for kind, body in pending:
                started = time.perf_counter()
                response = await client.post("/v1/chat", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[response.status_code] += 1
                request_ids.add(response.headers["x-request-id"])
                if response.status_code == 200 and response.json().get("cached"):
                    cached[kind] += 1
                if on_progress:
                    on_progress(1)

        dead_before = await container.pipeline.store.count_dead_letters()
        await container.start()
        worker = _Worker(settings) if container.pipeline.consumer is None else None
        started = time.perf_counter()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
            traffic_s = time.perf_counter() - started
            # The traffic's request counts now, not at shutdown: the report's rates are exact.
            container.pipeline.logging.publish_counts(final=True)
            drained = await _drain(container, worker, request_ids, timeout=drain_timeout_s)
            report = await _report(
                container,
                request_ids=request_ids,
                consumer_stats=await worker.stop() if worker else _in_process(container),
                dead_before=dead_before,
                statuses=statuses,
                latencies=latencies,
                traffic_s=traffic_s,
            )
            report["pipeline"]["drained"] = drained
            report["traffic"] = dict(Counter(kind for kind, _ in traffic))
            report["cache"]["cached_answers_by_kind"] = dict(cached)
            if container.pipeline.aggregator is not None:
                # Incidents are judged on complete minutes only: let event time run to the end.
                await container.pipeline.aggregator.settle()
            report["incidents"] = await incident_summaries(
                container.pipeline.incidents, totals=container.pipeline.totals
            )
            return report
        finally:
            if worker:
                await worker.stop()
            await container.aclose()


class _Worker:
    """`widelog worker` (`widelog.worker.run_worker`) as a task beside the in-process API."""

    def __init__(self, settings: Settings) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(run_worker(settings, stop=self._stop, signals=False))

    @property
    def failed(self) -> bool:
        return self._task.done()  # it runs until stopped: done early means it crashed

    async def stop(self) -> ConsumerStats:
        self._stop.set()
        return await self._task


async def _drain(
    container: ChatContainer, worker: _Worker | None, request_ids: set[str], *, timeout: float
) -> bool:
    """Wait until every event the API published is in the store; False if `timeout` ran out."""
    pipeline = container.pipeline
    if worker is None:
        await asyncio.wait_for(container.drained(), timeout=timeout)
        return True
    deadline = time.monotonic() + timeout
    await pipeline.publisher.flush(timeout)  # acknowledged by the broker, or spooled
    while not worker.failed and time.monotonic() < deadline:
        stored = await pipeline.store.count_events(request_ids=request_ids)
        if stored >= pipeline.logging.stats.published and await _counted(pipeline):
            return True
        await asyncio.sleep(0.2)
    return False


async def _counted(pipeline: Pipeline) -> bool:
    """Whether the store holds this API's count records for every request it finalized."""
    read = getattr(pipeline.store, "request_counts", None)
    if read is None or pipeline.logging.counter is None:
        return True
    emitter = pipeline.logging.emitter
    records = [r for r in await read() if r.emitter == emitter]
    return bool(sum(r.requests() for r in records) >= pipeline.logging.stats.finalized)


def _in_process(container: ChatContainer) -> ConsumerStats:
    if container.pipeline.consumer is None:
        raise RuntimeError("no consumer runs in this process")
    return container.pipeline.consumer.stats


async def _report(
    container: ChatContainer,
    *,
    request_ids: set[str],
    consumer_stats: ConsumerStats,
    dead_before: int,
    statuses: Counter[int],
    latencies: list[float],
    traffic_s: float,
) -> dict[str, Any]:
    logging_stats = container.pipeline.logging.stats
    store = container.pipeline.store
    stored = await store.count_events(request_ids=request_ids)
    sampler = container.pipeline.logging.sampler
    sampling = sampler.counters.as_dict() if sampler is not None else None
    return {
        "requests": len(latencies),
        "duration_s": round(traffic_s, 3),
        "requests_per_s": round(len(latencies) / traffic_s, 1) if traffic_s else 0.0,
        "status": {str(code): n for code, n in sorted(statuses.items())},
        "events": {
            "finalized": logging_stats.finalized,
            "published": logging_stats.published,
            "count_records": logging_stats.count_records,  # published beside the events
            "count_records_failed": logging_stats.count_records_failed,
            "publish_failed": logging_stats.publish_failed,
            "finalize_failed": logging_stats.finalize_failed,
            "sampled_out": logging_stats.sampled_out,
            "kept": logging_stats.finalized - logging_stats.sampled_out,
            "stored": stored,
            "duplicates": consumer_stats.duplicates,
            "dead_lettered": await store.count_dead_letters() - dead_before,
        },
        "errors": {
            "total": logging_stats.errors,
            "stored": await store.count_events(errors_only=True, request_ids=request_ids),
        },
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p90": round(percentile(latencies, 90), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies, default=0.0), 2),
        },
        "kept_by_reason": dict(sampling["kept_by_reason"]) if sampling else {},
        "sampling": {
            "policy": container.pipeline.logging.sampler.fingerprint
            if container.pipeline.logging.sampler
            else None,
            "retention_rate": sampling.get("retention_rate", 1.0) if sampling else 1.0,
            "stored_fraction": round(stored / logging_stats.finalized, 4)
            if logging_stats.finalized
            else 0.0,
        },
        "cache": container.caches.report(),
        "pipeline": {
            "transport": container.settings.transport,
            "store": container.settings.store,
            "consumer": "in-process" if container.pipeline.consumer else "worker task",
            "batches": consumer_stats.batches,
            "last_batch_ms": round(consumer_stats.last_batch_ms, 2),
        },
    }
