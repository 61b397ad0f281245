"""An active OpenTelemetry span gives the event its ids; without one, widelog's own ids as before.

Spans come from the real SDK `TracerProvider` (never installed globally, so nothing leaks into
other tests), recorded by its in-memory exporter, and made current by an ASGI middleware that
does what OpenTelemetry's ASGI instrumentation does: continue the caller's `traceparent`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind

import widelog
from tests.fakes import RecordingPublisher
from widelog import LoggingService, WideEventMiddleware, event
from widelog.events import otel
from widelog.testing import capture_events

if TYPE_CHECKING:
    from widelog.events.middleware import ASGIApp, Receive, Scope, Send

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tests")


def traced(app: ASGIApp, tracer: trace.Tracer) -> ASGIApp:
    """A server span around each request, outside widelog's middleware, as OTel's ASGI one."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode(): v.decode() for k, v in scope.get("headers", ())}
        parent = propagate.extract(headers)
        with tracer.start_as_current_span("GET /items", context=parent, kind=SpanKind.SERVER):
            await app(scope, receive, send)

    return middleware


def make_app(publisher: RecordingPublisher) -> FastAPI:
    service = LoggingService(publisher=publisher, service="t", env="t", version="1", instance="i")
    app = FastAPI()
    app.add_middleware(WideEventMiddleware, logging_service=service)

    @app.get("/items")
    async def items() -> dict[str, bool]:
        event.set("handled", value=True)
        return {"ok": True}

    return app


async def get(app: ASGIApp, headers: dict[str, str] | None = None) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert 200 == (await client.get("/items", headers=headers)).status_code


def ids_of(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_a_request_under_a_server_span_carries_that_spans_trace_and_span_ids(
    tracer, exporter
):
    publisher = RecordingPublisher()
    await get(traced(make_app(publisher), tracer))
    [span] = exporter.get_finished_spans()
    [only] = publisher.events
    assert ids_of(span) == (only["trace_id"], only["span_id"])
    assert "parent_span_id" not in only  # a root span has no parent


async def test_a_server_span_that_continued_a_traceparent_wins_over_widelogs_own_parse(
    tracer, exporter
):
    publisher = RecordingPublisher()
    await get(traced(make_app(publisher), tracer), headers={"traceparent": TRACEPARENT})
    [span] = exporter.get_finished_spans()
    [only] = publisher.events
    trace_id, span_id = ids_of(span)
    assert CALLER_TRACE == trace_id == only["trace_id"]
    assert span_id == only["span_id"]  # the server span, not an id widelog made up
    assert CALLER_SPAN == only["parent_span_id"]


async def test_without_an_active_span_the_traceparent_header_is_parsed_as_before():
    publisher = RecordingPublisher()
    await get(make_app(publisher), headers={"traceparent": TRACEPARENT})
    [only] = publisher.events
    assert CALLER_TRACE == only["trace_id"]
    assert CALLER_SPAN == only["parent_span_id"]
    assert 16 == len(only["span_id"])
    assert CALLER_SPAN != only["span_id"]


async def test_without_an_active_span_or_a_traceparent_there_are_no_trace_ids():
    publisher = RecordingPublisher()
    await get(make_app(publisher))
    [only] = publisher.events
    assert set() == {"trace_id", "span_id", "parent_span_id"} & only.keys()


def test_a_unit_inside_a_span_carries_that_spans_ids(tracer, exporter):
    with capture_events() as events:
        with tracer.start_as_current_span("nightly-export"), widelog.unit("export"):
            pass
        with widelog.unit("outside-any-span"):
            pass
    [span] = exporter.get_finished_spans()
    inside, outside = events
    assert ids_of(span) == (inside["trace_id"], inside["span_id"])
    assert "trace_id" not in outside


def test_a_child_span_reports_its_parent(tracer):
    with tracer.start_as_current_span("job") as parent, tracer.start_as_current_span("step"):
        ids = otel.active_span_ids()
    assert ids is not None
    assert f"{parent.get_span_context().span_id:016x}" == ids["parent_span_id"]


class BrokenSpan(NonRecordingSpan):
    def get_span_context(self) -> SpanContext:
        raise RuntimeError("a tracer with a bug")


def test_a_broken_span_costs_the_event_its_ids_and_nothing_else():
    broken = trace.use_span(BrokenSpan(trace.INVALID_SPAN_CONTEXT))
    with broken, capture_events() as events, widelog.unit("export"):
        pass
    [only] = events
    assert "trace_id" not in only


def test_without_opentelemetry_installed_no_ids_are_looked_up_and_the_import_is_tried_once(
    tracer, monkeypatch
):
    monkeypatch.setattr(otel, "_lookup", None)  # as a fresh process has it: nothing imported yet
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` fails
        with tracer.start_as_current_span("job"):
            assert otel.active_span_ids() is None
    with tracer.start_as_current_span("job"):
        assert otel.active_span_ids() is None  # importable now, but the answer was kept
