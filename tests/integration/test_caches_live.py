"""The Redis caches on the real Redis: shared across processes, failing open when Redis is down,
slow or holding garbage, and back in use by themselves when it recovers.

Each test has its own key namespace. The outage test stops the shared Redis and always starts it
again (`service_down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.apps import running_api
from tests.live import REDIS_PORT, REDIS_URL, free_port, service_down, unique
from widelog.cache.ports import ChatTurn
from widelog.chat.bootstrap import ChatContainer
from widelog.chat.fake_llm import FakeLLM
from widelog.chat.llm import LLMRequest
from widelog.config import Settings
from widelog.stats import percentile

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

TIMEOUT_MS = 50.0  # WIDELOG_CACHE_TIMEOUT_MS in these tests (the default)
# The most a cache can add to one request: a session read, an answer lookup and the two writes
# (concurrent) each time out once, before the circuit opens. Stated in docs/caches.md.
ADDED_BOUND_MS = 3 * TIMEOUT_MS
FAQ = ["How do I reset my password?", "비밀번호를 어떻게 재설정하나요?", "配送状況を確認するには？"]


@pytest.fixture
async def namespace(live_services) -> AsyncIterator[str]:
    name = unique("widelog-cache-test")
    yield name
    redis = Redis.from_url(REDIS_URL)
    with contextlib.suppress(Exception):  # the outage test may leave Redis starting up
        keys = [key async for key in redis.scan_iter(match=f"{name}:*")]
        if keys:
            await redis.delete(*keys)
    await redis.aclose()


@asynccontextmanager
async def api(
    tmp_path: Path, namespace: str, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ChatContainer]]:
    options: dict[str, Any] = {
        "cache": "redis",
        "cache_namespace": namespace,
        "sqlite_path": tmp_path / f"{unique('events')}.sqlite3",
        "fake_llm_latency_ms": 5,
        "fake_llm_latency_sigma": 0,
        "flush_interval_s": 0.1,
    }
    async with running_api(Settings(**(options | settings))) as running:
        yield running


async def events_by_request(container: ChatContainer) -> dict[str, dict[str, Any]]:
    await container.drained()
    return {doc["request_id"]: doc async for doc in container.pipeline.store.scan_events()}


async def model_answer(*turns: str) -> str:
    """What the fake model says after these alternating user/assistant turns."""
    roles = ["user", "assistant"] * len(turns)
    messages = [ChatTurn(r, t) for r, t in zip(roles, turns, strict=False)]
    return (await FakeLLM(latency_median_ms=0).complete(LLMRequest(messages, "v1"))).text


# --- two API processes sharing one Redis ----------------------------------------------------


@contextlib.contextmanager
def api_process(tmp_path: Path, name: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process_env = {
        **os.environ,
        **env,
        "WIDELOG_SQLITE_PATH": str(tmp_path / f"{name}.sqlite3"),
        "WIDELOG_INSTANCE": name,
    }
    with (tmp_path / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "widelog",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{name} never became healthy"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(20)


def test_two_api_processes_share_conversations_and_cached_answers(tmp_path, namespace):
    env = {
        "WIDELOG_CACHE": "redis",
        "WIDELOG_CACHE_NAMESPACE": namespace,
        "WIDELOG_FAKE_LLM_LATENCY_MS": "1",
    }
    with (
        api_process(tmp_path, "api-a", env) as a,
        api_process(tmp_path, "api-b", env) as b,
        httpx.Client(timeout=10) as http,
    ):

        def chat(url: str, session: str, message: str) -> dict[str, Any]:
            body = {"session_id": session, "message": message}
            response = http.post(f"{url}/v1/chat", json=body)
            assert 200 == response.status_code, response.text
            answer: dict[str, Any] = response.json()
            return answer

        started_on_a = chat(a, "conversation", "My order has not arrived.")
        continued_on_b = chat(b, "conversation", "It was order 1234.")
        expected = asyncio.run(
            model_answer("My order has not arrived.", started_on_a["answer"], "It was order 1234.")
        )
        assert expected == continued_on_b["answer"]

        asked_on_a = chat(a, "first", "What is the refund policy?")
        asked_on_b = chat(b, "second", "What is the refund policy?")
        assert (False, True) == (asked_on_a["cached"], asked_on_b["cached"])
        assert asked_on_a["answer"] == asked_on_b["answer"]


# --- Redis stopped mid-traffic ----------------------------------------------------------------


async def traffic(
    client: httpx.AsyncClient, phase: str, count: int, *, concurrency: int = 8
) -> tuple[list[float], list[httpx.Response]]:
    """Repeated first questions in fresh sessions, and conversations; every chat must succeed."""
    pending = iter(range(count))
    latencies: list[float] = []
    responses: list[httpx.Response] = []

    async def loop() -> None:
        for i in pending:
            if i % 3 == 0:
                body = {"session_id": f"{phase}-fresh-{i}", "message": FAQ[i % len(FAQ)]}
            else:
                body = {"session_id": f"{phase}-talk-{i % 10}", "message": f"{phase} turn {i}"}
            started = time.perf_counter()
            response = await client.post(
                "/v1/chat", json=body, headers={"x-request-id": f"{phase}-{i}"}
            )
            latencies.append((time.perf_counter() - started) * 1000)
            responses.append(response)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    failed = [r.text for r in responses if r.status_code != 200]
    assert [] == failed
    return latencies, responses


def outcomes(events: dict[str, dict[str, Any]], phase: str, cache: str) -> set[str]:
    return {e["cache"][cache] for rid, e in events.items() if rid.startswith(f"{phase}-")}


@pytest.mark.faults
async def test_redis_stopped_mid_traffic_fails_no_chat_and_hits_resume_when_it_is_back(
    tmp_path, namespace
):
    async with api(tmp_path, namespace, cache_breaker_reset_s=1.0) as (client, container):
        await traffic(client, "warmup", 40)  # connections, first-request costs: not measured
        gc.collect()  # a full collection stalls the loop ~40 ms: keep it out of both phases
        healthy, before = await traffic(client, "before", 500)
        assert any(r.json()["cached"] for r in before)
        gc.collect()
        with service_down("redis"):
            outage, _ = await traffic(client, "during", 500)
            assert container.caches.breaker is not None
            assert "open" == container.caches.breaker.state
            # A conversation that starts during the outage lives in this instance's memory.
            for message in ("Where is my parcel?", "It is order 77."):
                response = await client.post(
                    "/v1/chat", json={"session_id": "survivor", "message": message}
                )
                assert 200 == response.status_code
        deadline = time.monotonic() + 30
        resumed = False
        while not resumed:
            assert time.monotonic() < deadline, "no cache hit within 30 s of Redis coming back"
            _, after = await traffic(client, "after", 30)
            resumed = any(r.json()["cached"] for r in after)
        response = await client.post(
            "/v1/chat", json={"session_id": "survivor", "message": "Any news?"}
        )
        assert 200 == response.status_code
        events = await events_by_request(container)
        redis = Redis.from_url(REDIS_URL)
        survivor = await redis.lrange(f"{namespace}:session:survivor", 0, -1)
        await redis.aclose()
    p99_healthy, p99_outage = percentile(healthy, 99), percentile(outage, 99)
    print(
        f"redis outage: p50 {percentile(healthy, 50):.1f} → {percentile(outage, 50):.1f} ms,"
        f" p99 {p99_healthy:.1f} → {p99_outage:.1f} ms (bound: +{ADDED_BOUND_MS:.0f} ms)"
    )
    assert p99_outage <= p99_healthy + ADDED_BOUND_MS
    assert {"hit", "miss"} == outcomes(events, "before", "semantic")
    assert "degraded" in outcomes(events, "during", "session")
    assert outcomes(events, "during", "session") <= {"error", "degraded"}
    assert outcomes(events, "during", "semantic") <= {"error", "degraded"}
    assert "hit" in outcomes(events, "after", "semantic")
    assert 6 == len(survivor)  # the outage turns moved to Redis with the first write after it


# --- Redis slow, then fast again --------------------------------------------------------------


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 that holds every chunk from Redis for `delay_s`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> DelayingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, slow: bool
        ) -> None:
            with contextlib.suppress(OSError):
                while chunk := await source.read(65536):
                    if slow and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    sink.write(chunk)
                    await sink.drain()
            sink.close()

        await asyncio.gather(
            pump(reader, up_writer, slow=False), pump(up_reader, writer, slow=True)
        )


async def test_a_slow_redis_costs_a_bounded_time_then_nothing_and_is_used_again_when_fast(
    tmp_path, namespace
):
    async with DelayingProxy(REDIS_PORT) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with api(tmp_path, namespace, redis_url=url, cache_breaker_reset_s=0.5) as (
            client,
            container,
        ):
            await traffic(client, "warmup", 20, concurrency=4)
            fast, _ = await traffic(client, "fast", 60, concurrency=4)
            proxy.delay_s = 0.5  # ten times the operation timeout
            slow, _ = await traffic(client, "slow", 120, concurrency=4)
            proxy.delay_s = 0.0
            await asyncio.sleep(0.6)  # past the reset timeout: the next call probes
            _, after = await traffic(client, "after", 60, concurrency=4)
            events = await events_by_request(container)
    print(
        f"slow redis: p99 {percentile(fast, 99):.1f} → {percentile(slow, 99):.1f} ms,"
        f" max {max(slow):.1f} ms (bound: +{ADDED_BOUND_MS:.0f} ms)"
    )
    assert max(slow) <= percentile(fast, 99) + ADDED_BOUND_MS
    assert "error" in outcomes(events, "slow", "semantic")
    assert "degraded" in outcomes(events, "slow", "semantic")
    assert any(r.json()["cached"] for r in after)


# --- garbage in Redis -------------------------------------------------------------------------


async def test_garbage_in_redis_is_a_miss_with_a_logged_reason_and_is_then_replaced(
    tmp_path, namespace, caplog
):
    caplog.set_level(logging.WARNING, logger="widelog.cache")
    redis = Redis.from_url(REDIS_URL)
    async with api(tmp_path, namespace) as (client, container):

        async def ask(session: str, message: str, request_id: str) -> dict[str, Any]:
            body = {"session_id": session, "message": message}
            response = await client.post(
                "/v1/chat", json=body, headers={"x-request-id": request_id}
            )
            assert 200 == response.status_code, response.text
            answer: dict[str, Any] = response.json()
            return answer

        await ask("a", "Do you ship internationally?", "first")
        [answer_key] = [k async for k in redis.scan_iter(match=f"{namespace}:answer:*")]
        await redis.set(answer_key, b"\x00\xffnot an answer")
        await redis.rpush(f"{namespace}:session:a", b"{garbage")

        garbled = await ask("b", "Do you ship internationally?", "garbled-answer")
        follow_up = await ask("a", "To Korea?", "garbled-session")
        healed = await ask("c", "Do you ship internationally?", "healed")
        events = await events_by_request(container)
    await redis.aclose()
    assert (False, True) == (garbled["cached"], healed["cached"])
    assert follow_up["answer"]
    answer_event, session_event = events["garbled-answer"], events["garbled-session"]
    assert "error" == answer_event["cache"]["semantic"]
    assert answer_event["cache"]["semantic_reason"].startswith("corrupt value")
    assert "error" == session_event["cache"]["session"]
    assert session_event["cache"]["session_reason"].startswith("corrupt value")
    assert "hit" == events["healed"]["cache"]["semantic"]
    logged = caplog.text
    assert "corrupt answer" in logged
    assert "corrupt history for session 'a'" in logged
