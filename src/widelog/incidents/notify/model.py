"""Outbox records and the delivery rules, as plain data and pure functions (no I/O).

- `OutboxMessage` — one notification to send: (incident, episode, kind[, update number]). Its
  `key` is the idempotency key: the record's `_id` in the outbox, a header and a field of the
  payload. Whoever inserts it first sets `created`; every later insert is ignored.
- `Attempt` — one claim of a message by one worker (`key#n`, first insert wins), with a lease,
  and later the claimant's outcome. A message is never updated in place: FerretDB loses
  concurrent updates of one document, unique inserts are atomic everywhere.

`plan` reads the messages and their attempts and says what to send now, in the order a receiver
must see them (per incident: open, updates, resolve, the next episode), and which stale updates
to skip. `backoff` spaces retries.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from widelog.incidents.model import parse_time

if TYPE_CHECKING:
    from widelog.incidents.model import Transition

MessageKind = Literal["open", "regression", "update", "resolve"]
Outcome = Literal["delivered", "failed", "rejected", "skipped"]
State = Literal["pending", "in_flight", "delivered", "rejected", "skipped", "expired"]
FINAL: Final = frozenset({"delivered", "rejected", "skipped"})
_RANK: Final[Mapping[str, int]] = {"open": 0, "regression": 0, "update": 1, "resolve": 2}


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A notification to deliver; what it says is read from the incident when it is sent."""

    incident_id: str
    episode: int
    kind: MessageKind
    created: dt.datetime  # wall clock of the first enqueue (the first insert wins)
    seq: int = 0  # the update's number within its episode (1, 2, ...); 0 otherwise

    @property
    def key(self) -> str:
        """The idempotency key: `inc_…:2:regression`, `inc_…:1:update:3`."""
        base = f"{self.incident_id}:{self.episode}:{self.kind}"
        return f"{base}:{self.seq}" if self.kind == "update" else base

    @property
    def order(self) -> tuple[int, int, int]:
        """The order a receiver must see one incident's messages in."""
        return (self.episode, _RANK[self.kind], self.seq)

    @classmethod
    def for_step(cls, step: Transition, now: dt.datetime) -> OutboxMessage:
        kind: MessageKind = "resolve"
        if step.kind == "open":
            kind = "open" if step.episode == 1 else "regression"
        return cls(step.incident_id, step.episode, kind, now)

    @classmethod
    def opening(cls, incident_id: str, episode: int, now: dt.datetime) -> OutboxMessage:
        return cls(incident_id, episode, "open" if episode == 1 else "regression", now)


@dataclass(frozen=True, slots=True)
class Attempt:
    """Claim number `number` of a message; the outcome is the claimant's to record."""

    key: str
    number: int  # 1, 2, ...: the claim that inserts `key#number` first owns this attempt
    worker: str
    claimed: dt.datetime
    lease_until: dt.datetime  # after this, an attempt without an outcome counts as abandoned
    outcome: Outcome | None = None
    finished: dt.datetime | None = None
    retry_at: dt.datetime | None = None  # a failed attempt: not before this
    detail: str = ""  # HTTP status or error, for operators

    @property
    def claim_id(self) -> str:
        return f"{self.key}#{self.number}"

    @property
    def outcome_id(self) -> str:
        return f"{self.key}#{self.number}!"

    def claim_doc(self) -> dict[str, Any]:
        """The claim as stored (its `_id` is `claim_id`)."""
        return {
            "key": self.key,
            "n": self.number,
            "worker": self.worker,
            "claimed": self.claimed,
            "lease_until": self.lease_until,
        }

    def outcome_doc(self) -> dict[str, Any]:
        """The outcome as stored (its `_id` is `outcome_id`), written by the claimant only."""
        return {
            "key": self.key,
            "n": self.number,
            "outcome": self.outcome,
            "finished": self.finished,
            "retry_at": self.retry_at,
            "detail": self.detail,
        }


