"""The soak's outcome: what was sent, injected and stored, its verdict, and `docs/soak.md`."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

MB = 1024 * 1024
LONG_LIVED = ("api-0#1", "worker-0#1")  # never signalled by the soak


@dataclass
class Sent:
    api: str  # the API incarnation the request went to (`api-1#2`)
    status: int | None = None  # answered: the HTTP status
    error: str = ""  # not answered: the transport error's class
    at: float = 0.0  # monotonic time of the answer or the error


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the traffic started
    seconds: float  # from the first signal until the service or process was back
    detail: str = ""


@dataclass
class Memory:
    """One process (`api-1#2`: the second process of slot `api-1`), how it ended, its RSS."""

    name: str
    ended_by: str = ""  # the signal the soak sent, or "died on its own"
    exit_code: int | None = None
    rss_start: int | None = None  # bytes (VmRSS): first sample once warmed up
    rss_end: int | None = None
    rss_peak: int = 0
    anon_start: int | None = None  # bytes (RssAnon): the process's own memory, what leaks
    anon_end: int | None = None


@dataclass
class Result:
    seed: int
    rate: float
    traffic_s: float
    sent: dict[str, Sent]
    faults: list[Fault]
    kills: dict[str, float]  # API incarnation → monotonic time of its SIGKILL
    kill_ages: dict[str, float]  # API incarnation → seconds it had served when SIGKILLed
    kill_window_s: float  # what a SIGKILLed producer may still hold: message timeout + 1 s
    stored: dict[str, int]  # request id → stored events with it
    spool: list[str]  # files left in the spool directory
    lag: int | None  # the group's lag at the end (None: could not be read)
    dead_letters: int  # payloads the workers set aside (none expected: all are well formed)
    settle_s: float
    settled: bool  # spool empty, lag 0 and every answered request stored (or quiet) in time
    processes: list[Memory]
    rss_growth_mb: float
    behind: int = 0
    workdir: str = ""
    logged: dict[str, int] = field(default_factory=dict)  # log lines about the faults, counted
    finished: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    )

    @property
    def answered(self) -> set[str]:
        return {r for r, s in self.sent.items() if s.status is not None}

    @property
    def duplicates(self) -> dict[str, int]:
        return {r: n for r, n in self.stored.items() if n > 1}

    @property
    def lost(self) -> set[str]:
        return self.answered - set(self.stored)

    def in_kill_window(self, request_id: str) -> bool:
        """Answered by an API process at most `kill_window_s` before the soak SIGKILLed it.

        The client notes the answer when its task runs, which may be after the kill: a process
        that answered was alive, so only the lower bound says anything.
        """
        sent = self.sent[request_id]
        killed = self.kills.get(sent.api)
        return killed is not None and sent.at >= killed - self.kill_window_s

    def growth_mb(self, memory: Memory) -> float | None:
        """Anonymous RSS growth: file-backed pages come and go with the kernel's reclaim."""
        if memory.anon_start is None or memory.anon_end is None:
            return None
        return (memory.anon_end - memory.anon_start) / MB

    def problems(self) -> list[str]:
        """Everything that breaks the promise; empty when the soak passed."""
        problems = []
        if not self.faults:
            problems.append("no fault was injected")
        if not self.answered:
            problems.append("no request was answered")
        if not self.settled:
            problems.append(
                f"did not settle in {self.settle_s:.0f} s (lag {self.lag}, spool {len(self.spool)}"
                f" files, {len(self.lost)} answered requests not stored yet)"
            )
        if self.duplicates:
            problems.append(f"{len(self.duplicates)} request ids stored more than once")
        if self.lost and self.settled:  # a SIGKILLed API's too: its journal is taken over
            problems.append(f"{len(self.lost)} answered requests lost: {sorted(self.lost)[:5]}")
        foreign = set(self.stored) - set(self.sent)
        if foreign:
            problems.append(f"{len(foreign)} stored request ids never sent: {sorted(foreign)[:5]}")
        if self.spool:
            problems.append(f"spool not empty: {self.spool[:5]}")
        if self.dead_letters:
            problems.append(f"{self.dead_letters} dead letters")
        if self.lag != 0:
            problems.append(f"consumer lag at the end: {self.lag}")
        return problems + self._process_problems()

    def _process_problems(self) -> list[str]:
        problems = []
        for memory in self.processes:
            if memory.ended_by == "died on its own":
                problems.append(f"{memory.name} died on its own (exit {memory.exit_code})")
            if memory.ended_by == "SIGTERM" and memory.exit_code not in {0, -15}:
                problems.append(f"{memory.name} exited {memory.exit_code} on SIGTERM")
            growth = self.growth_mb(memory)
            if memory.name in LONG_LIVED and (growth is None or growth >= self.rss_growth_mb):
                problems.append(
                    f"{memory.name} anonymous RSS grew {growth} MB (bound {self.rss_growth_mb})"
                )
        return problems


