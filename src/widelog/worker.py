"""The worker process's composition root: `widelog worker`, and `widelog replay`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from widelog._extras import MissingExtraError, extra
from widelog.admin.probe_server import ProbeServer, outcome
from widelog.bootstrap import (
    build_consumer,
    build_incident_store,
    build_mq_publisher,
    build_sender,
    build_source,
    build_spool_fallback,
    build_store,
    journal_dir,
    logged,
)
from widelog.incidents.aggregator import IncidentAggregator, run_sweeper
from widelog.incidents.request_totals import StoredRequestTotals
from widelog.pipeline.consumer import ConsumerStats
from widelog.pipeline.replayer import SpoolReplayer
from widelog.pipeline.retention import run_retention
from widelog.policies import load_incident_rules

if TYPE_CHECKING:
    from widelog.config import Settings
    from widelog.incidents.notify.sender import OutboxSender
    from widelog.pipeline.ports import EventSource, EventStore

log = logging.getLogger("widelog.worker")
PROBE_TIMEOUT_S = 2.0
BACKLOG_EVERY_S = 10.0


async def run_worker(
    settings: Settings, *, stop: asyncio.Event | None = None, signals: bool = True
) -> ConsumerStats:
    """Consume until SIGTERM/SIGINT (or `stop`): finish the batch in hand, commit, close.

    `signals=False` leaves the signals to the host (the demo runs a worker beside its API).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT) if signals else ()
    for signum in handled:
        loop.add_signal_handler(signum, stop.set)
    store = build_store(settings)
    try:
        source = await _connect(settings, stop)
        if source is None:
            return ConsumerStats()
        incidents = build_incident_store(settings)
        sender = build_sender(settings, incidents)
        aggregator = IncidentAggregator(
            incidents,
            load_incident_rules(),
            on_recorded=sender.on_recorded if sender is not None else None,
            totals=StoredRequestTotals(store),
        )
        consumer = build_consumer(settings, source, store, aggregator=aggregator, counts=store)
        retention = asyncio.create_task(run_retention(store, stop))
        # Every worker sweeps: each resolution is recorded once, whoever finds it first.
        sweeper = asyncio.create_task(run_sweeper(aggregator, stop))
        # Every worker delivers notifications too, in a task of its own (never the consumer's).
        notifying = asyncio.create_task(sender.run(stop)) if sender is not None else None
        probes = await _start_probes(settings, consumer.stats, source, store, stop, sender=sender)
        log.info("worker consuming %s into %s", settings.transport, settings.store)
        try:
            await consumer.run(stop)
        finally:
            stop.set()
            await retention
            await sweeper
            await logged(aggregator.flush())  # the facts of the last batches
            if notifying is not None and sender is not None:
                await notifying
                await sender.close()
            if probes is not None:
                server, refresher = probes
                await refresher  # ends with `stop`
                await server.close()
            await source.close()
            await incidents.close()
    finally:
        await store.close()
        for signum in handled:
            loop.remove_signal_handler(signum)
    log.info("worker stopped: %s", consumer.stats)
    return consumer.stats


async def _start_probes(
    settings: Settings,
    stats: ConsumerStats,
    source: EventSource,
    store: EventStore,
    stop: asyncio.Event,
    *,
    sender: OutboxSender | None = None,
) -> tuple[ProbeServer, asyncio.Task[None]] | None:
    """`WIDELOG_WORKER_HTTP_PORT`: metrics and probes; ready while store and broker answer."""
    if settings.worker_http_port is None:
        return None
    with extra("server", needed_by="WIDELOG_WORKER_HTTP_PORT (metrics)"):
        from prometheus_client import generate_latest  # noqa: PLC0415

        from widelog.admin.metrics import WorkerCollector, registry_for  # noqa: PLC0415
    collector = WorkerCollector(stats, notifications=sender.stats if sender else None)
    registry = registry_for(collector)

    async def ready() -> dict[str, str]:
        async def read_backlog() -> None:
            collector.backlog = await source.backlog()  # the metric stays fresh too

        checks = {
            "store": await outcome(store.ping(), timeout=PROBE_TIMEOUT_S),
            "source": await outcome(read_backlog(), timeout=PROBE_TIMEOUT_S),
        }
        if stop.is_set():
            checks["worker"] = "stopping"
        return checks

    async def refresh_backlog() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # the broker away: the last value stays
                collector.backlog = await asyncio.wait_for(source.backlog(), PROBE_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BACKLOG_EVERY_S)

    server = ProbeServer(
        metrics=lambda: generate_latest(registry),
        ready=ready,
        host=settings.worker_http_host,
        port=settings.worker_http_port,
    )
    await server.start()
    return server, asyncio.create_task(refresh_backlog())


async def _connect(settings: Settings, stop: asyncio.Event) -> EventSource | None:
    """The source, once the broker answers (creating the topic); None if stopped first."""
    delay = 1.0
    while not stop.is_set():
        try:
            return await asyncio.to_thread(build_source, settings)
        except MissingExtraError:
            raise  # no retry installs a package
        except Exception as exc:  # noqa: BLE001 - a broker still starting is not a reason to exit
            log.warning("message queue not reachable yet, retrying in %.0fs: %r", delay, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
    return None


async def replay(settings: Settings, *, rejected: bool = False) -> int:
    """Publish every spooled event to the message queue now; return how many were confirmed.

    With `rejected`, the records the broker refused for good (once its configuration is fixed).
    """
    fallback = build_spool_fallback(settings, journaled=False)  # it replays, never publishes
    publisher = build_mq_publisher(settings, fallback)
    try:
        if not rejected:  # what a SIGKILLed API still held is replayed too
            await asyncio.to_thread(fallback.take_over_journals, journal_dir(settings))
        return await SpoolReplayer(fallback.spool, publisher).replay_once(rejected=rejected)
    finally:
        await publisher.close()
        fallback.close()
