"""The stdout transport prints one readable line per kept event, off the request path."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI

import widelog
from widelog.bootstrap import build_pipeline
from widelog.config import Settings
from widelog.pipeline.ports import PublishError
from widelog.pipeline.stdout import StdoutEventPublisher, format_event, line_of
from widelog.testing import keep_all

BASE: dict[str, Any] = {"request_id": "req-1", "timestamp": "2025-03-01T12:01:02.345678Z"}


def test_an_ordinary_request_is_time_method_route_status_duration_and_request_id():
    doc = {**BASE, "http": {"method": "POST", "route": "/v1/chat", "status": 200}}
    doc |= {"duration_ms": 41.3, "llm": {"model": "gpt-4o-mini"}}
    expected = "12:01:02.345 POST /v1/chat 200 41ms req=req-1 llm.model=gpt-4o-mini"
    assert expected == format_event(doc)


def test_an_error_shows_its_code_and_a_quoted_message_on_the_same_line():
    doc = {**BASE, "http": {"method": "POST", "route": "/v1/chat", "status": 504}}
    doc |= {"duration_ms": 3.25, "error": {"code": "LLM_TIMEOUT", "message": 'no "answer"\nin 3s'}}
    expected = (
        "12:01:02.345 POST /v1/chat 504 3.2ms req=req-1 error=LLM_TIMEOUT"
        ' error.message="no \\"answer\\"\\nin 3s"'
    )
    assert expected == format_event(doc)


def test_a_unit_shows_its_name_and_status_and_how_many_records_were_folded():
    doc = {**BASE, "unit": {"name": "nightly export", "status": "ok"}, "duration_ms": 1204.6}
    doc |= {"logs": [{"message": "a"}, {"message": "b"}], "logs_dropped": 3}
    assert '12:01:02.345 unit "nightly export" ok 1205ms req=req-1 logs=5' == format_event(doc)


def test_on_a_terminal_the_status_and_error_are_coloured():
    doc = {**BASE, "http": {"method": "GET", "route": "/x", "status": 500}, "duration_ms": 12}
    line = format_event(doc, color=True)
    assert "\x1b[31m500\x1b[0m" in line
    assert "GET /x" in line
    assert "12:01:02.345 GET /x 500 12ms req=req-1" == re.sub(r"\x1b\[\d+m", "", line)


def test_a_payload_that_is_not_an_event_is_shown_as_it_is_on_one_line():
    assert "not json\\nat all" == line_of(b"not json\nat all")


async def test_lines_are_written_by_a_thread_and_flush_waits_for_them():
    stream = io.StringIO()
    publisher = StdoutEventPublisher(stream=stream)
    for i in range(3):
        publisher.publish("k", msgspec.json.encode({**BASE, "request_id": f"r{i}"}))
    assert 0 == await publisher.flush(2.0)
    assert ["r0", "r1", "r2"] == re.findall(r"req=(\S+)", stream.getvalue())
    assert "\x1b" not in stream.getvalue()  # not a terminal: no colour
    await publisher.close()


class BlockedTerminal(io.StringIO):
    """A terminal nobody reads: every write waits until `unblock` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.unblock = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.unblock.wait(5)
        return super().write(text)


async def test_a_blocked_terminal_never_blocks_publish_which_refuses_once_the_buffer_is_full():
    terminal = BlockedTerminal()
    publisher = StdoutEventPublisher(stream=terminal, max_pending=2)
    payload = msgspec.json.encode(BASE)
    publisher.publish("k", payload)  # taken by the writer, which now waits on the terminal
    assert await asyncio.to_thread(terminal.writing.wait, 2)
    publisher.publish("k", payload)
    publisher.publish("k", payload)
    with pytest.raises(PublishError, match="2 lines behind"):
        publisher.publish("k", payload)
    assert 3 == await publisher.flush(0.05)
    terminal.unblock.set()
    assert 0 == await publisher.flush(2.0)
    assert 3 == terminal.getvalue().count("\n")
    await publisher.close()


class BrokenPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


async def test_a_broken_stream_is_counted_and_the_writer_keeps_going():
    publisher = StdoutEventPublisher(stream=BrokenPipe())
    publisher.publish("k", msgspec.json.encode(BASE))
    publisher.publish("k", msgspec.json.encode(BASE))
    assert 0 == await publisher.flush(2.0)
    assert 2 == publisher.write_failures
    await publisher.close()


def test_the_stdout_transport_is_wired_without_a_consumer_or_a_spool(tmp_path: Path):
    settings = Settings(transport="stdout", sqlite_path=tmp_path / "never-opened.sqlite3")
    pipeline = build_pipeline(settings)
    assert isinstance(pipeline.publisher, StdoutEventPublisher)
    assert (None, None, None) == (pipeline.consumer, pipeline.replayer, pipeline.fallback)
    assert pipeline.logging.pipeline_started is None  # nothing to start: no warning either


async def test_an_instrumented_app_prints_one_line_per_request(capsys, tmp_path: Path):
    app = FastAPI()
    settings = Settings(transport="stdout", sqlite_path=tmp_path / "never-opened.sqlite3")
    handle = widelog.instrument(app, settings=settings, sampling=keep_all())

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ids = [(await client.get(f"/items/{i}")).headers["x-request-id"] for i in range(3)]
    await handle.close()
    lines = capsys.readouterr().out.splitlines()
    assert [f"GET /items/{{item_id}} 200 req={i}" for i in ids] == [
        re.sub(r"^\S+ (.*) \S+ms (req=\S+)$", r"\1 \2", line) for line in lines
    ]
    assert not (tmp_path / "never-opened.sqlite3").exists()
