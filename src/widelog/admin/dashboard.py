"""`/dashboard`: incidents, event lookup and this instance's last hour, as plain HTML.

Server-rendered, one request per page, no script: it works wherever the admin API does, and a
`<meta refresh>` keeps it current. Every value that comes from an event, an incident or a URL
goes through `html.escape` (events hold user input). Charts are inline SVG (`admin/svg.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from functools import partial
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from widelog.admin.auth import DASHBOARD_COOKIE, DashboardAccess
from widelog.admin.history import HistoryRecorder, Sample, read_counters
from widelog.admin.svg import Series, line_chart
from widelog.incidents.queries import incident_summaries
from widelog.pipeline.ports import EventQuery

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    from widelog.bootstrap import Pipeline
    from widelog.cache.fail_open import ChatCaches
    from widelog.config import Settings

REFRESH_S = 10
INCIDENTS_SHOWN = 20
MAX_FORM_BYTES = 4096
COOKIE_MAX_AGE_S = 8 * 3600


def dashboard_router(pipeline: Pipeline, *, caches: ChatCaches | None = None) -> APIRouter:
    """The pages, and the history sampler they chart, which runs with the app's lifespan.

    The sampler is this router's own lifespan (FastAPI merges it into the app's when the router
    is included): it runs only where the dashboard is served, starts after the pipeline does
    and stops before it closes, with no change to `Pipeline`.
    """
    settings = pipeline.settings
    access = DashboardAccess(settings.admin_token)
    recorder = HistoryRecorder(
        partial(read_counters, pipeline, caches), interval_s=settings.dashboard_sample_s
    )

    @contextlib.asynccontextmanager
    async def sampling(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(recorder.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    router = APIRouter(prefix="/dashboard", include_in_schema=False, lifespan=sampling)

    @router.get("", name="dashboard")
    async def dashboard(request: Request) -> Response:
        base = request.url_for("dashboard").path
        if not access.allows(request):
            return _html(login_page(base, failed=False), status=401)
        try:
            incidents = await asyncio.wait_for(
                incident_summaries(
                    pipeline.incidents, limit=INCIDENTS_SHOWN, totals=pipeline.totals
                ),
                timeout=2.0,
            )
            problem = None
        except Exception as exc:  # noqa: BLE001 - the page says the store is down, and renders
            incidents, problem = [], f"incident store unreachable: {exc!r}"[:200]
        body = dashboard_page(
            base,
            settings=settings,
            incidents=incidents,
            problem=problem,
            samples=recorder.history.samples(),
            interval_s=recorder.interval_s,
        )
        return _html(body)

    @router.post("/login")
    async def login(request: Request) -> Response:
        base = request.url_for("dashboard").path
        if not access.open and not access.accepts(await _form_token(request)):
            return _html(login_page(base, failed=True), status=401)
        response = RedirectResponse(base, status_code=303)
        response.set_cookie(
            DASHBOARD_COOKIE,
            access.cookie or "",
            max_age=COOKIE_MAX_AGE_S,
            path=base,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    @router.get("/events")
    async def search(request: Request, request_id: str = "") -> Response:
        base = request.url_for("dashboard").path
        if not access.allows(request):
            return _html(login_page(base, failed=False), status=401)
        target = _event_href(base, request_id.strip()) if request_id.strip() else base
        return RedirectResponse(target, status_code=303)

    @router.get("/events/{request_id:path}")
    async def event_detail(request: Request, request_id: str) -> Response:
        base = request.url_for("dashboard").path
        if not access.allows(request):
            return _html(login_page(base, failed=False), status=401)
        found = await pipeline.store.find_events(EventQuery(request_id=request_id, limit=10))
        if not found:
            return _html(not_found_page(base, request_id, settings), status=404)
        return _html(event_page(base, request_id, [jsonable_encoder(e) for e in found]))

    return router


def _html(body: str, *, status: int = 200) -> HTMLResponse:
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(body, status_code=status, headers=headers)


async def _form_token(request: Request) -> str:
    """The `token` field of a small urlencoded form; anything larger is refused unread."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return ""
    return parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]


