"""The dashboard's history: a ring buffer of per-interval samples made from counter readings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from widelog.admin.history import History, HistoryRecorder, Reading, Sample
from widelog.histogram import BOUNDS_MS


def sample_at(at: float) -> Sample:
    return Sample(
        at=at,
        requests=1,
        kept=1,
        errors=0,
        p95_ms=None,
        queue_depth=0,
        session_hit_rate=None,
        semantic_hit_rate=None,
    )


class ScriptedCounters:
    """Hands out the given readings in order, as the pipeline's counters would grow."""

    def __init__(self, *readings: Reading) -> None:
        self._readings = list(readings)

    def __call__(self) -> Reading:
        return self._readings.pop(0)


def durations(**by_bound: int) -> tuple[int, ...]:
    counts = [0] * (len(BOUNDS_MS) + 1)
    for bound, count in by_bound.items():
        counts[BOUNDS_MS.index(float(bound.removeprefix("le")))] = count
    return tuple(counts)


def test_an_empty_history_has_no_samples():
    assert [] == History(capacity=3).samples()


def test_the_ring_buffer_keeps_the_newest_samples_oldest_first():
    history = History(capacity=3)
    for at in range(5):
        history.add(sample_at(float(at)))
    assert [2.0, 3.0, 4.0] == [s.at for s in history.samples()]
    assert 3 == len(history)


def test_the_recorder_keeps_one_hour_of_samples():
    recorder = HistoryRecorder(ScriptedCounters(Reading()), interval_s=10)
    for _ in range(400):
        recorder.history.add(sample_at(0.0))
    assert 360 == len(recorder.history)


def test_a_sample_is_the_difference_between_two_readings():
    counters = ScriptedCounters(
        Reading(finalized=100, kept=10, errors=4, durations=durations(le5=100), session=(5, 10)),
        Reading(
            finalized=200,
            kept=15,
            errors=14,
            durations=durations(le5=180, le750=20),
            queue_depth=7,
            session=(35, 50),
            semantic=(0, 0),
        ),
    )
    recorder = HistoryRecorder(counters, interval_s=10, clock=lambda: 1234.0)
    sample = recorder.sample()
    expected = Sample(
        at=1234.0,
        requests=100,
        kept=5,
        errors=10,
        p95_ms=750.0,  # 20 of the interval's 100 took (500, 750] ms
        queue_depth=7,
        session_hit_rate=0.75,  # 30 hits of 40 lookups in the interval
        semantic_hit_rate=None,  # no lookup: no rate, rather than 0%
    )
    assert expected == sample
    assert [expected] == recorder.history.samples()


def test_an_idle_interval_has_no_latency_and_no_hit_rates():
    recorder = HistoryRecorder(ScriptedCounters(Reading(), Reading()), interval_s=1)
    sample = recorder.sample()
    assert (0, None, None, None) == (
        sample.requests,
        sample.p95_ms,
        sample.session_hit_rate,
        sample.semantic_hit_rate,
    )


async def test_the_recorder_task_samples_every_interval_until_cancelled():
    recorder = HistoryRecorder(Reading, interval_s=0.01)
    task = asyncio.create_task(recorder.run())
    while len(recorder.history) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert 3 <= len(recorder.history)


async def test_a_failing_sample_is_logged_and_the_next_one_still_taken(caplog):
    readings = iter([Reading(), Reading(finalized=1)])

    def flaky() -> Reading:
        reading = next(readings, None)
        if reading is None:
            raise RuntimeError("counters unreadable")
        return reading

    recorder = HistoryRecorder(flaky, interval_s=0.01)
    task = asyncio.create_task(recorder.run())
    with caplog.at_level(logging.ERROR, logger="widelog.admin"):
        while "sample failed" not in caplog.text:
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert [1] == [s.requests for s in recorder.history.samples()]
