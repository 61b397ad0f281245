"""What an operator reads about an incident: a structured summary and one plain paragraph.

The paragraph names no code: what failed, where, since when, how many, how bad (share of the
estimated requests), how slow, who was affected, which models and prompt versions, the message,
request ids to look up, and the other rules' signals the incident explains (its facets).
Snapshot tests pin its wording (`tests/unit/test_incidents.py`).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from widelog.incidents.model import percentile

if TYPE_CHECKING:
    from widelog.incidents.model import Facet, Incident, MessageStat, Percentile, WindowStats

TOP_N = 3


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _ms(value: Percentile) -> str:
    """`30,000 ms` when a stored duration holds the rank; `about 2,533 ms` when its bucket does."""
    figure = f"{value.ms:,.0f} ms" if value.ms >= 10 else f"{value.ms:.1f} ms"
    return figure if value.exact else f"about {figure}"


def _durations(*percentiles: tuple[str, Percentile | None]) -> dict[str, Any]:
    """`{"p50": 3440.0, "p95": 3880.0, "exact": true}`: exact when every figure is."""
    figures = {name: None if p is None else round(p.ms, 3) for name, p in percentiles}
    return {**figures, "exact": all(p is not None and p.exact for _, p in percentiles)}


def _rate(rate: float) -> str:
    return f"{rate:.1%}" if rate >= 0.1 else f"{rate:.2%}"


def _requests(window: WindowStats) -> str:
    """`2,000` when counted exactly; `about 2,433` when estimated (re-weighted)."""
    total = window.requests_total
    exact = total is not None and not total.estimated
    return f"{window.requests:,.0f}" if exact else f"about {window.requests:,.0f}"


def _uncertainty(window: WindowStats) -> str:
    """What an estimated denominator could be: its 95% interval and the rate's (exact: "")."""
    total = window.requests_total
    if total is None or not total.estimated:
        return ""
    low, high = total.interval()
    rate_low = window.matched / high if high else 0.0
    rate_high = window.matched / low if low else 1.0
    return (
        f", estimated from sampled events: 95% interval {low:,.0f}-{high:,.0f} requests,"
        f" {_rate(rate_low)}-{_rate(min(rate_high, 1.0))}"
    )


def _top(values: dict[str, int]) -> list[dict[str, Any]]:
    ranked = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    return [{"value": value, "count": count} for value, count in ranked[:TOP_N]]


def _main_message(incident: Incident) -> MessageStat | None:
    messages = incident.facts.messages.values()
    return min(messages, key=lambda m: (-m.count, m.text), default=None)


def summarize(incident: Incident) -> dict[str, Any]:
    """The incident as one JSON-ready object; `text` is the readable paragraph."""
    facts = incident.facts
    latest = incident.episodes[-1]
    message = _main_message(incident)
    window = incident.window
    p50, p95 = percentile(facts.durations, 50), percentile(facts.durations, 95)
    scope = set(incident.rule.get("scope", []))
    return {
        "id": incident.id,
        "status": incident.status,
        "rule": {
            "id": incident.rule.get("id"),
            "description": incident.rule.get("description", ""),
            "thresholds": {
                k: incident.rule.get(k)
                for k in ("window_s", "quiet_s", "min_count", "min_rate", "min_requests")
            },
        },
        "group": dict(incident.key),
        "grouped_by": {
            "rule": incident.rule.get("id"),
            "fields": [field for field, _ in incident.key],
            "rate_of": {field: value for field, value in incident.key if field in scope},
        },
        "reason": latest.open_reason,
        "opened_at": _iso(latest.opened_at),
        "first_opened_at": _iso(incident.episodes[0].opened_at),
        "resolved_at": _iso(latest.resolved_at),
        "resolve_reason": latest.resolve_reason,
        "regressions": incident.regressions,
        "first_seen": _iso(incident.first_seen),
        "last_seen": _iso(incident.last_seen),
        "events": facts.events,
        "estimated_requests": round(facts.weight, 3),
        "late_events": facts.late,  # counted, but arrived after their minute was judged
        "window": None if window is None else window.as_dict(),
        "duration_ms": _durations(("p50", p50), ("p95", p95)),
        "affected": {"users": incident.users, "sessions": incident.sessions},
        "top": {
            "models": _top(facts.dims.get("llm.model", {})),
            "prompt_versions": _top(facts.dims.get("llm.prompt_version", {})),
            "statuses": _top(facts.dims.get("http.status", {})),
        },
        "message": None
        if message is None
        else {
            "normalized": message.text,
            "example": message.example,
            "count": message.count,
            "masking": facts.masking,
        },
        "sample_request_ids": [rid for _, rid in facts.samples],
        "facets": [
            {
                "id": f.incident_id,
                "rule": f.rule.get("id"),
                "group": dict(f.key),
                "at": _iso(f.at),
                "reason": f.reason,
                "rate": None if f.window is None else round(f.window.rate, 6),
                "window": None if f.window is None else f.window.as_dict(),
                "duration_ms": _durations(("p95", f.p95)),
            }
            for f in incident.facets
        ],
        "episodes": [
            {
                "number": e.number,
                "opened_at": _iso(e.opened_at),
                "resolved_at": _iso(e.resolved_at),
                "resolve_reason": e.resolve_reason,
            }
            for e in incident.episodes
        ],
        "text": describe(incident),
    }


