"""All admin routes behind one token check, for an app to include in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends

from widelog.admin.auth import bearer_token_check
from widelog.admin.events import events_router
from widelog.incidents.http_api import incidents_router

if TYPE_CHECKING:
    from widelog.bootstrap import Pipeline


def admin_router(pipeline: Pipeline) -> APIRouter:
    """`/v1/events`, `/v1/incidents`; guarded by `WIDELOG_ADMIN_TOKEN` when it is set."""
    guard = Depends(bearer_token_check(pipeline.settings.admin_token))
    router = APIRouter(dependencies=[guard])
    router.include_router(events_router(pipeline.store))
    router.include_router(incidents_router(pipeline.incidents))
    return router
