"""A local OpenAI-compatible stub server on loopback, for the LLM adapter tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.live import serving

# What the stub answers, chosen by the last user message.
SCRIPT: dict[str, tuple[int, Any]] = {
    "rate": (429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}),
    "filter": (400, {"error": {"message": "filtered", "code": "content_filter"}}),
    "long": (
        200,
        {"model": "m", "choices": [{"message": {"content": "cut"}, "finish_reason": "length"}]},
    ),
    "stopped": (
        200,
        {
            "model": "m",
            "choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}],
        },
    ),
    "down": (500, {"error": {"message": "internal"}}),
    "shape": (200, {"unexpected": True}),
    "html": (502, "<html>bad gateway</html>"),
}


async def completions(request: Request) -> Response:
    body = await request.json()
    request.app.state.seen.append((request.headers.get("authorization"), body))
    prompt = body["messages"][-1]["content"]
    if prompt == "slow":
        await asyncio.sleep(2)
    if prompt in SCRIPT:
        status, payload = SCRIPT[prompt]
        if isinstance(payload, str):
            return Response(payload, status_code=status)
        return JSONResponse(payload, status_code=status)
    return JSONResponse(
        {
            "model": body["model"] + "-2026",
            "choices": [{"message": {"content": f"echo: {prompt}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        }
    )


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[str, Starlette]]:
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    app.state.seen = []
    with serving(app) as base:
        yield f"{base}/v1", app
