"""Prometheus metrics, read from the counters the pipeline keeps anyway, at scrape time.

A custom collector rather than `Counter.inc()` on the request path: `finalize()` already counts
everything in plain integers, so exposing them costs nothing per request and the numbers in
`/metrics`, `/v1/infra` and the demo report are the same numbers. Label sets are bounded: reasons,
cache names and outcomes, circuit states, rule ids and partitions are all small fixed sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from widelog.sampling.policy import REASONS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from widelog.bootstrap import Pipeline
    from widelog.cache.fail_open import ChatCaches
    from widelog.histogram import Histogram
    from widelog.incidents.notify.sender import SenderStats
    from widelog.pipeline.consumer import ConsumerStats
    from widelog.pipeline.fallback import SpoolFallback

CIRCUIT_STATES = ("closed", "open", "half_open")


class PipelineCollector:
    """Everything one process's pipeline (and, where it has them, its caches) counted."""

    def __init__(self, pipeline: Pipeline, *, caches: ChatCaches | None = None) -> None:
        self._pipeline = pipeline
        self._caches = caches
        self.open_incidents: dict[str, int] = {}  # by rule; refreshed by the scrape handler
        self.backlog: dict[str, int] = {}  # the consumer group's lag; refreshed likewise

    def describe(self) -> list[Metric]:
        return []  # families depend on the adapters in use: no fixed description

    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._transport()
        yield from self._consumer()
        yield from self._cache()
        incidents = GaugeMetricFamily(
            "widelog_incidents_open", "Open incidents, by rule.", labels=["rule"]
        )
        for rule, count in sorted(self.open_incidents.items()):
            incidents.add_metric([rule], count)
        yield incidents
        yield backlog_metric(self.backlog)
        if self._pipeline.sender is not None:
            yield from notification_metrics(self._pipeline.sender.stats)

    def _events(self) -> Iterator[Metric]:
        stats = self._pipeline.logging.stats
        yield _counter(
            "events_finalized", "Events finalized (one per request or unit).", stats.finalized
        )
        yield histogram(
            "request_duration_seconds",
            "duration_ms of every finalized event, before sampling.",
            self._pipeline.logging.durations,
            per_unit=1000,
        )
        yield _counter("events_errors", "Finalized events that record an error.", stats.errors)
        yield _counter(
            "events_sampled_out", "Events the sampling policy dropped.", stats.sampled_out
        )
        yield _counter("events_published", "Events handed to the transport.", stats.published)
        yield _counter("publish_failures", "Events the transport refused.", stats.publish_failed)
        yield _counter("finalize_failures", "Events that failed to encode.", stats.finalize_failed)
        sampler = self._pipeline.logging.sampler
        if sampler is None:
            return
        counters = sampler.counters
        kept = CounterMetricFamily(
            "widelog_events_kept", "Events the sampling policy kept, by reason.", labels=["reason"]
        )
        ratio = GaugeMetricFamily(
            "widelog_sampling_retention_ratio",
            "Kept / decided events, overall (reason=all) and by the reason that kept them.",
            labels=["reason"],
        )
        seen = counters.seen
        for reason in REASONS:
            kept.add_metric([reason], counters.kept_by_reason[reason])
            ratio.add_metric([reason], counters.kept_by_reason[reason] / seen if seen else 0.0)
        ratio.add_metric(["all"], counters.kept / seen if seen else 0.0)
        yield kept
        yield ratio

    def _transport(self) -> Iterator[Metric]:
        pipeline = self._pipeline
        depth = pipeline.queue_depth
        yield _gauge("queue_depth_events", "Events waiting in this process to leave it.", depth)
        fallback = pipeline.fallback
        if fallback is not None:
            spooling = 1 if getattr(pipeline.publisher, "broker_down", False) else 0
            yield _gauge("transport_spooling", "1 while every event goes to the spool.", spooling)
            yield _counter("events_spooled", "Events written to the spool.", fallback.spooled)
            yield _counter("spool_lost", "Events neither published nor spooled.", fallback.lost)
            dropped = CounterMetricFamily(
                "widelog_spool_dropped",
                "Events the full spool refused (WIDELOG_SPOOL_MAX_BYTES), by kind: error or other.",
                labels=["kind"],
            )
            for kind, count in sorted(fallback.dropped.items()):
                dropped.add_metric([kind], count)
            yield dropped
            yield from _journal(fallback)
            replaced = getattr(pipeline.publisher, "recreated", None)  # Kafka's producer
            if isinstance(replaced, int):
                yield _counter(
                    "kafka_producers_replaced", "Producers replaced after a fatal error.", replaced
                )
            segments, size = pipeline.spool_usage()
            yield _gauge("spool_segments", "Spool files waiting for replay.", segments)
            yield _gauge("spool_bytes", "Bytes in the spool.", size)
        if pipeline.replayer is not None:
            replayed = pipeline.replayer.stats
            yield _counter(
                "events_replayed", "Spooled events the broker confirmed.", replayed.events
            )
            yield _counter(
                "replay_failures", "Replays that left a segment in the spool.", replayed.failures
            )
            yield _counter(
                "events_rejected",
                "Spooled events the broker refused for good, kept in *.rejected files.",
                replayed.rejected,
            )

    def _consumer(self) -> Iterator[Metric]:
        consumer = self._pipeline.consumer
        if consumer is None:
            return
        yield from consumer_metrics(consumer.stats)

    def _cache(self) -> Iterator[Metric]:
        if self._caches is None:
            return
        lookups = CounterMetricFamily(
            "widelog_cache_lookups",
            "Cache lookups by cache and result.",
            labels=["cache", "result"],
        )
        for name, cache in (("session", self._caches.sessions), ("semantic", self._caches.answers)):
            for result, count in sorted(cache.counters.lookups.items()):
                lookups.add_metric([name, result], count)
        yield lookups
        latency = HistogramMetricFamily(
            "widelog_cache_lookup_duration_seconds",
            "Cache lookups, every outcome, by cache.",
            labels=["cache"],
        )
        for name, cache in (("session", self._caches.sessions), ("semantic", self._caches.answers)):
            buckets, total = _buckets(cache.counters.lookup_ms, per_unit=1000)
            latency.add_metric([name], buckets, total)
        yield latency
        breaker = self._caches.breaker
        if breaker is not None:
            state = GaugeMetricFamily(
                "widelog_cache_circuit_state",
                "1 for the circuit breaker's current state.",
                labels=["state"],
            )
            for name in CIRCUIT_STATES:
                state.add_metric([name], 1 if breaker.state == name else 0)
            yield state
            yield _counter(
                "cache_circuit_opened", "Times the cache breaker opened.", breaker.opened
            )