def render(result: Result, *, command: str) -> str:
    """`docs/soak.md`: the numbers of one run, and what they mean."""
    answered = result.answered
    sent = result.sent.values()
    statuses = collections.Counter(s.status for s in sent if s.status is not None)
    errors = collections.Counter(s.error for s in sent if s.status is None)
    unanswered_stored = (set(result.sent) - answered) & set(result.stored)
    in_window = [r for r in answered if result.in_kill_window(r)]
    by_kind: dict[str, list[Fault]] = collections.defaultdict(list)
    for fault in result.faults:
        by_kind[fault.kind].append(fault)
    problems = result.problems()
    lines = [
        "# Soak: steady traffic under injected faults",
        "",
        f"Generated by `{command}` (`scripts/soak.py`) on {result.finished}; do not edit by hand.",
        f"Seed **{result.seed}** (`--seed {result.seed}` repeats the fault schedule).",
        "",
        f"**Verdict: {'PASS' if not problems else 'FAIL'}**"
        + ("" if not problems else ": " + "; ".join(problems)),
        "",
        "## Faults injected",
        "",
        "| kind | count | seconds away (total) | what |",
        "|---|---:|---:|---|",
    ]
    for kind, faults in sorted(by_kind.items()):
        details = sorted({f.detail.split(": ", 1)[-1] for f in faults})
        seconds = sum(f.seconds for f in faults)
        lines.append(f"| {kind} | {len(faults)} | {seconds:.1f} | {'; '.join(details)} |")
    lines += [
        f"| **all** | **{len(result.faults)}** | {sum(f.seconds for f in result.faults):.1f} | |",
        "",
        "Timeline (s since the traffic started): "
        + ", ".join(f"{f.at:.0f} {f.kind} ({f.seconds:.1f} s)" for f in result.faults),
        "",
        "## Requests and events",
        "",
        "| | |",
        "|---|---:|",
        f"| requests sent in {result.traffic_s:.0f} s ({len(sent) / result.traffic_s:.1f}/s;"
        f" target {result.rate:g}/s, sender behind schedule {result.behind} times) | {len(sent)} |",
        f"| answered (any HTTP status) | {len(answered)} |",
        "| by status | " + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())) + " |",
        "| not answered (transport error) | "
        + (", ".join(f"{e}: {n}" for e, n in sorted(errors.items())) or "0")
        + " |",
        f"| events expected (one per answered request) | {len(answered)} |",
        f"| answered requests stored | {len(answered & set(result.stored))} |",
        f"| events stored in all (request ids of this run) | {sum(result.stored.values())} |",
        f"| of which not answered (cut off, handled anyway) | {len(unanswered_stored)} |",
        f"| duplicates (request ids stored more than once) | {len(result.duplicates)} |",
        f"| lost (answered, not stored) | {len(result.lost)} |",
        f"| of which answered ≤ {result.kill_window_s:g} s before their API was SIGKILLed"
        f" | {len(result.lost & set(in_window))} (of {len(in_window)} answered in such windows) |",
        f"| spool files left | {len(result.spool)} |",
        f"| consumer lag at the end | {result.lag} |",
        f"| dead letters | {result.dead_letters} |",
        f"| settling took | {result.settle_s:.1f} s"
        f"{'' if result.settled else ' (gave up: the bound)'} |",
        "",
        "## Memory (RSS) per process",
        "",
        f"Start: the first sample once a process had served traffic for the warm-up. Bound for the"
        f" long-lived ones ({', '.join(LONG_LIVED)}): anonymous RSS growth"
        f" < {result.rss_growth_mb:g} MB.",
        "",
        "| process | ended by | exit | RSS start MB | RSS end MB | RSS peak MB"
        " | anon start MB | anon end MB | anon growth MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for memory in result.processes:
        growth = result.growth_mb(memory)
        lines.append(
            f"| {memory.name}{' (long-lived)' if memory.name in LONG_LIVED else ''}"
            f" | {memory.ended_by} | {memory.exit_code} | {_mb(memory.rss_start)}"
            f" | {_mb(memory.rss_end)} | {_mb(memory.rss_peak)} | {_mb(memory.anon_start)}"
            f" | {_mb(memory.anon_end)} | {'' if growth is None else f'{growth:+.1f}'} |"
        )
    if result.kills:
        lines += [
            "",
            "## The SIGKILLed API processes",
            "",
            "What each one answered in the window before its kill (what librdkafka may still have"
            " held: its in-flight journal, taken over by the next API on the spool directory, must"
            " bring all of it to the store), and how much of it was lost.",
            "",
            "| process | had served for | answered in the window | lost |",
            "|---|---:|---:|---:|",
        ]
        for name in result.kills:
            window = {r for r in answered if result.sent[r].api == name} & set(in_window)
            lost = window & result.lost
            age = result.kill_ages.get(name, 0.0)
            lines.append(f"| {name} | {age:.1f} s | {len(window)} | {len(lost)} |")
    lines += ["", "## What the processes logged", "", "| line | count |", "|---|---:|"]
    lines += [f"| {what} | {count} |" for what, count in result.logged.items()]
    lines += ["", HOW_TO_READ]
    return "\n".join(lines) + "\n"


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / MB:.1f}"


