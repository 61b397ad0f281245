"""Hand-written fakes: they record what they were given, or fail on purpose, over real parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from widelog.pipeline.ports import DeadLetter, PublishError, WriteResult
from widelog.policies import load_sampling_policy

# Sampling off: every event kept (the baseline rate is 1), for tests that count stored events.
KEEP_ALL = load_sampling_policy(None, {"WIDELOG_SAMPLING_BASELINE_RATE": "1"})


class RecordingPublisher:
    """An `EventPublisher` that keeps every payload it accepted, decoded."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[dict[str, Any]] = []
        self.keys: list[str] = []

    def publish(self, key: str, payload: bytes) -> None:
        if self.fail:
            raise PublishError("broker down (fake)")
        self.keys.append(key)
        self.events.append(msgspec.json.decode(payload))

    async def flush(self, timeout: float) -> int:
        return 0

    async def close(self) -> None:
        return None


class FlakyStore:
    """Wraps a real store; the next `failures` writes raise, as a store outage would.

    It also keeps every dead letter it was given, to read their reasons.
    """

    def __init__(self, inner: Any, *, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures
        self.write_calls = 0
        self.letters: list[DeadLetter] = []

    async def write_batch(self, events: Sequence[Mapping[str, Any]]) -> WriteResult:
        self.write_calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("store unavailable (fake outage)")
        result: WriteResult = await self.inner.write_batch(events)
        return result

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        await self.inner.write_dead_letters(letters)
        self.letters += letters

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
