"""A tiny HTTP server for processes without a web framework (the worker): metrics and probes.

`GET /metrics` (Prometheus text), `GET /healthz` (the event loop answers), `GET /readyz` (200 or
503 with the failing checks as JSON). Anything else is a 404. Requests are read with a size and
time limit, one response per connection: scrapers and kubelets need nothing more, and the worker
stays free of a web framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("widelog.probes")
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def outcome(check: Awaitable[object], *, timeout: float = 2.0) -> str:
    """`ok`, or `error: <the exception>` (bounded in time and length): a readiness check's line."""
    try:
        await asyncio.wait_for(check, timeout)
    except Exception as exc:  # noqa: BLE001 - readiness reports every failure, raises none
        return f"error: {exc!r}"[:300]
    return "ok"


class ProbeServer:
    """Serves `metrics()` and `ready()` on a loopback (or given) address while the process runs."""

    def __init__(
        self,
        *,
        metrics: Callable[[], bytes],
        ready: Callable[[], Awaitable[dict[str, str]]],
        host: str = "127.0.0.1",
        port: int,
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("probes and metrics on http://%s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path, *_ = head[:MAX_REQUEST_BYTES].decode("latin-1").split(" ", 2)
            status, content_type, body = await self._answer(method, path.split("?", 1)[0])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        except Exception:  # a probe must answer even when a check has a bug
            log.exception("probe handler failed")
            status, content_type, body = 500, "text/plain", b"internal error\n"
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, METRICS_TYPE, self._metrics()
        if path == "/healthz":
            return 200, "application/json", b'{"status": "ok"}\n'
        if path == "/readyz":
            checks = await self._ready()
            ready = all(value == "ok" for value in checks.values())
            body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
            return (200 if ready else 503), "application/json", body
        return 404, "text/plain", b"not found\n"