HOW_TO_READ = """## How it runs and how to read it

`make soak` (`python -m scripts.soak`, options `--duration --rate --faults --seed`;
`SOAK_ARGS='--duration 600'`) starts two `widelog serve` processes (`api-0`, `api-1`: Kafka
transport, Redis caches, every event kept by the sampler, one spool directory shared) and two
`widelog worker` processes (`worker-0`, `worker-1`, one consumer group, 4 partitions, FerretDB) on
the services `scripts/services.sh` runs, each run with its own topic, group, database and cache
namespace. An asyncio client sends chats at a fixed rate, open loop, round-robin to the APIs that
are up, each with its own `x-request-id`: 80 % new messages, 10 % repeated questions (answer
cache), 5 % `[fail:LLM_UNAVAILABLE]` (502), 5 % without a message (422). After a warm-up, faults
follow one at a time with a few seconds between, drawn from a seeded shuffled deck (every kind
once before any twice): `kafka-freeze` (SIGSTOP 5–15 s, SIGCONT), `kafka-restart`
(`scripts/services.sh stop kafka`, `start kafka`), `ferretdb-freeze` (SIGSTOP 5–15 s),
`redis-restart` (stop, start: the caches come back empty), `worker-kill` (SIGKILL `worker-1`,
start a new one), `api-term` / `api-kill` (SIGTERM / SIGKILL `api-1`, start a new one on the same
port). `api-0` and `worker-0` are never signalled. Then the traffic stops and the soak waits, at
most 300 s, until the spool directory is empty, the group's lag is 0 and every answered request is
stored (or, drained, nothing changed for 5 s), and counts the store by request id.

- **answered**: the client got an HTTP response, whatever the status. Its event must be stored
  exactly once.
- **not answered**: a transport error: `ConnectError` (the API process was gone: never handled),
  or a connection cut by a dying API (`RemoteProtocolError`, `ReadError`: the request may or may
  not have been handled). Never counted as lost; if stored, stored at most once.
- **lost**: answered and not stored; any loss fails the soak, a SIGKILLed API's too. What its
  producer still held in memory (events it answered at most `WIDELOG_KAFKA_MESSAGE_TIMEOUT_MS`,
  3 s here, + 1 s before the kill, not yet acknowledged by Kafka nor spooled) is in its in-flight
  journal, which the API started after it on the same spool directory takes over and replays
  (README, "Where durability starts"); those answered in such windows are shown apart.
- **duplicates**: request ids with more than one stored event. Re-deliveries, replays and worker
  restarts re-send the same `event_id`, which the store keeps once; a duplicate here fails it.
- **spool**, **lag**: files left in the spool directory (segments not yet replayed, records set
  aside as refused) and the consumer group's lag, both 0 at the end.
- **memory**: `VmRSS` and `RssAnon` (`/proc/PID/status`) sampled every second; start = the first
  sample once the process had been ready (answering, or consuming) and under traffic for the
  warm-up. A long-lived process's anonymous RSS (its own allocations: what a leak grows) must
  end less than 50 MB above its start; `VmRSS` also counts the file-backed pages of shared
  libraries, which the kernel may drop and read back (these machines run DAMON `pageout`), so
  it is shown, not judged. The restarted processes are listed too (a short life: little to say).

The short variant (`SHORT` in `scripts/soak.py`: each fault kind but `kafka-restart` once, in a
shuffled order, 3–6 s freezes, 40 req/s, about a minute on a quiet machine)
runs in `make test` as `tests/integration/test_soak_live.py`. The soak freezes and restarts the
services it is given: to keep a set of your own, run it with other ports and state, e.g.
`WIDELOG_SERVICES_STATE=/tmp/svc-soak WIDELOG_SERVICES_REDIS_PORT=16379
WIDELOG_SERVICES_KAFKA_PORT=19092 WIDELOG_SERVICES_KAFKA_CONTROLLER_PORT=19093
WIDELOG_SERVICES_KAFKA_SASL_PORT= WIDELOG_SERVICES_MONGO_PORT=37017 make soak`.
"""
