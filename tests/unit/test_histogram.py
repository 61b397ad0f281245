"""Fixed-bucket request durations: counted in `finalize()`, read back as a percentile."""

from __future__ import annotations

from tests.fakes import RecordingPublisher
from widelog.events.logging_service import LoggingService
from widelog.histogram import BOUNDS_MS, Histogram, quantile


def test_a_duration_lands_in_the_first_bucket_whose_bound_is_not_below_it():
    histogram = Histogram()
    for duration in (0.2, 1.0, 1.5, 70_000, 45):
        histogram.observe(duration)
    expected = [0] * (len(BOUNDS_MS) + 1)
    expected[0] = 2  # 0.2 and 1.0: (.., 1]
    expected[1] = 1  # 1.5: (1, 2]
    expected[BOUNDS_MS.index(50.0)] = 1
    expected[-1] = 1  # above the last bound
    assert expected == histogram.counts


def test_a_duration_that_is_not_a_number_is_not_counted():
    histogram = Histogram()
    histogram.observe("slow")
    histogram.observe(None)
    assert 0 == sum(histogram.counts)


def test_no_counts_have_no_percentile():
    assert quantile([0] * (len(BOUNDS_MS) + 1), 0.95) is None


def test_the_percentile_is_the_upper_bound_of_its_bucket():
    histogram = Histogram()
    for _ in range(94):
        histogram.observe(8.0)  # (5, 10]
    for _ in range(6):
        histogram.observe(400.0)  # (300, 500]
    assert 10.0 == quantile(histogram.counts, 0.5)
    assert 500.0 == quantile(histogram.counts, 0.95)


def test_durations_beyond_the_last_bound_report_the_last_bound():
    histogram = Histogram()
    histogram.observe(120_000.0)
    assert BOUNDS_MS[-1] == quantile(histogram.counts, 0.95)


def test_finalize_counts_every_event_duration_even_the_sampled_out_ones():
    service = LoggingService(
        publisher=RecordingPublisher(), service="s", env="t", version="1", instance="i"
    )
    for duration in (3.0, 3.0, 900.0):
        event = service.begin()
        event.set("duration_ms", duration)
        service.finalize(event)
    assert 3 == sum(service.durations.counts)
    assert 1_000.0 == quantile(service.durations.counts, 0.95)
