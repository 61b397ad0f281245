"""`widelog incidents …`: list and show incidents, recompute them from stored events, check rules.

The store comes from the same `WIDELOG_*` settings as the service (`WIDELOG_STORE`,
`WIDELOG_SQLITE_PATH`, `WIDELOG_MONGO_URL`); the rules from `WIDELOG_INCIDENTS_RULES` and the
other `WIDELOG_INCIDENTS_*` variables.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from widelog.cli.errors import FAILED
from widelog.incidents.rules import IncidentRules, parse_duration
from widelog.policies import load_incident_rules

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from widelog.config import Settings
    from widelog.incidents.ports import IncidentStore
    from widelog.incidents.request_totals import RequestTotals

incidents_app = typer.Typer(
    help="Incidents: rule-based groups of failing or slow requests.", no_args_is_help=True
)
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Status = Literal["open", "resolved"]
T = TypeVar("T")


def _settings() -> Settings:
    from widelog.config import load_settings  # noqa: PLC0415 - keeps `--help` fast

    return load_settings()


def _rules(path: Path | None = None) -> IncidentRules:
    return load_incident_rules(path)  # errors: `cli/errors.py`


def _with_store(
    settings: Settings, use: Callable[[IncidentStore, RequestTotals], Awaitable[T]]
) -> T:
    """Run `use` on the incident store and the request totals, once the store answers.

    The totals read the event store's count records; exit 3 naming the store if it is away.
    """
    from widelog.bootstrap import build_incident_store, build_store  # noqa: PLC0415
    from widelog.cli.reachability import require  # noqa: PLC0415
    from widelog.incidents.request_totals import StoredRequestTotals  # noqa: PLC0415

    async def run() -> T:
        await require(settings, "store")
        store = build_incident_store(settings)
        events = build_store(settings)
        try:
            return await use(store, StoredRequestTotals(events))
        finally:
            await events.close()
            await store.close()

    return asyncio.run(run())


def _write_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")


@incidents_app.command("list")
def list_(
    *,
    status: Annotated[Status | None, typer.Option(help="Only incidents with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many incidents.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List incidents: open ones first, most recent activity first."""
    from widelog.incidents.queries import incident_summaries  # noqa: PLC0415

    summaries = _with_store(
        _settings(),
        lambda store, totals: incident_summaries(store, status=status, limit=limit, totals=totals),
    )
    if as_json:
        _write_json({"incidents": summaries})
        return
    if not summaries:
        Console().print("no incidents")
        return
    console = Console()
    console.print(incidents_table(summaries, width=console.width))


WIDE: Final = 110  # terminal columns from which `last seen` fits beside the rest


