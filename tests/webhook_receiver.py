"""A webhook receiver on loopback for the notification tests: records every request, and answers
200, 500, or not at all (it hangs) as the test says, switching at any moment."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.live import serving

Mode = Literal["ok", "fail", "hang"]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # None: it hung (the sender gave up waiting)

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]


@dataclass
class Receiver:
    url: str = ""
    mode: Mode = "ok"
    requests: list[Received] = field(default_factory=list)

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.status == 200]

    async def wait_for(self, keys: set[str], *, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not keys <= {r.key for r in self.delivered()}:
            assert time.monotonic() < deadline, f"not delivered: {keys}; got {self.requests}"
            await asyncio.sleep(0.1)

    async def wait_for_attempts(self, count: int, *, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, not {count}"
            await asyncio.sleep(0.1)


@contextmanager
def receiving(mode: Mode = "ok") -> Iterator[Receiver]:
    receiver = Receiver(mode=mode)

    async def hook(request: Request) -> Response:
        received = Received(dict(request.headers), await request.body())
        receiver.requests.append(received)
        while receiver.mode == "hang":
            if await request.is_disconnected():
                return Response(status_code=504)  # nobody reads it: the sender timed out
            await asyncio.sleep(0.05)
        received.status = 500 if receiver.mode == "fail" else 200
        return Response(status_code=received.status)

    with serving(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base:
        receiver.url = f"{base}/hook"
        try:
            yield receiver
        finally:
            receiver.mode = "ok"  # releases any request still hanging
