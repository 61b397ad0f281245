"""`widelog infra`: the running service's `/v1/infra`, as a table (or JSON) for a person.

It asks the API rather than guessing from here: queue depth, spool and cache state live in the
API process. The token is `WIDELOG_ADMIN_TOKEN`, as the service reads it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from widelog.cli.errors import Unreachable


def infra(
    *,
    url: Annotated[str, typer.Option(help="The API's base URL.")] = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the pipeline's state: healthy, degraded or spooling, and why."""
    import httpx  # noqa: PLC0415 - only this command talks HTTP

    token = os.environ.get("WIDELOG_ADMIN_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/infra", headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        raise Unreachable(
            "the widelog API",
            url,
            reason=repr(exc),
            hint="start it (`widelog serve`) or pass --url",
        ) from None
    if response.status_code == 401:
        raise Unreachable(
            "the widelog API", url, reason="401", hint="set WIDELOG_ADMIN_TOKEN to its token"
        )
    response.raise_for_status()
    snapshot: dict[str, Any] = response.json()
    if as_json:
        sys.stdout.write(json.dumps(snapshot) + "\n")
        return
    print_snapshot(snapshot)


def print_snapshot(snapshot: dict[str, Any]) -> None:
    table = Table(title=f"widelog: {snapshot['state']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("transport → store", f"{snapshot['transport']} → {snapshot['store']}"),
        ("queue depth", snapshot["queue_depth"]),
        ("consumer lag", (snapshot.get("lag") or {}).get("total", "unknown")),
        *((f"events.{k}", v) for k, v in snapshot["events"].items()),
        *((f"spool.{k}", v) for k, v in (snapshot.get("spool") or {}).items()),
        *((f"consumer.{k}", v) for k, v in (snapshot.get("consumer") or {}).items()),
        ("open incidents", snapshot.get("open_incidents")),
        *(("problem", p) for p in snapshot["problems"]),
    ]
    cache = snapshot.get("cache")
    if cache:
        rows.append(("cache hit rate: sessions", f"{cache['session_hit_rate']:.1%}"))
        rows.append(("cache hit rate: answers", f"{cache['semantic_hit_rate']:.1%}"))
        rows.append(("cache circuit", cache["circuit"] or "none"))
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    Console().print(table)
