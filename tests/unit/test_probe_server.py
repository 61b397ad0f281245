"""The worker's probe server, over real loopback sockets."""

from __future__ import annotations

import asyncio

import httpx

from widelog.admin.probe_server import ProbeServer


async def test_it_serves_metrics_health_and_readiness_and_refuses_the_rest():
    checks = {"store": "ok", "source": "ok"}

    async def ready() -> dict[str, str]:
        return dict(checks)

    server = ProbeServer(metrics=lambda: b"widelog_up 1\n", ready=ready, port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            metrics = await client.get("/metrics")
            assert (200, "widelog_up 1\n") == (metrics.status_code, metrics.text)
            assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert 200 == (await client.get("/healthz")).status_code
            assert (200, True) == _ready(await client.get("/readyz"))
            checks["store"] = "error: ServerSelectionTimeoutError"
            assert (503, False) == _ready(await client.get("/readyz"))
            assert 404 == (await client.get("/nope")).status_code
            assert 405 == (await client.post("/metrics")).status_code
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"garbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await server.close()


def _ready(response: httpx.Response) -> tuple[int, bool]:
    return response.status_code, response.json()["ready"]
