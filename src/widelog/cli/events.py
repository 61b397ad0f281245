"""`widelog events get|search`: look up stored events, e.g. the request ids an incident lists.

The store comes from the same `WIDELOG_*` settings as the service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from widelog.cli.errors import FAILED
from widelog.cli.incidents import parse_since
from widelog.pipeline.ports import EventQuery

if TYPE_CHECKING:
    from widelog.config import Settings

events_app = typer.Typer(
    help="Stored events: find one by request id, or search.", no_args_is_help=True
)
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (one event per line).")]


def find(settings: Settings, query: EventQuery) -> list[dict[str, Any]]:
    """The events matching `query`, once the store answers (exit 3 naming it otherwise)."""
    from widelog.bootstrap import build_store  # noqa: PLC0415 - keeps `--help` fast
    from widelog.cli.reachability import require  # noqa: PLC0415

    async def run() -> list[dict[str, Any]]:
        await require(settings, "store")
        store = build_store(settings)
        try:
            return await store.find_events(query)
        finally:
            await store.close()

    return asyncio.run(run())


def _settings() -> Settings:
    from widelog.config import load_settings  # noqa: PLC0415

    return load_settings()


def _json(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, default=_as_text, indent=indent, ensure_ascii=False)


def _as_text(value: object) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


@events_app.command()
def get(
    request_id: Annotated[str, typer.Argument(help="The request id (the x-request-id header).")],
) -> None:
    """Print the whole stored event of a request, as pretty JSON."""
    found = find(_settings(), EventQuery(request_id=request_id, limit=10))
    if not found:
        err.print(
            f"no stored event for request id {request_id!r}: sampled out, not yet stored"
            " (consumer lag), or past retention",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(FAILED)
    for event in found:
        sys.stdout.write(_json(event, indent=2) + "\n")


@events_app.command()
def search(
    *,
    since: Annotated[str, typer.Option(help="24h, 90m, 7d (ago), an ISO time, or all.")] = "1h",
    until: Annotated[str | None, typer.Option(help="An ISO time (exclusive).")] = None,
    route: Annotated[str | None, typer.Option(help="Route template, e.g. /v1/chat.")] = None,
    status: Annotated[int | None, typer.Option(min=100, max=599)] = None,
    error_code: Annotated[str | None, typer.Option(help="e.g. LLM_TIMEOUT.")] = None,
    session_id: str | None = None,
    model: Annotated[str | None, typer.Option(help="llm.model")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Stored events matching every filter given, newest first."""
    now = dt.datetime.now(dt.UTC)
    query = EventQuery(
        since=parse_since(since, now=now),
        until=parse_since(until, now=now) if until else None,
        route=route,
        status=status,
        error_code=error_code,
        session_id=session_id,
        model=model,
        limit=limit,
    )
    found = find(_settings(), query)
    if as_json:
        for event in found:
            sys.stdout.write(_json(event) + "\n")
        return
    if not found:
        Console().print("no events match")
        return
    table = Table(title=f"{len(found)} event(s), newest first")
    for name in ("time", "request id", "route", "status", "ms", "error"):
        table.add_column(name, justify="right" if name in {"status", "ms"} else "left")
    for event in found:
        http, error = event.get("http") or {}, event.get("error") or {}
        stamp = event.get("timestamp")
        table.add_row(
            stamp.strftime("%m-%d %H:%M:%S") if isinstance(stamp, dt.datetime) else str(stamp),
            escape(str(event.get("request_id"))),
            escape(str(http.get("route", event.get("unit", {}).get("name", "")))),
            str(http.get("status", "")),
            f"{event.get('duration_ms', 0):.0f}",
            escape(str(error.get("code", ""))),
        )
    Console().print(table)