def _event_href(base: str, request_id: str) -> str:
    return f"{base}/events/{quote(request_id, safe='')}"


# --- pages ------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1000px;padding:0 16px 40px;
color:#1d2330;background:#fafbfc}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;justify-content:space-between;
border-bottom:1px solid #dde1e6;padding:12px 0}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:24px 0 8px}h3{font-size:14px;margin:0 0 4px}
a{color:#1f5fbf}.muted{color:#5d6675}.problem{color:#a3261b}
article{background:#fff;border:1px solid #dde1e6;border-left:4px solid #8a94a6;padding:8px 12px;
margin:8px 0}article.open{border-left-color:#c9362b}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fff;border:1px solid #dde1e6}svg text{font:11px system-ui,sans-serif;fill:#5d6675}
svg .title{font-weight:600;fill:#1d2330}svg .y,svg .end,svg .legend{text-anchor:end}
svg .empty{text-anchor:middle;font-size:13px}svg .frame{fill:none;stroke:#eceef1}
pre{background:#fff;border:1px solid #dde1e6;padding:12px;overflow:auto}
input{font:inherit;padding:4px 6px}
"""


def page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    """The layout every page shares; `body` is HTML already escaped by its builder."""
    refresh = "" if refresh_s is None else f'<meta http-equiv="refresh" content="{refresh_s}">'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        '<link rel="icon" href="data:,">'  # no /favicon.ico request, so no 404 in the console
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _header(base: str, subtitle: str) -> str:
    return (
        f'<header><h1><a href="{escape(base)}">widelog</a> · {escape(subtitle)}</h1>'
        f'<form method="get" action="{escape(base)}/events" role="search">'
        '<input name="request_id" placeholder="request id" aria-label="request id" size="28">'
        " <button>Find event</button></form></header>"
    )


def dashboard_page(
    base: str,
    *,
    settings: Settings,
    incidents: list[dict[str, Any]],
    problem: str | None,
    samples: list[Sample],
    interval_s: float,
) -> str:
    opened = [i for i in incidents if i.get("status") == "open"]
    resolved = [i for i in incidents if i.get("status") != "open"]
    sections = [
        _header(base, f"{settings.service_name} dashboard"),
        f'<p class="problem">{escape(problem)}</p>' if problem else "",
        f"<h2>Open incidents ({len(opened)})</h2>",
        "".join(_incident(base, i) for i in opened) or '<p class="muted">None open.</p>',
        "<h2>Recently resolved</h2>",
        "".join(_incident(base, i) for i in resolved) or '<p class="muted">None.</p>',
        f"<h2>This instance ({escape(settings.instance)}), last hour</h2>",
        f'<p class="muted">One sample every {interval_s:g} s, kept in this process only;'
        f" the page reloads every {REFRESH_S} s.</p>",
        f'<div class="charts">{charts(samples, interval_s)}</div>',
    ]
    return page("widelog dashboard", "".join(sections), refresh_s=REFRESH_S)


def _incident(base: str, summary: dict[str, Any]) -> str:
    rule = summary.get("rule") or {}
    group = ", ".join(f"{k} = {v}" for k, v in (summary.get("group") or {}).items())
    links = " ".join(
        f'<a class="request" href="{escape(_event_href(base, str(rid)))}">{escape(str(rid))}</a>'
        for rid in summary.get("sample_request_ids") or []
    )
    status = str(summary.get("status", ""))
    return (
        f'<article class="{escape(status)}"><h3>{escape(status.upper())} · '
        f"{escape(str(rule.get('id', '')))} · {escape(group)}</h3>"
        f"<p>{escape(str(summary.get('text', '')))}</p>"
        + (f'<p class="muted">Sample requests: {links}</p>' if links else "")
        + "</article>"
    )


def charts(samples: list[Sample], interval_s: float) -> str:
    """The five charts of the history; each says "no data yet" until it has a sample."""

    def points(value: Any) -> list[tuple[float, float]]:
        return [(s.at, v) for s in samples if (v := value(s)) is not None]

    requests = sum(s.requests for s in samples)
    retention = f" (kept {sum(s.kept for s in samples) / requests:.1%})" if requests else ""
    per = f"per {interval_s:g} s"
    return "".join(
        [
            line_chart(
                f"Requests vs kept events {per}{retention}",
                [
                    Series("requests", points(lambda s: s.requests), "#1f5fbf"),
                    Series("kept", points(lambda s: s.kept), "#2e9d5b"),
                ],
                x_label=_clock,
                area=True,
            ),
            line_chart(
                "Error rate",
                [
                    Series(
                        "errors",
                        points(lambda s: 100 * s.errors / s.requests if s.requests else None),
                        "#c9362b",
                    )
                ],
                unit="%",
                x_label=_clock,
                area=True,
            ),
            line_chart(
                "p95 latency (bucket upper bound)",
                [Series("p95", points(lambda s: s.p95_ms), "#8a4fbf")],
                unit=" ms",
                x_label=_clock,
            ),
            line_chart(
                "Queue depth (events waiting to leave)",
                [Series("queue", points(lambda s: s.queue_depth), "#c77c12")],
                x_label=_clock,
                area=True,
            ),
            line_chart(
                "Cache hit rate",
                [
                    Series("session", points(lambda s: _percent(s.session_hit_rate)), "#1f5fbf"),
                    Series("semantic", points(lambda s: _percent(s.semantic_hit_rate)), "#2e9d5b"),
                ],
                unit="%",
                y_max=100,
                x_label=_clock,
            ),
        ]
    )


def _percent(rate: float | None) -> float | None:
    return None if rate is None else 100 * rate


def _clock(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%H:%M:%S UTC")


def event_page(base: str, request_id: str, events: list[Any]) -> str:
    plural = "s" if len(events) != 1 else ""
    blocks = "".join(
        f"<pre>{escape(json.dumps(e, indent=2, ensure_ascii=False, default=str))}</pre>"
        for e in events
    )
    body = (
        _header(base, "event")
        + f"<h2>Request {escape(request_id)}</h2>"
        + f'<p class="muted">{len(events)} stored event{plural}'
        + (" (a retried request is stored once per attempt)" if plural else "")
        + f'. <a href="{escape(base)}">Back to the dashboard</a></p>'
        + blocks
    )
    return page(f"widelog event {request_id}", body)


def not_found_page(base: str, request_id: str, settings: Settings) -> str:
    body = (
        _header(base, "event") + f"<h2>No stored event for request {escape(request_id)}</h2><ul>"
        "<li><b>Sampled out</b>: only a share of ordinary successful requests is stored;"
        " errors and slow requests always are.</li>"
        f"<li><b>Not yet stored</b>: events reach the store in batches (every"
        f" {settings.flush_interval_s:g} s or {settings.batch_size} events); try again in a"
        " moment.</li>"
        + (
            f"<li><b>Expired</b>: events older than {settings.retention_days} days are"
            " deleted.</li>"
            if settings.retention_days
            else ""
        )
        + "</ul>"
        f'<p><a href="{escape(base)}">Back to the dashboard</a></p>'
    )
    return page("widelog: no such event", body)


def login_page(base: str, *, failed: bool) -> str:
    note = '<p class="problem">That is not the admin token.</p>' if failed else ""
    body = (
        "<header><h1>widelog dashboard</h1></header>"
        "<p>The dashboard needs the admin token (<code>WIDELOG_ADMIN_TOKEN</code>).</p>"
        + note
        + f'<form method="post" action="{escape(base)}/login">'
        '<input type="password" name="token" aria-label="admin token" autocomplete="off">'
        " <button>Open the dashboard</button></form>"
    )
    return page("widelog dashboard: sign in", body)
