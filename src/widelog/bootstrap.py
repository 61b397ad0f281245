"""The composition root: the one place that turns settings into wired adapters.

`build_pipeline` wires what an instrumented process needs (publisher, sampler, and with the
embedded transport the consumer and incidents too); `widelog.worker` wires a consumer process from
the same builders; the admin commands open only the stores. Optional drivers are imported only by
the builder that needs them, inside `extra(...)`, so `pip install widelog` without extras runs the
embedded default and choosing a driver that is missing fails here with its `pip install` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from widelog._extras import extra
from widelog.cache.circuit_breaker import CircuitBreaker
from widelog.cache.fail_open import ChatCaches, FailOpenSemanticCache, FailOpenSessionCache
from widelog.cache.memory import InMemorySemanticCache, InMemorySessionCache
from widelog.events.logging_service import LoggingService
from widelog.events.redaction import RedactionPolicy, Redactor
from widelog.incidents.aggregator import IncidentAggregator, run_sweeper
from widelog.incidents.notify.sender import OutboxSender
from widelog.incidents.notify.sqlite_outbox import SQLiteNotificationOutbox
from widelog.incidents.request_totals import RequestTotals, StoredRequestTotals
from widelog.incidents.rules import IncidentRules
from widelog.incidents.sqlite_store import SQLiteIncidentStore
from widelog.pipeline.consumer import BatchConsumer
from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.journal import JOURNALS, InflightJournal
from widelog.pipeline.memory import (
    InProcessEventPublisher,
    InProcessEventSource,
    InProcessQueue,
)
from widelog.pipeline.replayer import SpoolReplayer
from widelog.pipeline.retention import run_retention
from widelog.pipeline.spool import FileSpool
from widelog.pipeline.sqlite_store import SQLiteEventStore
from widelog.pipeline.stdout import StdoutEventPublisher
from widelog.policies import load_incident_rules, load_redaction_policy, load_sampling_policy
from widelog.sampling.policy import SamplingPolicy, TailSampler

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine
    from pathlib import Path

    from redis.asyncio import Redis

    from widelog.config import Settings
    from widelog.incidents.notify.ports import NotificationOutbox
    from widelog.incidents.ports import IncidentStore
    from widelog.pipeline.kafka import KafkaEventPublisher
    from widelog.pipeline.ports import (
        CountingEventStore,
        EventPublisher,
        EventSource,
        EventStore,
        RequestCountStore,
    )
    from widelog.pipeline.redis_streams import RedisStreamsEventPublisher

    MQPublisher = KafkaEventPublisher | RedisStreamsEventPublisher

log = logging.getLogger("widelog")


@dataclass
class Pipeline:
    """Everything an instrumented process runs for widelog, started and stopped in order."""

    settings: Settings
    logging: LoggingService
    publisher: EventPublisher
    store: EventStore
    incidents: IncidentStore
    aggregator: IncidentAggregator | None = None  # beside the in-process consumer
    sender: OutboxSender | None = None  # incident notifications, beside the aggregator
    outbox: NotificationOutbox | None = None  # read by /v1/infra wherever a webhook is set
    totals: RequestTotals | None = None  # exact-or-estimated requests for incident rates
    queue: InProcessQueue | None = None  # the embedded transport, when it is the one in use
    consumer: BatchConsumer | None = None  # runs in this process (embedded transport)
    replayer: SpoolReplayer | None = None  # drains the spool (message-queue transports)
    fallback: SpoolFallback | None = None
    backlog_reader: BacklogReader | None = None  # built at the first `backlog()`
    started: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: bool = False

    async def start(self) -> None:
        """Start the background tasks on the running loop; a second call does nothing."""
        if self.started:
            return
        self.started = True
        self.logging.pipeline_started = True
        if self.consumer is not None:
            await self.store.ping()
            self._spawn(self.consumer.run(self._stop))
            self._spawn(run_retention(self.store, self._stop))
        if self.aggregator is not None:
            self._spawn(run_sweeper(self.aggregator, self._stop))
        if self.sender is not None:
            self._spawn(self.sender.run(self._stop))
        if self.fallback is not None:  # before the replayer: what a dead process held is replayed
            await asyncio.to_thread(self.fallback.take_over_journals, journal_dir(self.settings))
        if self.replayer is not None:
            self._spawn(self.replayer.run(self._stop, interval=self.settings.replay_interval_s))
        if self.logging.counter is not None:
            self._spawn(run_count_publisher(self.logging, self._stop))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(work))

    @property
    def queue_depth(self) -> int:
        """Events waiting in this process to leave it (in-process queue, producer buffer)."""
        if self.queue is not None:
            return self.queue.depth
        depth = getattr(self.publisher, "queue_depth", 0)
        return depth if isinstance(depth, int) else 0

    def spool_usage(self) -> tuple[int, int]:
        """Segments waiting for replay, and their bytes; (0, 0) without a spool."""
        if self.fallback is None:
            return 0, 0
        sizes = []
        for path in self.fallback.spool.segments():
            with contextlib.suppress(OSError):  # replayed and deleted since it was listed
                sizes.append(path.stat().st_size)
        return len(sizes), sum(sizes)

    async def backlog(self) -> dict[str, int]:
        """What the consumers have not committed yet, by part; {} where nothing is consumed.

        Asks the broker (bounded), so it raises while the broker does not answer.
        """
        if self.backlog_reader is None:
            self.backlog_reader = build_backlog_reader(self.settings)
        return await self.backlog_reader.backlog() if self.backlog_reader else {}

    async def drained(self) -> None:
        """Every event published so far is stored (embedded transport only)."""
        if self.queue is None:
            raise RuntimeError("only the in-process transport can tell when it has drained")
        await self.queue.drained()

    async def aclose(self) -> None:
        """Hand what is in flight on (queue → store, MQ → broker or spool), then close clients.

        The replayer stops before the publisher closes (it publishes through it), the publisher
        closes before the spool (a purge at close spools), and one failing step never keeps the
        others from running. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        # The last counts first: while the consumer still drains and the publisher still sends.
        if self.started:
            self.logging.publish_counts(final=True)
        self._stop.set()
        for task in self._tasks:
            await logged(task)
        if self.aggregator is not None:
            await logged(self.aggregator.flush())  # the facts of the last batches
        await logged(self.publisher.close())
        if self.fallback is not None:
            self.fallback.close()
        closers = [self.store.close, self.incidents.close]
        if self.sender is not None:
            closers.append(self.sender.close)  # closes the outbox too
        elif self.outbox is not None:
            closers.append(self.outbox.close)
        if self.backlog_reader is not None:
            closers.append(self.backlog_reader.close)
        for closer in closers:
            await logged(closer())


