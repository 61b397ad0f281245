"""All admin routes behind one token check, for an app to include in one line."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from widelog.admin.auth import bearer_token_check
from widelog.admin.dashboard import dashboard_router
from widelog.admin.events import events_router
from widelog.admin.infra import infra_snapshot
from widelog.admin.metrics import PipelineCollector, registry_for
from widelog.incidents.http_api import incidents_router
from widelog.incidents.queries import open_by_rule

if TYPE_CHECKING:
    from widelog.bootstrap import Pipeline
    from widelog.cache.fail_open import ChatCaches

log = logging.getLogger("widelog.admin")


def admin_router(pipeline: Pipeline, *, caches: ChatCaches | None = None) -> APIRouter:
    """`/v1/events`, `/v1/incidents`, `/v1/infra`, `/metrics` and `/dashboard`, behind a token.

    `WIDELOG_ADMIN_TOKEN` as a bearer header; the dashboard also takes the cookie its login
    form sets (docs/dashboard.md).
    """
    guard = Depends(bearer_token_check(pipeline.settings.admin_token))
    router = APIRouter(dependencies=[guard])
    router.include_router(events_router(pipeline.store))
    router.include_router(incidents_router(pipeline.incidents, totals=pipeline.totals))
    collector = PipelineCollector(pipeline, caches=caches)
    registry = registry_for(collector)

    @router.get("/v1/infra")
    async def infra() -> dict[str, Any]:
        """The pipeline's state (healthy | degraded | spooling) and what it is made of."""
        return await infra_snapshot(pipeline, caches=caches)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus exposition; open incidents are read from the store (kept if it is down)."""
        try:
            collector.open_incidents = await asyncio.wait_for(
                open_by_rule(pipeline.incidents), timeout=2.0
            )
        except Exception as exc:  # noqa: BLE001 - a store outage must not take metrics down
            log.warning("open incidents not refreshed for /metrics: %r", exc)
        try:
            collector.backlog = await asyncio.wait_for(pipeline.backlog(), timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - nor a broker outage
            log.warning("consumer lag not refreshed for /metrics: %r", exc)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    outer = APIRouter()  # the dashboard checks the token itself: it answers 401 with a form
    outer.include_router(router)
    outer.include_router(dashboard_router(pipeline, caches=caches))
    return outer