def describe(incident: Incident) -> str:
    """One paragraph an operator can act on without knowing the code."""
    facts = incident.facts
    latest = incident.episodes[-1]
    rule = incident.rule
    where = " and ".join(f"{f} = {'(none)' if v is None else v}" for f, v in incident.key)
    if incident.status == "open":
        head = f"OPEN since {_when(latest.opened_at)}"
    else:
        head = (
            f"RESOLVED at {_when(latest.resolved_at)} ({latest.resolve_reason}),"
            f" after opening at {_when(latest.opened_at)}"
        )
    description = f" ({rule['description']})" if rule.get("description") else ""
    plural = "s" if facts.events != 1 else ""
    parts = [
        f'{head}: {facts.events:,} event{plural} matched rule "{rule.get("id")}"{description}'
        f" with {where}.",
        f"First seen {_when(incident.first_seen)}, last seen {_when(incident.last_seen)}.",
    ]
    if incident.regressions:
        times = "time" if incident.regressions == 1 else "times"
        parts.append(f"It came back after being resolved {incident.regressions} {times}.")
    window = incident.window
    if window is not None:
        scope = [(f, v) for f, v in incident.key if f in set(rule.get("scope", []))]
        among = " with " + " and ".join(f"{f} = {v}" for f, v in scope) if scope else ""
        parts.append(
            f"In the {window.window_s // 60} minutes up to {_when(window.end)}:"
            f" {window.matched:,.0f} of {_requests(window)} requests{among}"
            f" ({_rate(window.rate)}){_uncertainty(window)}."
        )
    p50, p95 = percentile(facts.durations, 50), percentile(facts.durations, 95)
    if p50 is not None and p95 is not None:
        parts.append(f"Duration p50 {_ms(p50)}, p95 {_ms(p95)}.")
    users = f"{incident.users:,} user" + ("s" if incident.users != 1 else "")
    sessions = f"{incident.sessions:,} session" + ("s" if incident.sessions != 1 else "")
    parts.append(f"Affected: {users}, {sessions}.")
    for dim, label in (("llm.model", "Top models"), ("llm.prompt_version", "Prompt versions")):
        top = _top(facts.dims.get(dim, {}))
        if top:
            parts.append(
                f"{label}: " + ", ".join(f"{t['value']} ({t['count']})" for t in top) + "."
            )
    message = _main_message(incident)
    if message is None:
        parts.append("No error message was recorded.")
    elif message.example == message.text:
        parts.append(f'Message: "{message.text}".')
    else:
        parts.append(f'Message: "{message.text}" (for example "{message.example}").')
    if facts.samples:
        parts.append("Request ids to look up: " + ", ".join(rid for _, rid in facts.samples) + ".")
    if incident.facets:
        parts.append("Also: " + "; ".join(_facet(f) for f in incident.facets) + ".")
    return " ".join(parts)


def _facet(facet: Facet) -> str:
    """One facet with the figures of the window it was recorded on.

    `latency with http.route = /v1/chat since 2026-11-27 10:01:00 UTC (48 of about 50 requests,
    96.0%; p95 30,000 ms)`.
    """
    where = " and ".join(f"{f} = {'(none)' if v is None else v}" for f, v in facet.key)
    figures = []
    if facet.window is not None:
        window = facet.window
        figures.append(
            f"{window.matched:,.0f} of {_requests(window)} requests, {_rate(window.rate)}"
        )
    if facet.p95 is not None:
        figures.append(f"p95 {_ms(facet.p95)}")
    said = f" ({'; '.join(figures)})" if figures else ""
    return f"{facet.rule.get('id')} with {where} since {_when(facet.at)}{said}"