def consumer_metrics(stats: ConsumerStats) -> Iterator[Metric]:
    """The consumer's counters: the same in the embedded pipeline and in `widelog worker`."""
    yield _counter("batches", "Batches written to the store.", stats.batches)
    yield _counter("events_stored", "Events stored for the first time.", stats.stored)
    yield _counter("events_duplicates", "Re-delivered events already stored.", stats.duplicates)
    yield _counter(
        "events_conflicts",
        "Events whose event_id was stored with other content; kept in the store's conflicts.",
        stats.conflicts,
    )
    yield _counter("events_dead_lettered", "Messages set aside with a reason.", stats.dead_lettered)
    yield _counter(
        "write_retries", "Batch writes that failed and were retried.", stats.write_failures
    )
    yield _gauge("last_batch_seconds", "Duration of the last batch.", stats.last_batch_ms / 1000)
    yield histogram("batch_size_events", "Messages per batch.", stats.batch_sizes)
    yield histogram(
        "batch_duration_seconds",
        "A batch from decode to commit: the store write, dead letters, incidents.",
        stats.write_ms,
        per_unit=1000,
    )


class WorkerCollector:
    """A worker's consumer counters, and its backlog as last read from the broker."""

    def __init__(self, stats: ConsumerStats, *, notifications: SenderStats | None = None) -> None:
        self._stats = stats
        self._notifications = notifications
        self.backlog: dict[str, int] = {}  # refreshed by the worker, never read on a scrape

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from consumer_metrics(self._stats)
        yield backlog_metric(self.backlog)
        if self._notifications is not None:
            yield from notification_metrics(self._notifications)


def notification_metrics(stats: SenderStats) -> Iterator[Metric]:
    """The incident notifications this process sent; pending: the whole outbox's."""
    yield _counter("notifications_sent", "Incident messages the webhook took (2xx).", stats.sent)
    yield _counter(
        "notifications_failed", "Delivery attempts that failed and are retried.", stats.failed
    )
    yield _counter(
        "notifications_rejected", "Messages the receiver refused for good (4xx).", stats.rejected
    )
    yield _gauge(
        "notifications_pending",
        "Messages not delivered yet (every worker's), as of this process's last pass.",
        stats.pending,
    )
    yield _gauge(
        "notifications_expired", "Messages given up: older than the maximum age.", stats.expired
    )


def backlog_metric(backlog: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "widelog_consumer_lag_messages",
        "Messages not yet committed: per Kafka partition, Redis pending and unread, or queued.",
        labels=["part"],
    )
    for part, count in sorted(backlog.items()):
        family.add_metric([part], count)
    return family


def registry_for(collector: PipelineCollector | WorkerCollector) -> CollectorRegistry:
    """A registry of its own (not the global one): tests and several pipelines never collide."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def histogram(
    name: str, documentation: str, values: Histogram, *, per_unit: float = 1.0
) -> HistogramMetricFamily:
    """A Prometheus histogram of `values`; `per_unit=1000` turns ms into Prometheus' seconds."""
    buckets, total = _buckets(values, per_unit=per_unit)
    return HistogramMetricFamily(f"widelog_{name}", documentation, buckets=buckets, sum_value=total)


def _buckets(values: Histogram, *, per_unit: float) -> tuple[list[tuple[str, float]], float]:
    """Cumulative `(le, count)` pairs ending with `+Inf`, and the sum, in the metric's unit."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(values.bounds, values.counts, strict=False):
        cumulative += count
        buckets.append((repr(bound / per_unit), cumulative))
    buckets.append(("+Inf", cumulative + values.counts[-1]))
    return buckets, values.sum / per_unit


def _journal(fallback: SpoolFallback) -> Iterator[Metric]:
    """The in-flight journal's counters (issue #10): what a SIGKILL of this process may lose."""
    recovered = fallback.recovered
    yield _counter(
        "journal_recovered",
        "Events taken over from dead processes' in-flight journals and spooled.",
        recovered.records,
    )
    yield _counter(
        "journal_corrupt", "Corrupt records skipped while taking journals over.", recovered.corrupt
    )
    journal = fallback.journal
    if journal is None:
        return
    yield _counter("journal_events", "Events held in the in-flight journal.", journal.journaled)
    yield _counter(
        "journal_full",
        "Events not journaled: the ring was full (WIDELOG_JOURNAL_MAX_BYTES).",
        journal.full,
    )
    yield _gauge("journal_held", "Events journaled, not yet acknowledged or spooled.", journal.held)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"widelog_{name}", documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"widelog_{name}", documentation, value=value)
