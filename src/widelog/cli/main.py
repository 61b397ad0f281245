"""The `widelog` command line: serve, worker, replay, demo, and the sampling/incidents groups.

Every command fails the same way (`cli/errors.py`): an expected failure prints one or two plain
lines and exits with a documented code; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from widelog._extras import extra
from widelog.cli import reachability
from widelog.cli.errors import BAD_CONFIG, FAILED, explain
from widelog.cli.events import events_app
from widelog.cli.incidents import incidents_app
from widelog.cli.infra import infra
from widelog.cli.sampling import sampling_app
from widelog.config import Settings, load_settings
from widelog.pipeline.spool import FileSpool
from widelog.policies import load_incident_rules, load_sampling_policy

if TYPE_CHECKING:
    from collections.abc import Sequence

app = typer.Typer(help="Wide-event logging for LLM chat backends.", no_args_is_help=True)
app.add_typer(sampling_app, name="sampling")
app.add_typer(incidents_app, name="incidents")
app.add_typer(events_app, name="events")
app.command()(infra)
err = Console(stderr=True)

LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"],
    typer.Option(case_sensitive=False, help="Log level."),
]


@dataclass
class RunOptions:
    """What the global options decide, read by `main()` after the command has failed."""

    debug: bool = False


@app.callback()
def root(
    ctx: typer.Context,
    *,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an expected failure too.")
    ] = False,
) -> None:
    """Options for every command."""
    ctx.ensure_object(RunOptions).debug = debug


def _settings() -> Settings:
    """Settings, sampling policy and incident rules, validated before anything starts."""
    settings = load_settings()
    load_sampling_policy()
    load_incident_rules()
    return settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs each request's full URL at INFO; a webhook's path can be its credential.
    httpx_log = logging.getLogger("httpx")
    httpx_log.setLevel(max(logging.WARNING, logging.getLogger().level))


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: LogLevel = "info",
) -> None:
    """Run the reference chat API (FastAPI + uvicorn) with the wide-event middleware."""
    with extra("server", needed_by="widelog serve"):
        import uvicorn  # noqa: PLC0415 - only this command needs the server

    settings = _settings()  # fail fast, before uvicorn starts, on a bad setting
    if settings.transport == "memory":  # the consumer runs here: startup needs the store
        asyncio.run(reachability.require(settings, "store"))
    _configure_logging(log_level)
    uvicorn.run(
        "widelog.chat.api:app_from_env",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
    )


@app.command()
def worker(log_level: LogLevel = "info") -> None:
    """Consume events from Kafka or Redis Streams into the store (one consumer-group member)."""
    from widelog.worker import run_worker  # noqa: PLC0415 - loads the MQ clients

    settings = _settings()
    if settings.transport in {"memory", "stdout"}:
        typer.echo(
            f"error: WIDELOG_TRANSPORT={settings.transport}: there is no queue to consume"
            " (memory: the consumer runs inside the API process; stdout: nothing is stored);"
            " a separate worker needs a shared transport (kafka or redis)",
            err=True,
        )
        raise typer.Exit(BAD_CONFIG)
    # The broker may still be starting (the worker waits for it); the store must answer now,
    # and a broker that answers must not refuse the credentials.
    asyncio.run(reachability.require(settings, "store", "credentials"))
    _configure_logging(log_level)
    asyncio.run(run_worker(settings))


@app.command()
def replay(
    log_level: LogLevel = "info",
    *,
    rejected: Annotated[
        bool,
        typer.Option(
            "--rejected",
            help="Publish the events the broker refused for good (*.rejected), after a fix.",
        ),
    ] = False,
) -> None:
    """Publish the spooled events to the message queue now (the API also does it by itself)."""
    from widelog.worker import replay as replay_spool  # noqa: PLC0415

    settings = _settings()
    if settings.transport in {"memory", "stdout"}:
        typer.echo(
            f"error: WIDELOG_TRANSPORT={settings.transport} has no spool: nothing to replay",
            err=True,
        )
        raise typer.Exit(BAD_CONFIG)
    asyncio.run(reachability.require(settings, "transport"))
    _configure_logging(log_level)
    confirmed = asyncio.run(replay_spool(settings, rejected=rejected))
    what = "rejected events" if rejected else "events"
    err.print(f"replayed {confirmed} {what} from {settings.spool_dir}", markup=False)
    if left := len(FileSpool(settings.spool_dir, fsync="never").rejected()):
        err.print(
            f"{left} file(s) of events the broker refused for good remain in {settings.spool_dir}"
            " (*.rejected): fix the topic or broker, then `widelog replay --rejected`",
            markup=False,
        )


@app.command()
def demo(
    requests: Annotated[int, typer.Option(min=1, help="How many chat requests to send.")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1)] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    log_level: LogLevel = "warning",
) -> None:
    """Run the chat service in-process under synthetic traffic and report what the pipeline did."""
    with extra("server", needed_by="widelog demo"):
        from widelog.chat.demo import run_demo  # noqa: PLC0415 - keeps `--help` fast

    settings = _settings()
    # The demo's SQLite store is a temporary file of its own; anything else must answer now.
    needs = ("transport", "cache", "store") if settings.store == "mongo" else ("transport", "cache")
    asyncio.run(reachability.require(settings, *needs))
    _configure_logging(log_level)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=as_json or not err.is_terminal,
    )
    with progress:
        task = progress.add_task("chat requests", total=requests)
        report = asyncio.run(
            run_demo(
                settings,
                requests=requests,
                concurrency=concurrency,
                on_progress=lambda n: progress.advance(task, n),
            )
        )
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print_report(report)
    events = report["events"]
    lost = events["finalized"] - events["sampled_out"] - events["stored"] - events["dead_lettered"]
    if lost or report["errors"]["stored"] != report["errors"]["total"]:
        err.print(f"[red]the pipeline lost {lost} events[/red]")
        raise typer.Exit(FAILED)


def _print_report(report: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"widelog demo: {report['requests']} requests", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("requests/s", report["requests_per_s"]),
        ("HTTP status", ", ".join(f"{k}: {v}" for k, v in report["status"].items())),
        (
            "latency p50 / p99 (ms)",
            f"{report['latency_ms']['p50']} / {report['latency_ms']['p99']}",
        ),
        *((f"events.{k}", v) for k, v in report["events"].items()),
        *((f"errors.{k}", v) for k, v in report["errors"].items()),
        ("stored / finalized", f"{report['sampling']['stored_fraction']:.1%}"),
        ("kept by reason", ", ".join(f"{k}: {v}" for k, v in report["kept_by_reason"].items())),
        ("cache hit rate: session", f"{report['cache']['session_hit_rate']:.1%}"),
        ("cache hit rate: answers", f"{report['cache']['semantic_hit_rate']:.1%}"),
        ("transport → store", f"{report['pipeline']['transport']} → {report['pipeline']['store']}"),
        ("batches", report["pipeline"]["batches"]),
    ]
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)
    for incident in report["incidents"]:
        console.print(f"\n[bold]incident[/bold] {escape(incident['text'])}", highlight=False)
    if not report["incidents"]:
        console.print("\nno incidents opened")


def main(args: Sequence[str] | None = None) -> None:
    """Run the command; an expected failure becomes its message and exit code (`cli/errors.py`)."""
    options = RunOptions()
    try:
        code = app(args=args, prog_name="widelog", standalone_mode=False, obj=options)
    except Exception as exc:
        failure = explain(exc)
        if failure is None or options.debug:
            raise
        if failure.message:
            sys.stderr.write(failure.message.rstrip("\n") + "\n")
        code = failure.exit_code
    sys.exit(code if isinstance(code, int) else 0)
