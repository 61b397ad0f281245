"""The chat API in-process, started and stopped around a block, with a client bound to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from tests.fakes import KEEP_ALL
from widelog.chat.api import create_app
from widelog.chat.bootstrap import ChatContainer, build
from widelog.config import Settings
from widelog.sampling.policy import SamplingPolicy


@asynccontextmanager
async def running_api(
    settings: Settings, *, sampling: SamplingPolicy = KEEP_ALL
) -> AsyncIterator[tuple[httpx.AsyncClient, ChatContainer]]:
    container = build(settings, sampling=sampling)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client, container
    finally:
        await container.aclose()
