"""`make bench`: every benchmark in one run, then `docs/benchmarks.md` and its charts regenerated.

    python bench/run_all.py [--quick]
        [--only latency,transport,worker,hot_path,storage,incidents,replay]

`replay` (`bench/replay_recovery.py`) stops and starts Kafka, so it runs only when named in
`--only`, against services of your own (`WIDELOG_SERVICES_*` variables).

Raw results go to `docs/benchmarks/results.json`, charts to `docs/benchmarks/*.png`. `--quick`
runs a reduced matrix (shorter windows, fewer events, fewer worker configurations) and says so
at the top of the page. Needs the services (`scripts/services.sh up`, same variables) and the
tools `bench/tools.sh` installs (Toxiproxy, oha).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import incident_aggregation
import latency_decoupling
import publish_hot_path
import replay_recovery
import storage
import transport_cost
import worker_drain
from bench_common import ROOT, Services, Toxiproxy, free_port, log, machine
from bench_report import write_report

SECTIONS = ["latency", "transport", "worker", "hot_path", "storage", "incidents"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced matrix, said so in the page")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    only = args.only.split(",")
    quick = args.quick
    services = Services.from_env()
    out_dir = args.out / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    # A partial run (--only) keeps the other sections' last results.
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = machine(services)
    results["quick"] = quick
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    whole = set(SECTIONS) <= set(only)
    if whole:
        results["started"], results["rerun"] = now, []
    log(f"machine: {json.dumps(results['machine'])}")
    started = time.monotonic()
    if "hot_path" in only:
        results["hot_path"] = publish_hot_path.run(services, 20_000 if quick else 50_000)
    if "transport" in only:
        results["transport"] = asyncio.run(
            transport_cost.run(services, rate=1000, seconds=5 if quick else 10, burst=5000)
        )
    if "latency" in only:
        toxi = Toxiproxy(api_port=free_port())
        try:
            results["latency"] = latency_decoupling.run(
                services,
                toxi,
                rate=200,
                seconds=8 if quick else 15,
                warmup_s=2 if quick else 3,
                latencies=[0, 50, 200],
            )
        finally:
            toxi.close()
    if "worker" in only:
        results["worker"] = worker_drain.run(
            services, events=5000 if quick else 10_000, quick=quick
        )
    if "storage" in only:
        results["storage"] = asyncio.run(
            storage.run(
                services,
                requests=20_000 if quick else 100_000,
                distinct=2000 if quick else 5000,
            )
        )
    if "incidents" in only:
        results["incidents"] = incident_aggregation.run(
            services, events=5000 if quick else 20_000, quick=quick
        )
    if "replay" in only:  # never by default: it stops Kafka
        replay_recovery.refuse_shared_services(allowed=False)
        windows = 20.0 if quick else 60.0
        results["replay"] = asyncio.run(
            replay_recovery.run(
                services,
                rate=150,
                replay_rates=[0, 1000],
                baseline_s=windows,
                outage_s=20.0 if quick else 30.0,
                after_s=windows,
                backlog_events=5000,
            )
        )
    elapsed = round(time.monotonic() - started)
    if whole:
        results["elapsed_s"] = elapsed
    else:  # the page says which sections are newer than the run it is dated by (the last time)
        reruns = [r for r in results.get("rerun", []) if set(r["sections"]) - set(only)]
        results["rerun"] = [*reruns, {"sections": only, "started": now, "s": elapsed}]
    results_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_report(results, args.out / "benchmarks.md", out_dir)
    log(f"wrote {args.out / 'benchmarks.md'} in {elapsed} s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
