"""Helpers for your own tests: see the events your code finalizes without any transport or store.

    from widelog.testing import capture_events

    def test_export_records_rows():
        with capture_events() as events:
            run_export()                      # uses widelog.unit(...) / widelog.event
        assert events[0]["rows"] == 1200

For an app: `recorder = RecordingPublisher()`, then
`widelog.instrument(app, publisher=recorder, sampling=keep_all())` and read `recorder.events`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from widelog import _instrument
from widelog.config import Settings
from widelog.events import log_bridge
from widelog.sampling.policy import BaselineRule, SamplingPolicy

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["RecordingPublisher", "capture_events", "keep_all"]


class RecordingPublisher:
    """An `EventPublisher` that keeps what it is given, in order: a fake, not a mock."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []
        self.events: list[dict[str, Any]] = []  # each payload decoded, as the store would get it
        self.closed = False

    def publish(self, key: str, payload: bytes) -> None:
        self.records.append((key, payload))
        self.events.append(msgspec.json.decode(payload))

    async def flush(self, timeout: float) -> int:
        del timeout
        return 0

    async def close(self) -> None:
        self.closed = True


def keep_all() -> SamplingPolicy:
    """A sampling policy that keeps every event, so a test sees each one it caused."""
    return SamplingPolicy(baseline=BaselineRule(rate=1.0))


@contextlib.contextmanager
def capture_events(*, service: str = "test") -> Iterator[list[dict[str, Any]]]:
    """Every event finalized inside the block (all kept), as dicts; the previous setup after.

    App log records at WARNING and above inside a unit are folded into its `logs`, as in
    production; the log bridge that was installed before is put back after the block.
    """
    previous = _instrument._active
    previous_folder = log_bridge._installed
    recorder = RecordingPublisher()
    settings = Settings(store="sqlite")  # never opened: the recorder is the end of the line
    _instrument.init(service=service, settings=settings, sampling=keep_all(), publisher=recorder)
    try:
        yield recorder.events
    finally:
        _instrument._active = previous
        log_bridge.restore(previous_folder)