async def logged(step: Awaitable[object]) -> None:
    """Run one shutdown step; its failure is logged so the steps after it still run."""
    try:
        await step
    except Exception:
        log.exception("shutdown step failed")


async def run_count_publisher(
    service: LoggingService, stop: asyncio.Event, *, interval: float = 5.0
) -> None:
    """Publish the service's due count records every `interval` s until `stop`."""
    while not stop.is_set():
        try:
            service.publish_counts()
        except Exception:
            log.exception("publishing request counts failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def build_store(settings: Settings) -> CountingEventStore:
    if settings.store == "mongo":
        with extra("mongo", needed_by="WIDELOG_STORE=mongo"):
            from widelog.pipeline.mongo_store import MongoEventStore  # noqa: PLC0415 - optional

        return MongoEventStore(
            settings.mongo_url,
            timeout_ms=settings.mongo_timeout_ms,
            retention_days=settings.retention_days,
        )
    return SQLiteEventStore(settings.sqlite_path, retention_days=settings.retention_days)


def build_spool_fallback(settings: Settings, *, journaled: bool = True) -> SpoolFallback:
    """The spool, and the in-flight journal of a process that publishes (`journaled`)."""
    spool = FileSpool(
        settings.spool_dir,
        fsync=settings.spool_fsync,
        fsync_interval_s=settings.spool_fsync_interval_s,
    )
    journal = None
    if journaled and settings.journal_max_bytes:
        journal = InflightJournal(journal_dir(settings), capacity=settings.journal_max_bytes)
    return SpoolFallback(spool, max_bytes=settings.spool_max_bytes, journal=journal)


def journal_dir(settings: Settings) -> Path:
    return settings.spool_dir / JOURNALS


def build_mq_publisher(settings: Settings, fallback: SpoolFallback) -> MQPublisher:
    if settings.transport == "kafka":
        with extra("kafka", needed_by="WIDELOG_TRANSPORT=kafka"):
            from widelog.pipeline.kafka import KafkaEventPublisher  # noqa: PLC0415 - optional

        return KafkaEventPublisher(
            bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic,
            fallback=fallback,
            acks=settings.kafka_acks,
            idempotence=settings.kafka_idempotence,
            retries=settings.publish_retries,
            message_timeout_ms=settings.kafka_message_timeout_ms,
            linger_ms=settings.kafka_linger_ms,
            config=settings.kafka_client_config(),
        )
    if settings.transport == "redis":
        with extra("redis", needed_by="WIDELOG_TRANSPORT=redis"):
            from widelog.pipeline.redis_streams import (  # noqa: PLC0415 - optional
                RedisStreamsEventPublisher,
            )

        return RedisStreamsEventPublisher(
            _redis_client(settings),
            stream=settings.redis_stream,
            fallback=fallback,
            maxlen=settings.redis_stream_maxlen,
            linger_ms=settings.redis_linger_ms,
            retries=settings.publish_retries,
        )
    raise ValueError(f"no message queue for transport {settings.transport!r}")


def build_source(settings: Settings) -> EventSource:
    """The consumer side of a shared transport, for `widelog worker`."""
    name = f"{settings.instance}-{os.getpid()}"
    if settings.transport == "kafka":
        with extra("kafka", needed_by="WIDELOG_TRANSPORT=kafka"):
            from widelog.pipeline.kafka import KafkaEventSource, ensure_topic  # noqa: PLC0415

        ensure_topic(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            partitions=settings.kafka_partitions,
            config=settings.kafka_client_config(),
        )
        return KafkaEventSource(
            bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic,
            group=settings.kafka_group,
            client_id=name,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            config=settings.kafka_client_config(),
        )
    if settings.transport == "redis":
        with extra("redis", needed_by="WIDELOG_TRANSPORT=redis"):
            from widelog.pipeline.redis_streams import RedisStreamsEventSource  # noqa: PLC0415

        return RedisStreamsEventSource(
            _redis_client(settings),
            stream=settings.redis_stream,
            group=settings.redis_group,
            consumer=name,
            claim_idle_ms=settings.redis_claim_idle_ms,
        )
    raise ValueError(f"the {settings.transport} transport has no separate consumer")


def build_consumer(
    settings: Settings,
    source: EventSource,
    store: EventStore,
    *,
    aggregator: IncidentAggregator | None = None,
    counts: RequestCountStore | None = None,
) -> BatchConsumer:
    """The consumer; with an aggregator, every newly stored batch also feeds the incidents.

    `counts` stores the count records (`widelog.sampling.counts`) that come with the events.
    """
    return BatchConsumer(
        source,
        store,
        counts=counts,
        source_name=settings.transport,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval_s,
        write_attempts=settings.write_attempts,
        drain_on_stop=settings.transport == "memory",
        on_stored=aggregator.observe if aggregator is not None else None,
        on_counts=aggregator.observe_counts if aggregator is not None else None,
    )


class BacklogReader(Protocol):
    async def backlog(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


def build_backlog_reader(settings: Settings) -> BacklogReader | None:
    """The consumer group's lag as this process sees it (Kafka, Redis Streams); None otherwise."""
    if settings.transport == "kafka":
        with extra("kafka", needed_by="WIDELOG_TRANSPORT=kafka"):
            from widelog.pipeline.kafka import KafkaGroupBacklog  # noqa: PLC0415

        return KafkaGroupBacklog(
            bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic,
            group=settings.kafka_group,
        )
    if settings.transport == "redis":
        with extra("redis", needed_by="WIDELOG_TRANSPORT=redis"):
            from widelog.pipeline.redis_streams import RedisStreamsEventSource  # noqa: PLC0415

        # Reading XINFO only: this member never polls, so it never takes entries.
        return RedisStreamsEventSource(
            _redis_client(settings),
            stream=settings.redis_stream,
            group=settings.redis_group,
            consumer=f"{settings.instance}-lag-reader",
        )
    return None


def build_incident_store(settings: Settings) -> IncidentStore:
    """The incident store beside the events: same SQLite file, or same MongoDB database."""
    if settings.store == "mongo":
        with extra("mongo", needed_by="WIDELOG_STORE=mongo"):
            from widelog.incidents.mongo_store import MongoIncidentStore  # noqa: PLC0415

        return MongoIncidentStore(settings.mongo_url, timeout_ms=settings.mongo_timeout_ms)
    return SQLiteIncidentStore(settings.sqlite_path)


def build_outbox(settings: Settings) -> NotificationOutbox | None:
    """The notifications' outbox beside the incident store; None without a webhook."""
    if settings.incidents_webhook_url is None:
        return None
    if settings.store == "mongo":
        with extra("mongo", needed_by="WIDELOG_STORE=mongo"):
            from widelog.incidents.notify.mongo_outbox import (  # noqa: PLC0415
                MongoNotificationOutbox,
            )

        return MongoNotificationOutbox(settings.mongo_url, timeout_ms=settings.mongo_timeout_ms)
    return SQLiteNotificationOutbox(settings.sqlite_path)


def build_sender(settings: Settings, incidents: IncidentStore) -> OutboxSender | None:
    """The webhook notifier and its background sender; None without `..._WEBHOOK_URL`."""
    outbox = build_outbox(settings)
    if outbox is None or settings.incidents_webhook_url is None:
        return None
    with extra("server", needed_by="WIDELOG_INCIDENTS_WEBHOOK_URL (httpx)"):
        from widelog.incidents.notify.webhook import WebhookNotifier  # noqa: PLC0415

    notifier = WebhookNotifier(
        settings.incidents_webhook_url,
        secret=settings.incidents_webhook_secret,
        timeout_s=settings.incidents_webhook_timeout_s,
        payload_format=settings.incidents_webhook_format,
        service=settings.service_name,
        admin_url=settings.admin_base_url,
    )
    repeat = settings.incidents_repeat_interval
    return OutboxSender(
        outbox,
        notifier,
        incidents,
        worker=f"{settings.instance}-{os.getpid()}",
        repeat_interval_s=repeat,
        max_age_s=settings.incidents_notify_max_age,
        # Longer than two sends, so a claim never lapses while its owner is still sending.
        lease_s=max(30.0, 3 * settings.incidents_webhook_timeout_s),
        backoff_base_s=settings.incidents_webhook_backoff_s,
        backoff_cap_s=settings.incidents_webhook_backoff_max_s,
        poll_s=settings.incidents_notify_poll_s,
        reconcile_s=min(30.0, repeat / 4) if repeat else 30.0,
    )


def build_caches(settings: Settings) -> ChatCaches:
    """In-process caches, or Redis ones behind one breaker with an in-process session fallback."""
    memory_sessions = InMemorySessionCache(
        ttl_s=settings.session_ttl_s,
        max_turns=settings.session_max_turns,
        max_bytes=settings.session_max_bytes,
        max_sessions=settings.session_max_sessions,
    )
    if settings.cache == "memory":
        return ChatCaches(
            sessions=FailOpenSessionCache(memory_sessions),
            answers=FailOpenSemanticCache(
                InMemorySemanticCache(max_entries=settings.semantic_cache_max_entries)
            ),
            backend="memory",
        )
    with extra("redis", needed_by="WIDELOG_CACHE=redis"):
        from widelog.cache.redis_cache import (  # noqa: PLC0415 - only the redis cache needs it
            RedisSemanticCache,
            RedisSessionCache,
            cache_client,
        )

    timeout_s = settings.cache_timeout_ms / 1000
    client = cache_client(settings.redis_url, timeout_s=timeout_s)
    # One breaker for both caches: they share the Redis, so they are up or down together.
    breaker = CircuitBreaker(
        name="redis",
        failure_threshold=settings.cache_breaker_failures,
        reset_timeout_s=settings.cache_breaker_reset_s,
    )
    sessions = RedisSessionCache(
        client,
        namespace=settings.cache_namespace,
        ttl_s=settings.session_ttl_s,
        max_turns=settings.session_max_turns,
        max_bytes=settings.session_max_bytes,
    )
    return ChatCaches(
        sessions=FailOpenSessionCache(
            sessions, fallback=memory_sessions, breaker=breaker, timeout_s=timeout_s
        ),
        answers=FailOpenSemanticCache(
            RedisSemanticCache(client, namespace=settings.cache_namespace),
            breaker=breaker,
            timeout_s=timeout_s,
        ),
        backend="redis",
        breaker=breaker,
        closers=[client.aclose],
    )


def _redis_client(settings: Settings) -> Redis:
    from redis.asyncio import Redis  # noqa: PLC0415 - reached only once `extra("redis")` imported it

    # Short timeouts: a slow Redis must never hold a request or a consumer for long.
    return Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def build_pipeline(
    settings: Settings,
    *,
    sampling: SamplingPolicy | None = None,
    incident_rules: IncidentRules | None = None,
    publisher: EventPublisher | None = None,
    redaction: RedactionPolicy | None = None,
) -> Pipeline:
    """Wire one instrumented process; policies come from the environment unless given.

    With the embedded transport the consumer, and so the incident aggregator, run in this
    process; otherwise `widelog worker` runs them and this process only reads incidents.
    A `publisher` replaces the configured transport (tests, or a transport of your own).
    """
    policy = sampling or load_sampling_policy()
    secrets = redaction or load_redaction_policy()
    count_requests = publisher is None and settings.transport != "stdout"
    store = build_store(settings)
    incidents = build_incident_store(settings)
    totals = StoredRequestTotals(store)
    queue = consumer = replayer = fallback = aggregator = sender = None
    outbox: NotificationOutbox | None = None
    backlog_reader: BacklogReader | None = None
    if publisher is None and settings.transport == "memory":
        queue = InProcessQueue(max_events=settings.queue_max_events)
        publisher = InProcessEventPublisher(queue)
        sender = build_sender(settings, incidents)
        outbox = sender.outbox if sender is not None else None
        aggregator = IncidentAggregator(
            incidents,
            incident_rules or load_incident_rules(),
            on_recorded=sender.on_recorded if sender is not None else None,
            totals=totals,
        )
        source = InProcessEventSource(queue)
        backlog_reader = source
        consumer = build_consumer(settings, source, store, aggregator=aggregator, counts=store)
    elif publisher is None and settings.transport == "stdout":
        publisher = StdoutEventPublisher()  # prints each kept event; no consumer, nothing stored
    elif publisher is None:
        outbox = build_outbox(settings)  # the workers deliver; this process reports
        fallback = build_spool_fallback(settings)
        mq_publisher = build_mq_publisher(settings, fallback)
        replayer = SpoolReplayer(fallback.spool, mq_publisher, rate=settings.replay_rate)
        publisher = mq_publisher
    logging_service = LoggingService(
        publisher=publisher,
        service=settings.service_name,
        env=settings.env,
        version=settings.service_version,
        instance=settings.instance,
        max_event_bytes=settings.max_event_bytes,
        sampler=TailSampler(policy),
        redactor=Redactor(secrets) if secrets.enabled else None,
        # Count records only through the transports widelog consumes: stdout stores nothing,
        # and a publisher of your own may not know them (`LoggingService.publish_counts`).
        count_requests=count_requests,
    )
    if consumer is not None or replayer is not None:
        logging_service.pipeline_started = False  # warns if an event comes before start()
    return Pipeline(
        settings=settings,
        logging=logging_service,
        publisher=publisher,
        store=store,
        incidents=incidents,
        aggregator=aggregator,
        sender=sender,
        outbox=outbox,
        totals=totals,
        queue=queue,
        consumer=consumer,
        replayer=replayer,
        fallback=fallback,
        backlog_reader=backlog_reader,
    )
