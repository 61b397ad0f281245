"""`widelog sampling …`: explain a decision, estimate traffic from stored events, check a policy.

The policy comes from `--policy` or `WIDELOG_SAMPLING_POLICY`, with the other `WIDELOG_SAMPLING_*`
variables on top: the same one the service loads, so `explain` answers for what runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from widelog.policies import load_sampling_policy
from widelog.sampling.policy import SamplingPolicy, TailSampler

if TYPE_CHECKING:
    from widelog.sampling.reweighting import Estimate

sampling_app = typer.Typer(
    help="Tail-aware sampling: explain decisions, re-weight stored events.", no_args_is_help=True
)

PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Policy TOML file (default: $WIDELOG_SAMPLING_POLICY, else the built-in defaults).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _policy(path: Path | None) -> SamplingPolicy:
    return load_sampling_policy(path)  # errors: `cli/errors.py`


def _write_json(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")


@sampling_app.command()
def explain(
    *,
    route: Annotated[str, typer.Option(help="Route template, e.g. /v1/chat.")],
    request_id: Annotated[str, typer.Option(help="The request id the baseline hash is of.")],
    status: Annotated[int, typer.Option(help="HTTP status.")] = 200,
    duration_ms: Annotated[float, typer.Option(help="Request duration in ms.")] = 0.0,
    error_code: Annotated[
        str | None, typer.Option(help="error.code, if the request failed.")
    ] = None,
    forced: Annotated[bool, typer.Option(help="The request asked to be kept.")] = False,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the decision the policy makes for a request, and the rule that made it."""
    sampler = TailSampler(_policy(policy))
    doc: dict[str, Any] = {
        "request_id": request_id,
        "http": {"route": route, "status": status},
        "duration_ms": duration_ms,
    }
    if error_code:
        doc["error"] = {"code": error_code}
    explanation = sampler.explain(doc, forced=forced)
    decision = explanation.decision
    report = {
        "keep": decision.keep,
        "would_keep": decision.would_keep,
        "dry_run": decision.dry_run,
        "reason": decision.reason,
        "rate": decision.rate,
        "weight": decision.weight,
        "policy": sampler.fingerprint,
        "detail": explanation.detail,
        "hash": explanation.hash,
        "threshold": explanation.threshold,
    }
    if as_json:
        _write_json(report)
        return
    console = Console(highlight=False, soft_wrap=True)  # one line per fact, even in a pipe
    verdict = "[green]KEEP[/green]" if decision.would_keep else "[yellow]DROP[/yellow]"
    if decision.dry_run and not decision.would_keep:
        verdict += " (dry run: stored anyway)"
    console.print(f"{verdict}  reason={decision.reason}  rate={decision.rate:g}")
    console.print(f"rule:   {explanation.detail}", markup=False)
    console.print(f"policy: {sampler.fingerprint}", markup=False)


@sampling_app.command()
def estimate(
    *,
    batch_size: Annotated[int, typer.Option(min=1, help="Events read per page.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Requests and error rates per route: exact from count records, else estimated.

    Where the store holds an emitter's count record for a minute, its requests are exact; the
    rest are re-weighted from the stored (sampled) events, with a 95% interval.
    """
    from widelog.bootstrap import build_store  # noqa: PLC0415 - keeps `--help` fast
    from widelog.cli.reachability import require  # noqa: PLC0415
    from widelog.config import load_settings  # noqa: PLC0415
    from widelog.sampling.reweighting import estimate_from_store  # noqa: PLC0415

    settings = load_settings()

    async def run() -> Estimate:
        await require(settings, "store")
        store = build_store(settings)  # only the store: reading needs no transport
        try:
            return await estimate_from_store(store, batch_size=batch_size)
        finally:
            await store.close()

    result = asyncio.run(run())
    if as_json:
        _write_json(result.as_dict())
        return
    _print_estimate(result)


def _print_estimate(result: Estimate) -> None:
    title = (
        f"traffic from {result.total.sampled} stored events"
        f" and {result.count_records} count records"
    )
    table = Table(title=title)
    for name in ("route", "stored", "requests", "95% interval", "errors", "error rate"):
        table.add_column(name, justify="left" if name == "route" else "right")
    rows = sorted(result.routes.values(), key=lambda r: (-r.total.value, r.route))
    for row in [*rows, result.total]:
        total = row.total
        low, high = total.interval()
        table.add_row(
            "total" if row is result.total else escape(row.route),
            str(row.sampled),
            f"~{total.value:,.0f} (estimated)" if total.estimated else f"{total.value:,.0f}",
            f"{low:,.0f}-{high:,.0f}" if total.estimated else "exact",
            f"{row.errors:,.0f}",
            f"{row.error_rate:.2%}",
            end_section=row is not result.total and row is rows[-1],
        )
    console = Console()
    console.print(table)
    policies = ", ".join(f"{k} ({v})" for k, v in sorted(result.by_policy.items()))
    console.print(f"policies: {policies or 'none'}", markup=False, highlight=False)


@sampling_app.command()
def check(*, policy: PolicyOption = None, as_json: JsonOption = False) -> None:
    """Validate the policy (file + env) and print it normalized, with its fingerprint."""
    loaded = _policy(policy)
    report = {"fingerprint": loaded.fingerprint, "policy": loaded.model_dump(mode="json")}
    if as_json:
        _write_json(report)
        return
    console = Console(highlight=False)
    console.print(f"policy {loaded.fingerprint} is valid", markup=False)
    console.print_json(loaded.canonical_json())
