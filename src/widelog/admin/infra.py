"""One snapshot of the pipeline's state for a person: `GET /v1/infra` and `widelog infra`.

The state is `spooling` while events go to the local spool instead of the message queue (or the
spool still holds events to replay), `degraded` while something events or requests need is
failing (the store of the embedded consumer, the cache circuit), and `healthy` otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

from widelog.admin.probe_server import outcome
from widelog.incidents.notify.sender import outbox_counts
from widelog.incidents.queries import open_by_rule
from widelog.pipeline.fallback import ERRORS_ONLY_FROM, SpoolFallback

if TYPE_CHECKING:
    from widelog.bootstrap import Pipeline
    from widelog.cache.fail_open import ChatCaches

State = Literal["healthy", "degraded", "spooling"]
CHECK_TIMEOUT_S = 2.0


async def infra_snapshot(pipeline: Pipeline, *, caches: ChatCaches | None = None) -> dict[str, Any]:
    """Everything `/v1/infra` shows; each dependency check is bounded by `CHECK_TIMEOUT_S`."""
    settings = pipeline.settings
    problems: list[str] = []
    report: dict[str, Any] = {
        "transport": settings.transport,
        "store": settings.store,
        "queue_depth": pipeline.queue_depth,
        "events": _events(pipeline),
    }
    spooling = False
    if pipeline.fallback is not None:
        segments, size = pipeline.spool_usage()
        broker_down = bool(getattr(pipeline.publisher, "broker_down", False))
        report["spool"] = {
            "segments": segments,
            "bytes": size,
            "spooled": pipeline.fallback.spooled,
            "lost": pipeline.fallback.lost,
            "max_bytes": pipeline.fallback.max_bytes,
            "dropped": dict(pipeline.fallback.dropped),
            "replayed": pipeline.replayer.stats.events if pipeline.replayer else 0,
            "rejected": pipeline.replayer.stats.rejected if pipeline.replayer else 0,
            "rejected_files": len(pipeline.fallback.spool.rejected()),
        }
        report["journal"] = _journal(pipeline.fallback)
        used = pipeline.fallback.spool.bytes_used()
        if used > pipeline.fallback.max_bytes * ERRORS_ONLY_FROM:
            share = used / pipeline.fallback.max_bytes
            problems.append(f"spool {share:.0%} full: only errors are spooled, others dropped")
        spooling = broker_down or bool(segments)
        if broker_down:
            problems.append(f"{settings.transport} unreachable: events go to the spool")
    if pipeline.consumer is not None:
        stats = pipeline.consumer.stats
        report["consumer"] = {
            "batches": stats.batches,
            "stored": stats.stored,
            "duplicates": stats.duplicates,
            "conflicts": stats.conflicts,
            "dead_lettered": stats.dead_lettered,
            "write_retries": stats.write_failures,
            "last_batch_ms": round(stats.last_batch_ms, 1),
        }
        store = await outcome(pipeline.store.ping(), timeout=CHECK_TIMEOUT_S)
        if store != "ok":
            problems.append(f"store {settings.store} unreachable: {store.removeprefix('error: ')}")
    try:
        backlog = await asyncio.wait_for(pipeline.backlog(), CHECK_TIMEOUT_S)
        report["lag"] = {"total": sum(backlog.values()), "by_part": backlog}
    except Exception as exc:  # noqa: BLE001 - reported as a problem, never raised
        report["lag"] = None
        problems.append(f"{settings.transport} did not say the consumer lag: {exc!r}"[:200])
    if caches is not None:
        report["cache"] = caches.report()
        if caches.breaker is not None and caches.breaker.state != "closed":
            problems.append(f"cache circuit {caches.breaker.state}")
    try:
        opened = await asyncio.wait_for(open_by_rule(pipeline.incidents), CHECK_TIMEOUT_S)
        report["open_incidents"] = opened
    except Exception as exc:  # noqa: BLE001 - the snapshot reports a failing store, never raises
        report["open_incidents"] = None
        problems.append(f"incident store unreachable: {exc!r}"[:200])
    if pipeline.outbox is not None:
        report["notifications"] = await _notifications(pipeline, problems)
    state: State = "spooling" if spooling else "degraded" if problems else "healthy"
    return {"state": state, "problems": problems, **report}


def _journal(fallback: SpoolFallback) -> dict[str, Any]:
    """The in-flight journal: `full` counts the events a SIGKILL could lose (ring full)."""
    journal = fallback.journal
    report: dict[str, Any] = {
        "recovered": fallback.recovered.records,
        "corrupt": fallback.recovered.corrupt,
    }
    if journal is not None:
        report |= {
            "max_bytes": journal.capacity,
            "held": journal.held,
            "journaled": journal.journaled,
            "full": journal.full,
        }
    return report


def _events(pipeline: Pipeline) -> dict[str, Any]:
    stats = pipeline.logging.stats
    events: dict[str, Any] = {
        "finalized": stats.finalized,
        "published": stats.published,
        "count_records": stats.count_records,
        "count_records_failed": stats.count_records_failed,
        "sampled_out": stats.sampled_out,
        "publish_failed": stats.publish_failed,
    }
    sampler = pipeline.logging.sampler
    if sampler is not None:
        counters = sampler.counters
        seen = counters.seen
        events["retention"] = round(counters.kept / seen, 4) if seen else None
        events["kept_by_reason"] = {k: v for k, v in counters.kept_by_reason.items() if v}
    return events


async def _notifications(pipeline: Pipeline, problems: list[str]) -> dict[str, Any]:
    """The outbox by state (every worker's), and what this process sent, if it sends."""
    settings = pipeline.settings
    report: dict[str, Any] = {"format": settings.incidents_webhook_format}
    if pipeline.sender is not None:
        report["target"] = pipeline.sender.notifier.target
        report["this_process"] = pipeline.sender.stats.as_dict()
    outbox = pipeline.outbox
    if outbox is None:
        return report
    max_age = dt.timedelta(seconds=settings.incidents_notify_max_age)
    try:
        counts = await asyncio.wait_for(outbox_counts(outbox, max_age=max_age), CHECK_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - reported as a problem, never raised
        report["outbox"] = None
        problems.append(f"notification outbox unreachable: {exc!r}"[:200])
        return report
    report["outbox"] = dict(counts)
    if counts["rejected"]:
        problems.append(f"{counts['rejected']} incident notifications rejected by the webhook")
    return report