def incidents_table(summaries: list[dict[str, Any]], *, width: int) -> Table:
    """The listed incidents as a table that reads in `width` columns, from 80 up.

    The id stays whole (it is what `show` takes); the rule and its group share one column, a
    field a line, folded when long. Narrower than `WIDE`, the rate's interval goes on a second
    line and `last seen` is left out: the rows are already ordered by it.
    """
    wide = width >= WIDE
    title = f"{len(summaries)} incident(s), open first, by latest activity"
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("rule: group", overflow="fold", min_width=16)  # never squeezed out
    table.add_column("events", justify="right", no_wrap=True)
    table.add_column("rate", justify="right", no_wrap=True)
    if wide:
        table.add_column("last seen (UTC)", no_wrap=True)
    for s in summaries:
        group = "\n".join(f"{k}={v}" for k, v in s["group"].items())
        last_seen = dt.datetime.fromisoformat(s["last_seen"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            s["id"],
            s["status"] + (f" +{s['regressions']}" if s["regressions"] else ""),
            Text.assemble((s["rule"]["id"], "bold"), ":\n", group),
            f"{s['events']:,}",
            _rate_cell(s["window"] or {}, "  " if wide else "\n"),
            *([last_seen] if wide else []),
        )
    return table


def _rate_cell(window: dict[str, Any], gap: str) -> str:
    """`2.00%` when counted exactly; `~1.35%`, `gap`, `1.01%-1.79%` (its 95% interval) if not."""
    rate = f"{window.get('rate', 0):.2%}"
    if not window.get("requests_estimated", True):
        return rate
    low, high = window.get("rate_interval95") or (None, None)
    return f"~{rate}" if low is None else f"~{rate}{gap}{low:.2%}-{high:.2%}"


@incidents_app.command()
def show(
    incident_id: Annotated[str, typer.Argument(help="The incident id (inc_…).")],
    *,
    as_json: JsonOption = False,
) -> None:
    """Show one incident: a readable summary, or every structured field with --json."""
    from widelog.incidents.queries import get_incident  # noqa: PLC0415
    from widelog.incidents.summary import summarize  # noqa: PLC0415

    incident = _with_store(
        _settings(), lambda store, totals: get_incident(store, incident_id, totals=totals)
    )
    if incident is None:
        err.print(f"no incident {incident_id}", markup=False, highlight=False)
        raise typer.Exit(FAILED)
    summary = summarize(incident)
    if as_json:
        _write_json(summary)
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{summary['id']}  {summary['status'].upper()}", markup=False)
    console.print(summary["text"], markup=False)
    if summary["reason"]:
        console.print(f"why it opened: {summary['reason']}", markup=False)


@incidents_app.command()
def notifications(*, as_json: JsonOption = False) -> None:
    """The notification outbox: each message of the last WIDELOG_INCIDENTS_NOTIFY_MAX_AGE."""
    from widelog.bootstrap import build_outbox  # noqa: PLC0415
    from widelog.incidents.notify.sender import outbox_view  # noqa: PLC0415

    settings = _settings()
    outbox = build_outbox(settings)
    if outbox is None:
        err.print("notifications are off: WIDELOG_INCIDENTS_WEBHOOK_URL is not set")
        raise typer.Exit(FAILED)
    max_age = dt.timedelta(seconds=settings.incidents_notify_max_age)

    async def read(_: IncidentStore, __: RequestTotals) -> list[dict[str, Any]]:
        try:
            return await outbox_view(outbox, max_age=max_age)
        finally:
            await outbox.close()

    rows = _with_store(settings, read)
    if as_json:
        _write_json({"messages": rows})
        return
    table = Table(title=f"{len(rows)} message(s)")
    for name in ("key", "state", "attempts", "last outcome", "created"):
        table.add_column(name, no_wrap=name == "key")
    for row in rows:
        last = row["last"] or {}
        outcome = f"{last.get('outcome') or 'claimed'} {last.get('detail', '')}" if last else ""
        table.add_row(
            row["key"], row["state"], str(row["attempts"]), escape(outcome), row["created"]
        )
    Console().print(table)


def parse_since(text: str, *, now: dt.datetime) -> dt.datetime:
    """`24h`, `90m`, `7d` (ago), an ISO date/time, or `all`."""
    if text.strip().lower() == "all":
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    try:
        return now - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use e.g. 24h, 7d, 2026-11-27T10:00Z or all") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@incidents_app.command()
def rebuild(
    *,
    since: Annotated[
        str, typer.Option(help="Replay events from this long ago (24h, 7d), a time, or all.")
    ] = "24h",
    as_json: JsonOption = False,
) -> None:
    """Recompute every incident from the stored events since --since (stop the workers first)."""
    from widelog.bootstrap import build_store  # noqa: PLC0415
    from widelog.incidents.aggregator import IncidentAggregator  # noqa: PLC0415

    settings = _settings()
    rules = _rules()
    now = dt.datetime.now(dt.UTC)
    start = parse_since(since, now=now)

    async def run(store: IncidentStore, totals: RequestTotals) -> dict[str, Any]:
        events = build_store(settings)
        try:
            result = await IncidentAggregator(store, rules, totals=totals).rebuild(
                events.scan_events(), start, now=now
            )
        finally:
            await events.close()
        return {
            "since": start.isoformat(),
            "events": result.events,
            "incidents": result.opened,
            "transitions": result.transitions,
            "rules": rules.fingerprint,
        }

    report = _with_store(settings, run)
    if as_json:
        _write_json(report)
        return
    Console(highlight=False).print(
        f"replayed {report['events']:,} events since {report['since']}:"
        f" {report['incidents']} incident(s), {report['transitions']} lifecycle step(s)"
        f" (rules {report['rules']})",
        markup=False,
    )


@incidents_app.command()
def check(
    *,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="Rules TOML file (default: $WIDELOG_INCIDENTS_RULES, else the defaults).",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate the incident rules (file + env) and print them normalized, with a fingerprint."""
    loaded = _rules(rules)
    report = {
        "fingerprint": loaded.fingerprint,
        "active": [rule.id for rule in loaded.active],
        "rules": loaded.model_dump(mode="json"),
    }
    if as_json:
        _write_json(report)
        return
    console = Console(highlight=False)
    console.print(f"incident rules {loaded.fingerprint} are valid", markup=False)
    console.print_json(json.dumps(report["rules"]))
