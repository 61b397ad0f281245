"""Live pipelines for the fault tests: one test's names and settings, its worker processes,
its in-process API and its counts by request id in the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from tests.apps import running_api
from tests.live import KAFKA, REDIS_URL, free_port, mongo_url, unique
from widelog.chat.bootstrap import ChatContainer
from widelog.config import Settings


class Pipeline:
    """One test's names and settings, shared by the in-process API and its worker processes."""

    def __init__(self, tmp_path: Path, transport: str) -> None:
        self.database = unique("widelog_live").replace("-", "_")
        self.env = {
            "WIDELOG_TRANSPORT": transport,
            "WIDELOG_STORE": "mongo",
            "WIDELOG_KAFKA_TOPIC": unique("log-events"),
            "WIDELOG_KAFKA_GROUP": unique("log-consumer-group"),
            "WIDELOG_REDIS_STREAM": unique("log-events"),
            "WIDELOG_MONGO_URL": mongo_url(self.database),
            "WIDELOG_KAFKA_BOOTSTRAP": KAFKA,  # the services this run uses, not the defaults
            "WIDELOG_REDIS_URL": REDIS_URL,
            "WIDELOG_KAFKA_PARTITIONS": "4",
            "WIDELOG_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "WIDELOG_KAFKA_MESSAGE_TIMEOUT_MS": "3000",
            "WIDELOG_REDIS_CLAIM_IDLE_MS": "2000",
            "WIDELOG_FLUSH_INTERVAL_S": "0.2",
            "WIDELOG_SPOOL_DIR": str(tmp_path / "spool"),
            "WIDELOG_REPLAY_INTERVAL_S": "0.5",
            "WIDELOG_FAKE_LLM_LATENCY_MS": "0",
            "WIDELOG_FAKE_LLM_LATENCY_SIGMA": "0",
        }
        self.logs = tmp_path
        self.workers: list[subprocess.Popen[bytes]] = []
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url(self.database))

    def settings(self) -> Settings:
        keys = {k.removeprefix("WIDELOG_").lower(): v for k, v in self.env.items()}
        # Policy variables (WIDELOG_INCIDENTS_RULES, ...) are their loaders', not settings.
        return Settings.model_validate(
            {k: v for k, v in keys.items() if k in Settings.model_fields}
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        with (self.logs / f"worker-{len(self.workers)}.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "widelog", "worker"],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.workers.append(worker)
        return worker

    def worker_log(self, index: int) -> str:
        return (self.logs / f"worker-{index}.log").read_text()

    async def wait_for_log(self, index: int, text: str, *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.worker_log(index):
            assert time.monotonic() < deadline, f"worker {index} never logged {text!r}"
            await asyncio.sleep(0.2)

    async def stored_request_ids(self) -> collections.Counter[str]:
        events = self.mongo.get_default_database()["events"]
        return collections.Counter(
            [doc["request_id"] async for doc in events.find({}, {"request_id": 1})]
        )

    async def dead_letters(self) -> list[dict[str, Any]]:
        return await self.mongo.get_default_database()["dead_letters"].find({}).to_list()

    async def wait_until_stored(self, expected: set[str], *, timeout: float = 90) -> None:
        """Wait for the backlog to drain, then require each request stored exactly once."""
        deadline = time.monotonic() + timeout
        stored: collections.Counter[str] = collections.Counter()
        while time.monotonic() < deadline:
            stored = await self.stored_request_ids()
            if expected <= set(stored):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # anything stored twice would show up now
        stored = await self.stored_request_ids()
        missing = expected - set(stored)
        twice = {rid: n for rid, n in stored.items() if n > 1}
        if missing or twice:  # where they went, if the worker set them aside
            letters = collections.Counter(str(d["error"])[:120] for d in await self.dead_letters())
            detail = f"; missing e.g. {sorted(missing)[:5]}; dead letters {dict(letters)}"
        else:
            detail = ""
        assert (set(), {}) == (missing, twice), (
            f"{len(missing)} missing, {len(twice)} stored twice{detail}"
        )

    async def aclose(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        await self.mongo.drop_database(self.database)
        await self.mongo.close()


class ApiProcess:
    """`widelog serve` in its own process, with the pipeline's settings (`port`: again after a
    restart); its output appended to `<name>.log` in the pipeline's log directory."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        name: str = "api",
        port: int | None = None,
        log_level: str = "info",
    ) -> None:
        self.port = port or free_port()
        self.log = pipeline.logs / f"{name}.log"
        command = ["widelog", "serve", "--port", str(self.port), "--log-level", log_level]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *command],
                env={**os.environ, **pipeline.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def ready(self, client: httpx.AsyncClient, *, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                    return
            assert time.monotonic() < deadline, self.log.read_text()
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def api(pipeline: Pipeline) -> AbstractAsyncContextManager[tuple[httpx.AsyncClient, ChatContainer]]:
    return running_api(pipeline.settings())


async def chat(client: httpx.AsyncClient, request_id: str) -> float:
    """One chat with a caller-chosen request id, which must succeed; its latency in ms."""
    started = time.perf_counter()
    response = await client.post(
        "/v1/chat",
        json={"session_id": "s", "message": f"hello {request_id}"},
        headers={"x-request-id": request_id},
    )
    assert 200 == response.status_code, response.text
    return (time.perf_counter() - started) * 1000


async def send(
    client: httpx.AsyncClient, prefix: str, count: int, *, concurrency: int = 16
) -> tuple[set[str], list[float]]:
    """`count` chats with caller-chosen request ids; every one must succeed."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    pending = iter(ids)
    latencies: list[float] = []

    async def loop() -> None:
        for request_id in pending:
            latencies.append(await chat(client, request_id))  # noqa: PERF401 - awaits one by one

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return set(ids), latencies


async def send_for(
    client: httpx.AsyncClient, prefix: str, seconds: float, *, concurrency: int = 8
) -> tuple[set[str], list[float]]:
    """Chats with caller-chosen request ids for `seconds`, paced; every one must succeed."""
    deadline = time.monotonic() + seconds
    sent: set[str] = set()
    latencies: list[float] = []

    async def loop(lane: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            request_id = f"{prefix}-{lane}-{i}"
            i += 1
            latencies.append(await chat(client, request_id))
            sent.add(request_id)
            await asyncio.sleep(0.02)

    await asyncio.gather(*(loop(lane) for lane in range(concurrency)))
    return sent, latencies
