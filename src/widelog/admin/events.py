"""`GET /v1/events/{request_id}` and `GET /v1/events?…`: look up any stored event."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.encoders import jsonable_encoder

from widelog.pipeline.ports import EventQuery

if TYPE_CHECKING:
    from widelog.pipeline.ports import EventStore

MAX_LIMIT = 500


def events_router(store: EventStore) -> APIRouter:
    """A router reading `store`; mount it with `app.include_router(events_router(store))`."""
    router = APIRouter(prefix="/v1/events", tags=["events"])

    @router.get("")
    async def search(
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        route: str | None = None,
        status: Annotated[int | None, Query(ge=100, le=599)] = None,
        error_code: str | None = None,
        session_id: str | None = None,
        model: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> dict[str, Any]:
        """Stored events matching every filter given, newest first (times: RFC 3339)."""
        query = EventQuery(
            since=_aware(since),
            until=_aware(until),
            route=route,
            status=status,
            error_code=error_code,
            session_id=session_id,
            model=model,
            limit=limit,
        )
        return {"events": jsonable_encoder(await store.find_events(query))}

    @router.get("/{request_id}")
    async def by_request(request_id: str) -> dict[str, Any]:
        """The request's stored event(s): normally one; a retried request can have more."""
        found = await store.find_events(EventQuery(request_id=request_id, limit=10))
        if not found:
            raise HTTPException(
                status_code=404,
                detail=f"no stored event for request id {request_id!r} (sampled out, not yet"
                " stored, or expired)",
            )
        return {"events": jsonable_encoder(found)}

    return router


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    """A time without an offset is UTC, as every stored timestamp is."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)
