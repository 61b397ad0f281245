"""`GET /v1/incidents` and `GET /v1/incidents/{id}`: the incident summaries over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from widelog.incidents.queries import get_incident, incident_summaries
from widelog.incidents.summary import summarize

if TYPE_CHECKING:
    from widelog.incidents.ports import IncidentStore
    from widelog.incidents.request_totals import RequestTotals


def incidents_router(store: IncidentStore, *, totals: RequestTotals | None = None) -> APIRouter:
    """A router reading `store`; mount it with `app.include_router(incidents_router(store))`."""
    router = APIRouter(prefix="/v1/incidents", tags=["incidents"])

    @router.get("")
    async def list_incidents(
        status: Literal["open", "resolved"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Open incidents first, then resolved ones; each a summary with a readable `text`."""
        return {
            "incidents": await incident_summaries(store, status=status, limit=limit, totals=totals)
        }

    @router.get("/{incident_id}")
    async def show_incident(incident_id: str) -> dict[str, Any]:
        incident = await get_incident(store, incident_id, totals=totals)
        if incident is None:
            raise HTTPException(status_code=404, detail=f"no incident {incident_id}")
        return summarize(incident)

    return router
