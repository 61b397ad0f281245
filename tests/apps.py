"""The chat API around a block: in-process with a client bound to it, or under real uvicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fakes import KEEP_ALL
from tests.live import free_port
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


@dataclass
class ServedAPI:
    base: str
    port: int
    output: str = ""  # everything the server printed, once it has stopped


@contextmanager
def served_chat_api(cwd: Path, env: Mapping[str, str]) -> Iterator[ServedAPI]:
    """`widelog.chat.api:app_from_env` under uvicorn on a free loopback port, once it answers;
    stopped with SIGTERM by its PID, which must end it cleanly."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "widelog.chat.api:app_from_env"]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = ServedAPI(f"http://127.0.0.1:{port}", port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(served.base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, "the chat service exited at start"
                assert time.monotonic() < deadline, "the chat service did not start"
                time.sleep(0.2)
        yield served
    finally:
        os.kill(server.pid, signal.SIGTERM)
        served.output, _ = server.communicate(timeout=30)
    # uvicorn re-raises the signal once its graceful shutdown is done
    assert server.returncode in {0, -signal.SIGTERM}, served.output
