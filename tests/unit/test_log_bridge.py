"""The app's log records are folded into the current event, and carry its request id."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import widelog
from tests.fakes import RecordingPublisher
from widelog import LoggingService, request_scope
from widelog.config import Settings, SettingsError, load_settings
from widelog.events import log_bridge
from widelog.events.log_bridge import EventLogFolder, RequestContextFilter
from widelog.testing import keep_all

app_log = logging.getLogger("tests.app")


@pytest.fixture(autouse=True)
def no_bridge_left_behind() -> Iterator[None]:
    """`init()` installs a record factory for the process; restore the original after each test."""
    original = logging.getLogRecordFactory()
    yield
    log_bridge.install(level="off", max_records=0)
    assert original is logging.getLogRecordFactory()


def folding() -> list[EventLogFolder]:
    """The folders in the record factory chain that still fold."""
    found, factory = [], logging.getLogRecordFactory()
    while isinstance(factory, EventLogFolder):
        found += [factory] if factory.enabled else []
        factory = factory.inner
    return found


def logging_service(publisher: RecordingPublisher) -> LoggingService:
    return LoggingService(publisher=publisher, service="t", env="t", version="1", instance="i")


@pytest.fixture
def folder() -> EventLogFolder:
    """The bridge `init()` installs, with a bound of 3."""
    installed = log_bridge.install(level="WARNING", max_records=3)
    assert installed is not None
    return installed


def one_request(publisher: RecordingPublisher, work: Callable[[], None]) -> dict[str, Any]:
    service = logging_service(publisher)
    event = service.begin()
    with request_scope(event):
        work()
    service.finalize(event)
    [only] = publisher.events
    return only


async def test_a_warning_logged_deep_in_a_handler_is_found_in_the_requests_event():
    app = FastAPI()
    recorder = RecordingPublisher()
    widelog.instrument(app, publisher=recorder, sampling=keep_all(), settings=Settings())

    @app.get("/v1/chat")
    async def chat() -> dict[str, bool]:
        app_log.info("not folded: below WARNING")
        await asyncio.sleep(0.02)
        app_log.warning("upstream %s was slow", "llm")
        return {"ok": True}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert 200 == (await client.get("/v1/chat")).status_code
    [only] = recorder.events
    # Only the app's record: widelog's own warning (no lifespan ran) is not folded.
    [entry] = only["logs"]
    expected = {"level": "WARNING", "logger": "tests.app", "message": "upstream llm was slow"}
    assert expected == {k: entry[k] for k in expected}
    assert 20 <= entry["at_ms"] <= only["duration_ms"]
    await widelog.active().close()


@pytest.mark.usefixtures("folder")
def test_records_are_kept_in_order_up_to_the_bound_and_the_rest_are_counted():
    def work() -> None:
        for i in range(5):
            app_log.warning("record %d", i)

    only = one_request(RecordingPublisher(), work)
    assert ["record 0", "record 1", "record 2"] == [e["message"] for e in only["logs"]]
    assert 2 == only["logs_dropped"]


@pytest.mark.usefixtures("folder")
def test_a_long_message_is_cut_and_an_exception_keeps_its_type_and_message():
    def work() -> None:
        app_log.error("x" * 2000)
        try:
            int("bad row 7")
        except ValueError:
            app_log.exception("export failed")

    long, failed = one_request(RecordingPublisher(), work)["logs"]
    assert "x" * log_bridge.MAX_MESSAGE_CHARS + "…" == long["message"]
    assert "ValueError: invalid literal for int() with base 10: 'bad row 7'" == failed["exception"]
    assert "ERROR" == failed["level"]


@pytest.mark.usefixtures("folder")
def test_widelogs_own_loggers_are_never_folded():
    def work() -> None:
        for name in ("widelog", "widelog.pipeline.kafka", "widelogger"):
            logging.getLogger(name).warning("publish failed")

    only = one_request(RecordingPublisher(), work)
    assert ["widelogger"] == [e["logger"] for e in only["logs"]]  # a prefix is not the package


@pytest.mark.usefixtures("folder")
def test_outside_a_request_and_after_the_event_was_finalized_nothing_is_folded():
    publisher = RecordingPublisher()
    service = logging_service(publisher)
    event = service.begin()
    app_log.warning("outside any request")
    with request_scope(event):
        service.finalize(event)
        app_log.warning("after the event was published")
    assert "logs" not in event.doc
    assert "logs" not in publisher.events[0]


@pytest.mark.usefixtures("folder")
def test_a_logs_field_the_app_set_itself_is_left_alone():
    def work() -> None:
        widelog.event.set("logs", "s3://bucket/run-7")
        app_log.warning("not folded over the app's own field")

    assert "s3://bucket/run-7" == one_request(RecordingPublisher(), work)["logs"]


def test_a_record_that_cannot_be_formatted_is_counted_not_raised(folder):
    event = logging_service(RecordingPublisher()).begin()
    with request_scope(event):
        # What `app_log.warning("%d rows", "x")` does first; its handlers report the bad
        # arguments themselves (pytest's would fail this test, hence the direct call).
        record = folder("tests.app", logging.WARNING, __file__, 1, "%d rows", ("x",), None)
    assert "%d rows" == record.msg
    assert "logs" not in event.doc
    assert 1 == folder.failures


def test_the_bridge_adds_no_handler_so_the_apps_basic_config_still_works():
    root = logging.getLogger()
    handlers = list(root.handlers)
    widelog.init(publisher=RecordingPublisher(), settings=Settings())
    assert handlers == root.handlers  # a handler here would make basicConfig() a no-op


async def test_a_factory_wrapped_around_the_bridge_keeps_working_after_close():
    handle = widelog.init(publisher=RecordingPublisher(), sampling=keep_all(), settings=Settings())
    bridge = handle.log_folder
    assert bridge is logging.getLogRecordFactory()
    stamped: list[str] = []

    def stamping(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = bridge(*args, **kwargs)
        stamped.append(record.getMessage())
        return record

    logging.setLogRecordFactory(stamping)
    try:
        await handle.close()
        event = logging_service(RecordingPublisher()).begin()
        with request_scope(event):
            app_log.warning("after close")
    finally:
        logging.setLogRecordFactory(bridge.inner)
    assert ["after close"] == stamped
    assert "logs" not in event.doc


def test_the_filter_gives_each_record_the_request_and_trace_id_and_a_dash_outside():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(logging.Formatter("%(request_id)s %(trace_id)s %(message)s"))
    app_log.addHandler(handler)
    try:
        event = logging_service(RecordingPublisher()).begin(request_id="req-1")
        event.set("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")
        with request_scope(event):
            app_log.warning("inside")
        app_log.warning("outside")
    finally:
        app_log.removeHandler(handler)
    expected = "req-1 4bf92f3577b34da6a3ce929d0e0e4736 inside\n- - outside\n"
    assert expected == stream.getvalue()


def test_a_second_init_replaces_the_bridge_so_each_record_is_folded_once():
    recorder = RecordingPublisher()
    first = widelog.init(publisher=RecordingPublisher(), settings=Settings())
    second = widelog.init(publisher=recorder, sampling=keep_all(), settings=Settings())
    assert [second.log_folder] == folding()
    with widelog.unit("export"):
        app_log.warning("once")
    assert ["once"] == [e["message"] for e in recorder.events[0]["logs"]]
    assert first.log_folder not in folding()


async def test_close_takes_the_bridge_off_but_an_older_handle_never_takes_a_newer_ones():
    older = widelog.init(publisher=RecordingPublisher(), settings=Settings())
    newer = widelog.init(publisher=RecordingPublisher(), settings=Settings())
    await older.close()
    assert [newer.log_folder] == folding()
    await newer.close()
    assert [] == folding()


def test_off_installs_no_bridge_and_levels_are_read_in_any_case(monkeypatch):
    recorder = RecordingPublisher()
    widelog.init(publisher=recorder, sampling=keep_all(), settings=Settings(log_bridge_level="off"))
    assert [] == folding()
    with widelog.unit("export"):
        app_log.warning("not folded")
    assert "logs" not in recorder.events[0]
    monkeypatch.setenv("WIDELOG_LOG_BRIDGE_LEVEL", "error")
    assert "ERROR" == load_settings().log_bridge_level


def test_an_unknown_level_fails_at_startup_naming_the_variable(monkeypatch):
    monkeypatch.setenv("WIDELOG_LOG_BRIDGE_LEVEL", "loud")
    with pytest.raises(SettingsError, match="WIDELOG_LOG_BRIDGE_LEVEL"):
        load_settings()


def test_the_configured_level_and_bound_are_what_the_bridge_uses():
    recorder = RecordingPublisher()
    settings = Settings(log_bridge_level="info", log_bridge_max_records=1)
    widelog.init(publisher=recorder, sampling=keep_all(), settings=settings)
    app_log.setLevel(logging.DEBUG)
    try:
        with widelog.unit("export"):
            app_log.debug("emitted by its logger, but below the bridge's level")
            app_log.info("kept at INFO")
            app_log.info("over the bound")
    finally:
        app_log.setLevel(logging.NOTSET)
    [only] = recorder.events
    assert ["kept at INFO"] == [e["message"] for e in only["logs"]]
    assert 1 == only["logs_dropped"]
