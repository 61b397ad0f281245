"""The `widelog` command line: serve, worker, demo."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from widelog._extras import extra
from widelog.bootstrap import load_incident_rules
from widelog.cli.incidents import incidents_app
from widelog.cli.sampling import sampling_app
from widelog.config import Settings
from widelog.incidents.rules import IncidentRulesError
from widelog.sampling.policy import SamplingPolicy, SamplingPolicyError

app = typer.Typer(help="Wide-event logging for LLM chat backends.", no_args_is_help=True)
app.add_typer(sampling_app, name="sampling")
app.add_typer(incidents_app, name="incidents")
err = Console(stderr=True)


def _settings() -> Settings:
    """Settings and sampling policy, validated before anything starts (exit 2 naming the key)."""
    try:
        settings = Settings()
        SamplingPolicy.from_env(os.environ)
        load_incident_rules()
    except ValidationError as exc:
        err.print(f"[red]invalid WIDELOG_* settings:[/red]\n{exc}")
        raise typer.Exit(2) from None
    except SamplingPolicyError as exc:
        err.print(f"[red]invalid sampling policy:[/red] {exc}")
        raise typer.Exit(2) from None
    except IncidentRulesError as exc:
        err.print(f"[red]invalid incident rules:[/red] {exc}")
        raise typer.Exit(2) from None
    return settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run the reference chat API (FastAPI + uvicorn) with the wide-event middleware."""
    with extra("server", needed_by="widelog serve"):
        import uvicorn  # noqa: PLC0415 - only this command needs the server

    _settings()  # fail fast, before uvicorn starts, on a bad setting
    _configure_logging(log_level)
    uvicorn.run(
        "widelog.chat.api:app_from_env",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
    )


@app.command()
def worker(log_level: str = "info") -> None:
    """Consume events from Kafka or Redis Streams into the store (one consumer-group member)."""
    from widelog.worker import run_worker  # noqa: PLC0415 - loads the MQ clients

    settings = _settings()
    if settings.transport == "memory":
        err.print(
            "WIDELOG_TRANSPORT=memory: the consumer runs inside the API process (`widelog serve`);"
            " a separate worker needs a shared transport (kafka or redis)."
        )
        raise typer.Exit(2)
    _configure_logging(log_level)
    asyncio.run(run_worker(settings))


@app.command()
def replay(log_level: str = "info") -> None:
    """Publish the spooled events to the message queue now (the API also does it by itself)."""
    from widelog.worker import replay as replay_spool  # noqa: PLC0415

    settings = _settings()
    if settings.transport == "memory":
        err.print("WIDELOG_TRANSPORT=memory has no spool: nothing to replay.")
        raise typer.Exit(2)
    _configure_logging(log_level)
    confirmed = asyncio.run(replay_spool(settings))
    err.print(f"replayed {confirmed} events from {settings.spool_dir}")


@app.command()
def demo(
    requests: Annotated[int, typer.Option(min=1, help="How many chat requests to send.")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1)] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    log_level: str = "warning",
) -> None:
    """Run the chat service in-process under synthetic traffic and report what the pipeline did."""
    with extra("server", needed_by="widelog demo"):
        from widelog.chat.demo import run_demo  # noqa: PLC0415 - keeps `--help` fast

    settings = _settings()
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
        raise typer.Exit(1)


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
        table.add_row(name, str(value))
    console.print(table)
    for incident in report["incidents"]:
        console.print(f"\n[bold]incident[/bold] {incident['text']}", highlight=False)
    if not report["incidents"]:
        console.print("\nno incidents opened")
