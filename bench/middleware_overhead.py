"""Per-request cost of WideEventMiddleware, measured side by side with the same app without it.

Both apps run in-process (no sockets, no HTTP client): each iteration calls the ASGI app directly,
alternating with and without the middleware so both see the same machine state. The middleware
publishes into the real in-process queue, which is emptied between rounds outside the timing.

    .venv/bin/python bench/middleware_overhead.py [--iterations N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

from fastapi import FastAPI

from widelog import LoggingService, WideEventMiddleware, event
from widelog.pipeline.memory import InProcessEventPublisher, InProcessQueue
from widelog.stats import percentile

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/v1/items/42",
    "raw_path": b"/v1/items/42",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
    "server": ("127.0.0.1", 80),
    "client": ("127.0.0.1", 5000),
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(_: dict[str, Any]) -> None:
    return None


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    """The smallest ASGI app: isolates the middleware's own cost."""
    del scope, receive
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        event.set("item.id", item_id)
        return {"id": item_id}

    return app


async def measure(apps: dict[str, Any], iterations: int, drain: Any) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in apps}
    timer = time.perf_counter_ns
    for round_start in range(0, iterations, 1000):
        for _ in range(min(1000, iterations - round_start)):
            for name, app in apps.items():
                scope = dict(SCOPE)
                started = timer()
                await app(scope, receive, send)
                samples[name].append((timer() - started) / 1000)
        drain()
    return samples


async def main(iterations: int) -> None:
    queue = InProcessQueue(max_events=10_000)
    service = LoggingService(
        publisher=InProcessEventPublisher(queue),
        service="bench",
        env="bench",
        version="1",
        instance="bench",
    )

    def drain() -> None:
        while not queue.queue.empty():
            queue.queue.get_nowait()
            queue.queue.task_done()

    pairs = {
        "raw ASGI app": (raw_app, WideEventMiddleware(raw_app, logging_service=service)),
        "FastAPI app": (
            fastapi_app(),
            WideEventMiddleware(fastapi_app(), logging_service=service),
        ),
    }
    print(f"{iterations} requests per variant, interleaved; times in µs per request\n")
    print(f"{'app':<14} {'variant':<16} {'p50':>8} {'p99':>8}")
    for label, (bare, wrapped) in pairs.items():
        apps = {"without": bare, "with widelog": wrapped}
        await measure(apps, 2000, drain)  # warm-up
        gc.collect()
        gc.disable()
        try:
            samples = await measure(apps, iterations, drain)
        finally:
            gc.enable()
        for name, values in samples.items():
            p50, p99 = percentile(values, 50), percentile(values, 99)
            print(f"{label:<14} {name:<16} {p50:8.1f} {p99:8.1f}")
        overhead = percentile(samples["with widelog"], 50) - percentile(samples["without"], 50)
        ratio = percentile(samples["with widelog"], 50) / percentile(samples["without"], 50)
        print(f"{label:<14} {'overhead p50':<16} {overhead:8.1f}  ({ratio:.2f}x)\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().iterations))
