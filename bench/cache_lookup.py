"""Cost of a response-cache hit on the real Redis, next to a raw redis-py GET in the same run.

1. Lookup: `answer_key()` (normalize + hash) + GET + decode, through the fail-open guard the chat
   service uses (timeout, breaker, counters), against `await redis.get(key)` of the same stored
   bytes on the same client. The two are interleaved call by call, so load on the machine hits
   both alike; each call is timed on its own.
2. Chat: a whole `POST /v1/chat` in-process (middleware, wide event, session read and write,
   answer lookup) served from the cache, against the same request with `no_cache` that the fake
   LLM answers (its default latency: 20 ms median, log-normal).

    .venv/bin/python bench/cache_lookup.py [--lookups N] [--chats N]

Needs Redis on 127.0.0.1:6379 (`scripts/services.sh up`); keys go under a fresh namespace that is
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from widelog.cache.circuit_breaker import CircuitBreaker
from widelog.cache.fail_open import FailOpenSemanticCache
from widelog.cache.keys import answer_key
from widelog.cache.ports import CachedAnswer
from widelog.cache.redis_cache import RedisSemanticCache, cache_client
from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.config import Settings
from widelog.stats import percentile

REDIS_URL = "redis://127.0.0.1:6379/0"
QUESTIONS = [
    "How do I reset my password?",
    "비밀번호를 어떻게 재설정하나요?",
    "配送状況を確認するには？",
    "Wie kann ich mein Abo kündigen?",
]
# The same questions as users type them: other case, spacing, full-width forms. All hits.
ASKED = [
    "how do I  reset my PASSWORD?",
    "비밀번호를  어떻게\u3000재설정하나요?",
    "配送状況を確認するには?",
    "WIE KANN ICH MEIN ABO KÜNDIGEN?",
]


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(samples, 50), 1), "p99": round(percentile(samples, 99), 1)}


async def lookups(namespace: str, n: int) -> dict[str, Any]:
    client = cache_client(REDIS_URL, timeout_s=0.05)
    adapter = RedisSemanticCache(client, namespace=namespace)
    guarded = FailOpenSemanticCache(adapter, breaker=CircuitBreaker(name="bench"), timeout_s=0.05)
    answer = CachedAnswer(
        text="Open Settings → Security → Reset password; a link arrives by email. " * 4,
        model="fake-chat-1",
        provider="fake",
        input_tokens=12,
        output_tokens=60,
        created_at=time.time(),
    )
    keys = []
    for question in QUESTIONS:
        key = answer_key(question, prompt_version="v3", language="ko", model="fake-chat-1")
        await adapter.put(key, answer, ttl_s=600)
        keys.append(adapter.key(key))
    timer = time.perf_counter_ns
    raw_us: list[float] = []
    hit_us: list[float] = []
    misses = 0
    gc.disable()  # a collection would land on one random call and measure the collector
    try:
        for i in range(n + n // 10):
            asked, raw_key = ASKED[i % len(ASKED)], keys[i % len(keys)]
            started = timer()
            await client.get(raw_key)
            raw = (timer() - started) / 1000
            started = timer()
            key = answer_key(asked, prompt_version="v3", language="ko", model="fake-chat-1")
            lookup = await guarded.get(key)
            hit = (timer() - started) / 1000
            misses += lookup.outcome != "hit"
            if i >= n // 10:  # the first tenth warms connections and caches up
                raw_us.append(raw)
                hit_us.append(hit)
    finally:
        gc.enable()
        await client.aclose()
    key_us = []
    for i in range(n):
        started = timer()
        answer_key(ASKED[i % len(ASKED)], prompt_version="v3", language="ko", model="fake-chat-1")
        key_us.append((timer() - started) / 1000)
    raw_s, hit_s = summary(raw_us), summary(hit_us)
    return {
        "raw_get_us": raw_s,
        "cache_hit_lookup_us": hit_s,
        "answer_key_us": {
            k: round(percentile(key_us, q), 2) for k, q in (("p50", 50), ("p99", 99))
        },
        "ratio_p50": round(hit_s["p50"] / raw_s["p50"], 2),
        "ratio_p99": round(hit_s["p99"] / raw_s["p99"], 2),
        "lookups": n,
        "misses": misses,
    }


async def chats(namespace: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="widelog-bench-") as tmp:
        settings = Settings(
            cache="redis",
            cache_namespace=namespace,
            sqlite_path=Path(tmp) / "events.sqlite3",
        )
        container = build(settings)
        await container.start()
        transport = httpx.ASGITransport(app=create_app(container))
        cached_ms: list[float] = []
        llm_ms: list[float] = []
        served_from_cache = 0
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                body = {"message": QUESTIONS[1], "language": "ko"}
                await client.post("/v1/chat", json={**body, "session_id": "warm"})
                for i in range(n):
                    for no_cache, samples in ((False, cached_ms), (True, llm_ms)):
                        request: dict[str, Any] = {**body, "session_id": f"s-{i}-{no_cache}"}
                        request["cache"] = {"no_cache": no_cache, "no_store": True}
                        started = time.perf_counter()
                        response = await client.post("/v1/chat", json=request)
                        samples.append((time.perf_counter() - started) * 1000)
                        served_from_cache += response.json()["cached"]
        finally:
            await container.aclose()
    return {
        "served_from_cache_ms": summary(cached_ms),
        "answered_by_fake_llm_ms": summary(llm_ms),
        "requests_each": n,
        "served_from_cache": served_from_cache,
    }


async def cleanup(namespace: str) -> None:
    client = cache_client(REDIS_URL, timeout_s=5)
    keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()


async def main(n_lookups: int, n_chats: int) -> None:
    namespace = f"widelog-bench-{uuid.uuid4().hex[:8]}"
    try:
        report = {
            "lookup": await lookups(namespace, n_lookups),
            "chat": await chats(namespace, n_chats),
        }
    finally:
        await cleanup(namespace)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    ratio = report["lookup"]["ratio_p50"]
    verdict = "meets" if ratio <= 1.5 else "MISSES"
    print(f"cache hit lookup p50 is {ratio}x a raw GET: {verdict} the 1.5x aim", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--chats", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.lookups, args.chats))
