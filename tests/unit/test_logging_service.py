import logging

from tests.fakes import RecordingPublisher
from widelog import LoggingService, current_event, event, request_scope


def new_service(publisher: RecordingPublisher) -> LoggingService:
    return LoggingService(
        publisher=publisher, service="svc", env="test", version="1", instance="i1"
    )


def test_finalize_publishes_one_event_keyed_by_request_id_even_if_called_twice():
    publisher = RecordingPublisher()
    service = new_service(publisher)
    wide = service.begin(request_id="req-1")
    service.finalize(wide)
    service.finalize(wide)
    assert ["req-1"] == publisher.keys
    assert 1 == service.stats.finalized == service.stats.published
    assert {"service": "svc", "env": "test", "version": "1", "instance": "i1"}.items() <= (
        publisher.events[0].items()
    )
    assert publisher.events[0]["duration_ms"] >= 0


def test_finalize_never_raises_when_the_publisher_fails(caplog):
    service = new_service(RecordingPublisher(fail=True))
    with caplog.at_level(logging.WARNING, logger="widelog"):
        service.finalize(service.begin(request_id="r-9"))
    assert (1, 0) == (service.stats.publish_failed, service.stats.published)
    assert "publish failed for request r-9" in caplog.text


def test_finalize_never_raises_when_encoding_fails(caplog, monkeypatch):
    def broken_encode(*_args, **_kwargs):
        raise RuntimeError("encoder bug")

    monkeypatch.setattr("widelog.events.logging_service.encode", broken_encode)
    publisher = RecordingPublisher()
    service = new_service(publisher)
    with caplog.at_level(logging.ERROR, logger="widelog"):
        service.finalize(service.begin())
    assert (1, []) == (service.stats.finalize_failed, publisher.events)
    assert "finalize failed" in caplog.text


def test_finalize_counts_errors_before_publishing():
    service = new_service(RecordingPublisher(fail=True))
    wide = service.begin()
    wide.error("LLM_TIMEOUT")
    service.finalize(wide)
    assert 1 == service.stats.errors


def test_the_event_proxy_writes_to_the_current_request_only():
    service = new_service(RecordingPublisher())
    first, second = service.begin(), service.begin()
    with request_scope(first):
        event.set("step", "one")
        with request_scope(second):
            event.set("step", "two")
        assert "one" == event.get("step")
    assert "two" == second.get("step")


def test_outside_a_request_the_event_proxy_is_harmless():
    event.set("orphan", 1)
    event.error("NOPE")
    assert current_event().get("detached") is True
