"""Synthetic wide events at chosen times for incident tests: bursts, noise, sampled successes."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
_ids = itertools.count()


def request(
    at: dt.datetime,
    *,
    code: str | None = None,
    route: str = "/v1/chat",
    status: int | None = None,
    weight: float = 1.0,
    duration_ms: float = 120.0,
    message: str | None = None,
    request_id: str | None = None,
    session: str | None = None,
    user: str | None = None,
    model: str = "fake-chat-1",
    provider: str = "fake",
    prompt_version: str = "v3",
) -> dict[str, Any]:
    """One stored event; `weight` is what sampling recorded (50 = kept at a 2% rate)."""
    n = next(_ids)
    doc: dict[str, Any] = {
        "event_id": f"evt-{int(at.timestamp() * 1000):014d}-{n:08d}",  # time-ordered, as UUIDv7
        "request_id": request_id or f"req-{n:08d}",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "http": {"method": "POST", "route": route, "status": status or (504 if code else 200)},
        "duration_ms": duration_ms,
        "session_id": session or f"s-{n % 17}",
        "llm": {"provider": provider, "model": model, "prompt_version": prompt_version},
        "sampling": {"kept": True, "reason": "error" if code else "baseline", "weight": weight},
    }
    if user is not None:
        doc["user_id"] = user
    if code is not None:
        doc["error"] = {"code": code, "message": message or f"{code} after {3000 + n % 97} ms"}
    return doc


def spread(start: dt.datetime, seconds: float, count: int) -> list[dt.datetime]:
    """`count` times evenly over `seconds` from `start`, to the millisecond."""
    step = seconds / max(count, 1)
    return [start + dt.timedelta(milliseconds=round(i * step * 1000)) for i in range(count)]


def burst(
    start: dt.datetime,
    *,
    seconds: float = 120,
    successes: int = 1000,
    errors: dict[str, int] | None = None,
    success_weight: float = 1.0,
    route: str = "/v1/chat",
    **fields: Any,
) -> list[dict[str, Any]]:
    """Successes and errors interleaved in time order over `seconds` from `start`."""
    events = [
        (at, request(at, weight=success_weight, route=route))
        for at in spread(start, seconds, successes)
    ]
    for code, count in (errors or {}).items():
        events += [
            (at, request(at, code=code, route=route, **fields))
            for at in spread(start + dt.timedelta(milliseconds=7), seconds, count)
        ]
    events.sort(key=lambda item: (item[0], item[1]["event_id"]))
    return [doc for _, doc in events]


def batches(events: list[dict[str, Any]], size: int = 100) -> list[list[dict[str, Any]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]
