"""Turns `docs/benchmarks/results.json` into `docs/benchmarks.md` and its PNG charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

ASYNC = ("kafka", "redis", "embedded")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(latency: dict[str, Any]) -> dict[str, float]:
    """p99 of each mode / p99 without logging, at the highest injected latency."""
    top = max(latency["latencies_ms"])
    at = {r["mode"]: r for r in latency["rows"] if r["latency_ms"] == top}
    base = at["none"]["p99_ms"]
    return {mode: row["p99_ms"] / base for mode, row in at.items()} | {"latency_ms": top}


def _latency(section: dict[str, Any], charts: Path) -> list[str]:
    rows = section["rows"]
    base = {(r["latency_ms"]): r for r in rows if r["mode"] == "none"}
    table = []
    for r in rows:
        b = base.get(r["latency_ms"])
        table.append(
            [
                r["label"],
                r["latency_ms"],
                r["p50_ms"],
                r["p99_ms"],
                f"{r['p99_ms'] / b['p99_ms']:.2f}×" if b else "",
                r["rps"],
                r["non_200"] + r["errors"],
                r["cpu_ms_per_req"],
                f"{r['cpu_ms_per_req'] / b['cpu_ms_per_req']:.2f}×" if b else "",
                r["api_peak_rss_mb"],
            ]
        )
    stored = [
        [r["label"], r.get("sent_total", ""), r.get("stored_total", "")]
        for r in rows
        if "stored_total" in r
    ]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        points = [(r["latency_ms"], r["p99_ms"]) for r in rows if r["mode"] == mode]
        label = next(r["label"] for r in rows if r["mode"] == mode)
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xlabel("injected MongoDB write latency (ms, Toxiproxy)")
    ax.set_ylabel("API p99 latency (ms)")
    ax.set_title(f"POST /v1/chat at {section['rate']} req/s, one uvicorn worker")
    ax.set_yscale("log")
    ax.grid(visible=True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(charts / "latency_p99.png", dpi=110)
    plt.close(fig)
    return [
        "## 1. Latency decoupling (the headline)",
        "",
        f"`bench/latency_decoupling.py`: the reference API (`bench/bench_app.py` under uvicorn, one"
        f" worker process pinned to core 0) at a fixed **{section['rate']} req/s** from `oha -q"
        f" --latency-correction` (pinned to core 1; open-loop pacing, so a slow server is not"
        f" offered less load as with closed-loop `wrk`), {section['seconds']} s per cell after a"
        " warm-up, one run. Every event is kept (`WIDELOG_SAMPLING_BASELINE_RATE=1`), so every"
        " one crosses the slow store. The latency toxic sits between the writer and FerretDB: the"
        " synchronous `insert_one` (b), the `widelog worker` (c, d), the in-process consumer (e)."
        " Ratios are to (a) at the same injected latency; CPU is the API process's (all"
        " threads, /proc/PID/stat), per request.",
        "",
        _table(
            [
                "mode",
                "+ms",
                "p50 ms",
                "p99 ms",
                "p99 vs (a)",
                "req/s",
                "failed",
                "CPU ms/req",
                "CPU vs (a)",
                "API peak RSS MB",
            ],
            table,
        ),
        "",
        "![p99 vs injected latency](benchmarks/latency_p99.png)",
        "",
        "Events sent (warm-ups included) and stored by the time the mode's processes stopped"
        " (a worker stopped mid-backlog leaves the rest in the topic/stream, not lost):",
        "",
        _table(["mode", "requests sent", "events stored"], stored),
        "",
    ]


def _transport(section: dict[str, Any]) -> list[str]:
    rows = section["rows"]
    none = {r["sampling"]: r for r in rows if r["transport"] == "none"}
    table = []
    for r in rows:
        b = none.get(r["sampling"])
        net = r["steady_us_per_event"] - b["steady_us_per_event"] if b else 0.0
        threads = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["steady_cpu_by_thread_s"].items()))
        table.append(
            [
                r["transport"],
                r["sampling"],
                r["published_share"],
                r["burst_us_per_event"],
                r["steady_us_per_event"],
                round(net, 1) if r["transport"] != "none" else "—",
                r.get("steady_wakeups_per_event", "—"),
                r["steady_cpu_pct"],
                r["idle_cpu_pct"],
                threads,
            ]
        )
    return [
        "## 2. Transport cost in the API process",
        "",
        f"`bench/transport_cost.py`: `finalize()` of a 20-field event (2% errors, 1% slow) on a"
        f" pipeline built by `build_pipeline` as the API builds it; burst of"
        f" {section['burst']:,} events, then steady {section['rate']:,} events/s for"
        f" {section['seconds']} s (one event per event-loop iteration), each until delivered."
        " CPU of this process only (all threads; the broker is not counted); `none` is the same"
        ' path with a publisher that does nothing, so "transport µs" = steady − none. Embedded'
        " includes its in-process consumer writing to FerretDB.",
        "",
        _table(
            [
                "transport",
                "sampling",
                "published",
                "burst µs/ev",
                "steady µs/ev",
                "transport µs/ev",
                "wake-ups/ev",
                "steady CPU %",
                "idle CPU %",
                "steady CPU s by thread",
            ],
            table,
        ),
        "",
        "Wake-ups are the voluntary context switches of all threads per event (a thread that"
        " blocked and was woken): a kernel count that machine load hardly changes, unlike CPU"
        " seconds. In `none` they are the loop's own sleep between events.",
        "",
        "**What a steady rate costs, and what was done about it (issue #13).** Work done once"
        " per batch does not amortise when events arrive one by one: a burst shares it between"
        " hundreds of events, 1,000 events/s in separate loop iterations did not. Each transport"
        " now gathers its wake-ups:",
        "",
        "- Redis Streams: the publisher sent one XADD round trip per event (a flusher wake-up,"
        " a pipeline, one timed read per reply: ~140 µs of the API's CPU per event). It now"
        " sends one round per `WIDELOG_REDIS_LINGER_MS` (20 ms) or per 500 events, and a round"
        " is one `EVALSHA` of a small Lua script that runs the XADDs in order (one stream entry"
        " per event, as before): redis-py spends ~35 µs of Python per pipelined XADD and ~3 µs"
        " per event inside one command. Where Redis refuses scripts, it pipelines as before.",
        "- Kafka: librdkafka sends one produce request per partition batch, so at 1,000"
        " events/s over 6 partitions a 5 ms linger meant a request (and a broker-thread"
        " wake-up and a batch of delivery reports) for about every event. `linger.ms` is now 50"
        " (librdkafka's advice for a producer that is not latency bound), and the poll thread"
        " serves delivery reports every 100 ms instead of waking (and taking the GIL) for each"
        " batch; one producer-wide delivery callback decodes nothing on success.",
        "- Embedded: the consumer's poll waited on the queue and woke for every event; it now"
        " waits for a full batch or its timeout (as librdkafka's `consume(n, timeout)` does)."
        " The embedded rows also carry the incident aggregator, which runs in the API process"
        " with this transport (compare the rows `embedded (incidents off)`; section 6 measures"
        " it against the store).",
        "- Every transport: `set()` caches each key's safe path and checks scalars inline,"
        " `finalize()` avoids ABC checks and rebuilding the sampling record, event ids read"
        " the CSPRNG 4 KiB at a time (section 4).",
        "",
        "The price of lingering: an event waits up to 50 ms (Kafka) or 20 ms (Redis) in this"
        " process's memory before the broker has it, so a hard crash can lose that much more"
        " (a graceful shutdown flushes; nothing else about delivery, the spool or ordering"
        " changed).",
        "",
    ]


def _worker(section: dict[str, Any], charts: Path) -> list[str]:
    ceilings = section["ceiling"]
    bare = section.get("ceiling_no_indexes_1000")
    ceiling_rows = [
        [
            f"insert_many batch {b}, store's indexes",
            c["events_per_s"],
            c["ferretdb_cpu_s"],
            c["client_cpu_s"],
        ]
        for b, c in ceilings.items()
    ]
    if bare:
        ceiling_rows.append(
            [
                "insert_many batch 1000, no indexes",
                bare["events_per_s"],
                bare["ferretdb_cpu_s"],
                bare["client_cpu_s"],
            ]
        )
    rows = [
        [
            r["transport"],
            r["workers"],
            r["batch"],
            "on" if r["incidents"] else "off",
            r["events_per_s"],
            f"{r['vs_ceiling']:.2f}×",
            r["worker_cpu_s"],
            r["ferretdb_cpu_s"],
            r["seconds"],
            r["worker_peak_rss_mb"],
            "yes" if r["complete"] else "NO",
        ]
        for r in section["rows"]
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [
        f"{r['transport'][0].upper()} ×{r['workers']} b{r['batch']}"
        + ("" if r["incidents"] else " -inc")
        for r in section["rows"]
    ]
    ax.bar(labels, [r["events_per_s"] for r in section["rows"]], color="tab:blue")
    for b, c in ceilings.items():
        ax.axhline(c["events_per_s"], linestyle="--", alpha=0.6, label=f"ceiling, batch {b}")
    ax.set_ylabel("events/s stored")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(charts / "worker_drain.png", dpi=110)
    plt.close(fig)
    return [
        "## 3. Worker against the store's ceiling",
        "",
        f"`bench/worker_drain.py`: {section['events']:,} events (avg"
        f" {section['payload_bytes_avg']:.0f} B) pre-filled into a fresh Kafka topic (6"
        " partitions) or Redis stream, drained into FerretDB by `widelog worker` subprocesses;"
        " timed from the first stored document to the last. The ceiling: PyMongo"
        " `insert_many(ordered=False)` of the same decoded documents, same batch size, one"
        " connection, into a collection with the store's indexes. CPU seconds over the drain.",
        "",
        _table(["ceiling", "events/s", "FerretDB CPU s", "client CPU s"], ceiling_rows),
        "",
        _table(
            [
                "transport",
                "workers",
                "batch",
                "incidents",
                "events/s",
                "vs ceiling",
                "worker CPU s",
                "FerretDB CPU s",
                "drain s",
                "worker peak RSS MB",
                "complete",
            ],
            rows,
        ),
        "",
        "![worker drain](benchmarks/worker_drain.png)",
        "",
    ]


def _incidents(section: dict[str, Any]) -> list[str]:
    rows = [
        [
            "on" if r["incidents"] else "off",
            f"{r['history_h']} h",
            f"{r.get('routes', 1):,}",
            f"{r.get('events', section['events']):,}",
            r["events_per_s"],
            f"{r['vs_off']:.2f}×",
            f"{r['vs_insert_many']:.2f}×" if "vs_insert_many" in r else "n/a",
            " / ".join(f"{ms:.0f}" for ms in r["ms_per_batch"]) or "n/a",
            r["worker_cpu_s"],
            r["ferretdb_cpu_s"],
            "yes" if r["complete"] else "NO",
        ]
        for r in section["rows"]
    ]
    return [
        "## 6. Incident aggregation against the store",
        "",
        f"`bench/incident_aggregation.py`: {section['events']:,} events (times spread at 2,000 a"
        " minute, so minutes complete and are judged during the drain) drained from Kafka into"
        f" FerretDB by one `widelog worker`, batches of {section['batch']}, with incidents off and"
        " on, over an empty incident store and over 24 h of incident records (ending where the"
        " drained events begin), and over 2,000 routes (thousands of scopes every minute), also"
        " as a 45-minute backlog (90,000 events, drained faster than the sweeper runs), each"
        " against incidents off with the same events. ms per batch is the mean in each quarter of"
        " the drain: flat means no query grows with the store. The same documents inserted by plain"
        " `insert_many` (one connection, batches of 100, the store's indexes):"
        + (
            f" {section['insert_many']['events_per_s']:,.0f} events/s."
            if "insert_many" in section
            else " not run."
        ),
        "",
        _table(
            [
                "incidents",
                "history",
                "routes",
                "events",
                "events/s",
                "vs off",
                "vs insert_many",
                "ms per batch by quarter",
                "worker CPU s",
                "FerretDB CPU s",
                "complete",
            ],
            rows,
        ),
        "",
    ]


def _hot_path(section: dict[str, Any]) -> list[str]:
    rows = section["rows"]
    floor = next(r for r in rows if r["variant"].startswith("floor"))
    stdlib = next(r for r in rows if "cookbook" in r["variant"])
    table = [
        [
            r["variant"],
            r["p50"],
            r["p99"],
            f"{r['p50'] / floor['p50']:.1f}×",
            f"{r['p50'] / stdlib['p50']:.2f}×",
            r["cpu_us_per_event"],
            f"±{r['cpu_spread_pct'] / 2:.0f}%",
        ]
        for r in rows
    ]
    return [
        "## 4. Hot path next to what users have today",
        "",
        f"`bench/publish_hot_path.py`: {section['events_per_variant']:,} events per variant in"
        f" {section['rounds']} interleaved rounds, same 20-field event. Call time on the request"
        " thread (each call timed) and the whole process's CPU per event (every thread, until"
        " written or delivered; spread = half the range over rounds). The widelog rows' CPU"
        " includes building the event (`begin()` + the 20 `set()` calls) in every widelog row;"
        " the others build a plain dict.",
        "",
        _table(
            [
                "variant",
                "call p50 µs",
                "call p99 µs",
                "p50 vs floor",
                "p50 vs stdlib",
                "process CPU µs/event",
                "CPU spread",
            ],
            table,
        ),
        "",
        "The stdlib and structlog rows are set up as their own documentation recommends"
        " (the logging cookbook's `QueueHandler` + `QueueListener` with a JSON formatter;"
        " structlog's production configuration from its Performance page: filtering bound"
        " logger, cached, orjson into a `BytesLogger`). What `finalize()` does above the floor"
        " (encode + `produce()`): the duration histogram, the error check, the tail-sampling"
        " decision and its counters, the `sampling` record written into the event, and a"
        " nested document to encode. The redaction row adds the secret scrub that"
        " `build_pipeline` turns on by default: a walk over every field of every kept event,"
        " the largest single part of `finalize()` left (issue #13).",
        "",
    ]


def _storage(section: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["sampling"],
            r["per_100k"]["stored"],
            r["error_retention"],
            r["per_100k"]["payload_bytes"] / 2**20,
            r["per_100k"]["ferretdb_storage_size"] / 2**20,
            r["per_100k"]["ferretdb_index_size"] / 2**20,
            r["per_100k"]["sqlite_file_bytes"] / 2**20,
        ]
        for r in section["rows"]
    ]
    scaled = section["requests"] != 100_000
    return [
        "## 5. Storage per 100,000 requests",
        "",
        f"`bench/storage.py`: the reference mix (`synthetic_requests`, {section['distinct']:,}"
        " distinct requests sent through the instrumented app in-process, repeated with fresh ids"
        f" to {section['requests']:,}), sampled by the real `TailSampler`, written by widelog's"
        " own stores. FerretDB: `collStats` storageSize and totalIndexSize; SQLite: file size."
        f" Errors sent: {section['errors_sent']:,}."
        + (
            f" Measured on {section['requests']:,} requests and scaled ×"
            f"{100_000 / section['requests']:g} (fixed overheads scale too)."
            if scaled
            else ""
        ),
        "",
        _table(
            [
                "sampling",
                "events stored",
                "error retention",
                "JSON MiB",
                "FerretDB MiB",
                "FerretDB index MiB",
                "SQLite MiB",
            ],
            rows,
        ),
        "",
    ]


def _replay(section: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{r['replay_rate']:g}/s" if r["replay_rate"] else "unlimited",
            r["baseline"]["p50"],
            r["baseline"]["p99"],
            r["after"]["p50"],
            r["after"]["p99"],
            r["after"]["p99"] / max(r["baseline"]["p99"], 1e-9),
            r["spooled"],
            r["spool_empty_after_s"] if r["spool_empty_after_s"] is not None else "not yet",
            r["failed_requests"] + r.get("shed_requests", 0),
        ]
        for r in section["rows"]
    ]
    return [
        "## 6. Requests while the spool is replayed after a Kafka outage",
        "",
        f"`bench/replay_recovery.py`: {section['rate']:g} req/s open loop; a baseline of"
        f" {section['baseline_s']:g} s, Kafka stopped for {section['outage_s']:g} s (plus its"
        f" restart) with {section['backlog_events']:,} more events left in the spool, then"
        f" {section['after_s']:g} s from the moment Kafka answers, while the API replays.",
        "",
        _table(
            [
                "WIDELOG_REPLAY_RATE",
                "baseline p50 ms",
                "baseline p99 ms",
                "after p50 ms",
                "after p99 ms",
                "after / baseline p99",
                "events spooled",
                "spool empty after s",
                "failed or shed requests",
            ],
            rows,
        ),
        "",
    ]


def write_report(results: dict[str, Any], page: Path, charts: Path) -> None:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/run_all.py): do not edit by hand. -->",
        "Generated by `make bench` (`bench/run_all.py`) on "
        f"{results['started']} in {results.get('elapsed_s', '?')} s; raw numbers in"
        " [`benchmarks/results.json`](benchmarks/results.json). **Do not edit by hand.**",
        "",
    ]
    for rerun in results.get("rerun", []):
        lines += [
            f"> Section(s) {', '.join(rerun['sections'])} re-run alone (`--only`) on"
            f" {rerun['started']} in {rerun['s']} s, after a change; the rest are from the run"
            " above.",
            "",
        ]
    if results.get("quick"):
        lines += [
            "> **Reduced run (`--quick`)**: shorter windows, fewer events and worker"
            " configurations than the full `make bench`.",
            "",
        ]
    lines += [
        f"Machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']},"
        f" Kafka {m['kafka']} (librdkafka {m.get('librdkafka', '?')}), FerretDB"
        f" {m['ferretdb']} (SQLite backend), Redis {m['redis']}; load average at start"
        f" {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
        "The machine is shared and small: **read ratios and spreads, not absolute numbers**; no"
        " number here is a pass/fail threshold. Everything runs on loopback.",
        "",
    ]
    if "latency" in results:
        lines += _latency(results["latency"], charts)
    if "transport" in results:
        lines += _transport(results["transport"])
    if "worker" in results:
        lines += _worker(results["worker"], charts)
    if "hot_path" in results:
        lines += _hot_path(results["hot_path"])
    if "storage" in results:
        lines += _storage(results["storage"])
    if "incidents" in results:
        lines += _incidents(results["incidents"])
    if "replay" in results:
        lines += _replay(results["replay"])
    page.write_text("\n".join(lines).rstrip() + "\n")