def merge_attempts(
    claims: Iterable[Mapping[str, Any]], outcomes: Iterable[Mapping[str, Any]]
) -> dict[str, list[Attempt]]:
    """Stored claims with their outcomes, by key, in claim order."""
    done = {(str(o["key"]), int(o["n"])): o for o in outcomes}
    result: dict[str, list[Attempt]] = {}
    for claim in sorted(claims, key=lambda c: (str(c["key"]), int(c["n"]))):
        key, number = str(claim["key"]), int(claim["n"])
        outcome = done.get((key, number), {})
        result.setdefault(key, []).append(
            Attempt(
                key=key,
                number=number,
                worker=str(claim["worker"]),
                claimed=stored_time(claim["claimed"]),
                lease_until=stored_time(claim["lease_until"]),
                outcome=outcome.get("outcome"),
                finished=parse_time(outcome.get("finished")),
                retry_at=parse_time(outcome.get("retry_at")),
                detail=str(outcome.get("detail", "")),
            )
        )
    return result


def stored_time(value: object) -> dt.datetime:
    moment = parse_time(value)
    if moment is None:
        raise ValueError(f"not a stored time: {value!r}")
    return moment


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    attempts: int  # claims made so far
    next_at: dt.datetime | None = None  # pending: when it may be claimed


def status_of(
    message: OutboxMessage, attempts: Sequence[Attempt], now: dt.datetime, max_age: dt.timedelta
) -> Status:
    """Where one message stands, from its attempts alone (every worker computes the same)."""
    done = next((a for a in attempts if a.outcome in FINAL), None)
    if done is not None and done.outcome is not None:
        state: State = "delivered"
        if done.outcome != "delivered":
            state = "rejected" if done.outcome == "rejected" else "skipped"
        return Status(state, len(attempts))
    latest = max(attempts, key=lambda a: a.number, default=None)
    if latest is not None and latest.outcome is None and latest.lease_until > now:
        return Status("in_flight", len(attempts))
    if message.created < now - max_age:
        return Status("expired", len(attempts))  # given up: too old to be worth saying
    if latest is None:
        return Status("pending", 0, message.created)
    next_at = latest.retry_at if latest.outcome == "failed" else latest.lease_until
    return Status("pending", len(attempts), next_at or now)


@dataclass(slots=True)
class Plan:
    send: list[tuple[OutboxMessage, int]] = field(default_factory=list)  # (message, attempt no.)
    skip: list[tuple[OutboxMessage, int, str]] = field(default_factory=list)  # ... and why
    states: dict[str, State] = field(default_factory=dict)  # by key

    @property
    def pending(self) -> int:
        return sum(1 for s in self.states.values() if s in {"pending", "in_flight"})


def plan(
    messages: Iterable[OutboxMessage],
    attempts: Mapping[str, Sequence[Attempt]],
    now: dt.datetime,
    max_age: dt.timedelta,
) -> Plan:
    """What to send now: per incident, the first unfinished message once it is due.

    A later message of an incident waits for the earlier ones (a receiver sees open before
    resolve), unless the earlier one expired. An update with anything after it is stale: it is
    skipped rather than sent late (a newer update or the resolve says more).
    """
    result = Plan()
    by_incident: dict[str, list[OutboxMessage]] = {}
    for message in messages:
        by_incident.setdefault(message.incident_id, []).append(message)
    for queue in by_incident.values():
        queue.sort(key=lambda m: m.order)
        blocked = False
        for index, message in enumerate(queue):
            status = status_of(message, attempts.get(message.key, ()), now, max_age)
            result.states[message.key] = status.state
            if status.state not in {"pending", "in_flight"}:
                continue
            number = status.attempts + 1
            if message.kind == "update" and index + 1 < len(queue):
                if status.state == "pending":
                    result.skip.append((message, number, "superseded by a later message"))
                continue
            if blocked:
                continue
            blocked = True
            if status.state == "pending" and status.next_at is not None and status.next_at <= now:
                result.send.append((message, number))
    return result


def backoff(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...) before the next one.

    Doubling from `base_s`, capped at `cap_s`, with "equal jitter" (half fixed, half random) so
    workers retrying at the same moment spread out.
    """
    ceiling = float(min(cap_s, base_s * 2.0 ** min(attempt - 1, 30)))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter
