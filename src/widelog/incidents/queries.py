"""Reading incidents back: one, a list, or their summaries (CLI, HTTP API, demo)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

from widelog.incidents.model import (
    MINUTE,
    DurationBucket,
    Incident,
    assemble,
    life_start,
    merge_durations,
    minute_of,
    ordered,
    percentile,
)
from widelog.incidents.request_totals import annotate, as_floats
from widelog.incidents.summary import summarize
from widelog.incidents.watermark import pruned_from

if TYPE_CHECKING:
    from widelog.incidents.model import Transition
    from widelog.incidents.ports import IncidentStore
    from widelog.incidents.request_totals import RequestTotals
    from widelog.sampling.totals import Total

StatusFilter = Literal["open", "resolved"] | None


async def _load(
    store: IncidentStore, steps: list[Transition], totals: RequestTotals | None = None
) -> Incident | None:
    start = life_start(steps)
    if start is None:
        return None
    incident_id = steps[0].incident_id
    parts = await store.contributions(incident_id, start)
    members = await store.member_counts(incident_id, start)
    scope: dict[dt.datetime, float] = {}
    exact: dict[dt.datetime, Total] | None = None
    end = None
    lasts = [p.last for p in parts if p.last is not None]
    if lasts:
        opening = [s for s in ordered(steps) if s.kind == "open"][-1]
        end = minute_of(max(lasts))
        window_s = int(opening.rule.get("window_s", 300))
        begin = end + MINUTE - dt.timedelta(seconds=window_s)
        scope = await scope_series(store, opening.scope_id, begin, end)
        if totals is not None:
            pairs = tuple((f, v) for f, v in opening.key if f in opening.rule.get("scope", []))
            exact = await totals.scope_totals(pairs, begin, end)
            scope = as_floats(exact)
    incident = assemble(
        steps,
        parts,
        users=members.get("user", 0),
        sessions=members.get("session", 0),
        scope=scope,
    )
    window = None if incident is None else incident.window
    current = window is not None and window.end_minute == end  # the window read just now
    if incident is not None and window is not None and exact is not None and current:
        incident.window = annotate(window, exact)
    for facet in [] if incident is None else incident.facets:
        if facet.window is not None:
            # The explained group's own facts (kept while recent, even if it never opened).
            durations: dict[int, DurationBucket] = {}
            for part in await store.contributions(facet.incident_id, facet.window.start):
                if part.minute <= facet.window.end_minute:
                    merge_durations(durations, part.durations)
            facet.p95 = percentile(durations, 95)
    return incident


async def scope_series(
    store: IncidentStore, scope_id: str, start: dt.datetime, end: dt.datetime
) -> dict[dt.datetime, float]:
    """The scope's re-weighted requests (counted on time) per minute in [start, end].

    Summed over every worker's count records (one `_id` range). Empty if some of those minutes
    were pruned: a part of a window would misstate its rate.
    """
    if pruned_from(await store.watermarks(), start):
        return {}
    found = await store.minute_counts(start, end)
    if pruned_from(await store.watermarks(), start):  # pruned while they were read
        return {}
    series: dict[dt.datetime, float] = {}
    for counts in found:
        if scope_id in counts.scopes:
            series[counts.minute] = series.get(counts.minute, 0.0) + counts.scopes[scope_id]
    return series


async def get_incident(
    store: IncidentStore, incident_id: str, *, totals: RequestTotals | None = None
) -> Incident | None:
    """The incident, or None if there is none with this id (or its group never opened).

    With `totals`, its window's requests are exact where count records allow, else estimated
    with an interval.
    """
    steps = (await store.transitions([incident_id])).get(incident_id)
    return await _load(store, steps, totals) if steps else None


async def list_incidents(
    store: IncidentStore,
    *,
    status: StatusFilter = None,
    limit: int = 100,
    totals: RequestTotals | None = None,
) -> list[Incident]:
    """Open incidents first, then resolved ones; most recent activity first within each.

    Status and recency come from the lifecycle steps (small), so only the incidents listed are
    assembled from their facts.
    """
    # (latest lifecycle step, every record with the facets) of each incident
    latest = [(ordered(steps)[-1], steps) for steps in (await store.transitions()).values()]
    chosen = [
        (last, steps)
        for last, steps in latest
        if status is None or (last.kind == "open") == (status == "open")
    ]
    chosen.sort(key=lambda c: (c[0].kind != "open", -c[0].at.timestamp(), c[0].incident_id))
    incidents = [
        i for _, steps in chosen[:limit] if (i := await _load(store, steps, totals)) is not None
    ]
    incidents.sort(key=lambda i: (i.status != "open", -i.last_seen.timestamp(), i.id))
    return incidents


async def incident_summaries(
    store: IncidentStore,
    *,
    status: StatusFilter = None,
    limit: int = 100,
    totals: RequestTotals | None = None,
) -> list[dict[str, Any]]:
    """`summarize()` of each listed incident: what `widelog demo --json` reports as `incidents`."""
    listed = await list_incidents(store, status=status, limit=limit, totals=totals)
    return [summarize(i) for i in listed]


async def open_by_rule(store: IncidentStore) -> dict[str, int]:
    """How many incidents are open, by rule id, from the lifecycle steps alone (a metric)."""
    counts: dict[str, int] = {}
    for steps in (await store.transitions()).values():
        last = ordered(steps)[-1]
        if last.kind == "open":
            rule = str(last.rule.get("id", "unknown"))
            counts[rule] = counts.get(rule, 0) + 1
    return counts
