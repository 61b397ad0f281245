"""The background sender: enqueue on each recorded step, deliver pending messages, retry.

Nothing here runs on the consumer's path except `on_recorded`, one insert that never raises (a
failed insert is logged and repaired by `reconcile`). Delivery, retries and a slow or dead
receiver stay in `run`, a task of its own. Every worker may run one: claims (`key#n`, first
insert wins) with a lease keep two workers from sending one message at once, and an abandoned
claim is taken over when its lease ends, so a receiver can get a message twice (at-least-once;
it deduplicates by the idempotency key), never zero times while it is younger than `max_age`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from widelog.incidents.model import ordered, to_ms
from widelog.incidents.notify.model import FINAL, Attempt, OutboxMessage, backoff, plan
from widelog.incidents.notify.ports import DeliveryError
from widelog.incidents.queries import get_incident

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from widelog.incidents.model import Incident, Transition
    from widelog.incidents.notify.model import Outcome, Plan
    from widelog.incidents.notify.ports import NotificationOutbox, Notifier
    from widelog.incidents.ports import IncidentStore

log = logging.getLogger("widelog.incidents.notify")
STATES: Final = ("pending", "in_flight", "delivered", "rejected", "skipped", "expired")
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class SenderStats:
    """Counts of this process (`pending` and `expired`: the whole outbox, at the last pass)."""

    enqueued: int = 0  # messages this process inserted first
    sent: int = 0  # delivered (2xx)
    failed: int = 0  # attempts that failed and will be retried
    rejected: int = 0  # messages the receiver refused for good (4xx): not retried
    skipped: int = 0  # stale updates, incidents gone
    enqueue_failures: int = 0  # inserts that failed on the consumer's path (reconcile repairs)
    pending: int = 0  # not delivered yet, every worker's, within max_age
    expired: int = 0  # given up: older than max_age and never delivered
    last_error: str = ""

    def as_dict(self) -> dict[str, int | str]:
        return dataclasses.asdict(self)


class OutboxSender:
    """Delivers the outbox's messages through a `Notifier`; `run` until `stop`."""

    def __init__(
        self,
        outbox: NotificationOutbox,
        notifier: Notifier,
        incidents: IncidentStore,
        *,
        worker: str,
        repeat_interval_s: float = 4 * 3600,
        max_age_s: float = 24 * 3600,
        lease_s: float = 30.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        poll_s: float = 2.0,
        reconcile_s: float = 30.0,
        concurrency: int = 4,
        clock: Clock = _utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.notifier = notifier
        self._incidents = incidents
        self._worker = worker
        self._repeat = dt.timedelta(seconds=repeat_interval_s) if repeat_interval_s else None
        self.max_age = dt.timedelta(seconds=max_age_s)
        self._lease = dt.timedelta(seconds=lease_s)
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._poll_s = poll_s
        self._reconcile_every = dt.timedelta(seconds=reconcile_s)
        self._next_reconcile: dt.datetime | None = None
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._rng = rng or random.Random()
        self._final: dict[str, Attempt] = {}  # finished messages: never read again
        self._wake = asyncio.Event()
        self.stats = SenderStats()

    def _now(self) -> dt.datetime:
        return to_ms(self._clock())

    async def on_recorded(self, step: Transition) -> None:
        """The aggregator's hook: enqueue the step's message. Never raises (see the module)."""
        try:
            new = await self.outbox.enqueue([OutboxMessage.for_step(step, self._now())])
        except Exception as exc:  # noqa: BLE001 - the consumer must not wait on notifications
            self.stats.enqueue_failures += 1
            log.warning("notification for %s not enqueued (reconcile retries): %r", step, exc)
            return
        self.stats.enqueued += new
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`; a failing pass (the store away) is logged and tried again."""
        log.info("notifications: delivering incident messages to %s", self.notifier.target)
        failing = 0  # passes failed in a row: an outage is logged once, and its end
        while not stop.is_set():
            self._wake.clear()  # an enqueue from now on wakes the wait below
            busy = False
            try:
                busy = await self.run_once()
            except Exception:
                failing += 1
                if failing == 1:
                    log.exception("notifications: a delivery pass failed (retrying quietly)")
            else:
                if failing:
                    log.warning("notifications: passes work again after %d failed", failing)
                failing = 0
            if busy:
                continue  # the next message of an incident may be due right away
            waiters = [asyncio.ensure_future(e.wait()) for e in (stop, self._wake)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED), self._poll_s
                )
            for waiter in waiters:
                waiter.cancel()

    async def run_once(self, now: dt.datetime | None = None) -> bool:
        """One pass: reconcile when due, skip stale updates, send what is due.

        True when a message was finished, so the next one of its incident may be due now.
        """
        now = now or self._now()
        if self._next_reconcile is None or now >= self._next_reconcile:
            await self.reconcile(now)
            self._next_reconcile = now + self._reconcile_every
        planned = await self._plan(now)
        for message, number, why in planned.skip:
            await self._skip(message, number, why, now)
        finished = await asyncio.gather(*(self._deliver(m, n) for m, n in planned.send))
        self.stats.pending = max(0, planned.pending - len(planned.skip) - sum(finished))
        return any(finished)

    async def _plan(self, now: dt.datetime) -> Plan:
        messages = await self.outbox.messages(since=now - self.max_age)
        open_keys = [m.key for m in messages if m.key not in self._final]
        attempts: dict[str, Sequence[Attempt]] = dict(await self.outbox.attempts(open_keys))
        attempts.update({key: [a] for key, a in self._final.items()})
        planned = plan(messages, attempts, now, self.max_age)
        current = {m.key for m in messages}
        self._final = {k: a for k, a in self._final.items() if k in current}  # bounded
        for key, tries in attempts.items():
            done = next((a for a in tries if a.outcome in FINAL), None)
            if done is not None and key in current:
                self._final[key] = done
        self.stats.pending = planned.pending
        self.stats.expired = sum(1 for s in planned.states.values() if s == "expired")
        return planned

    async def reconcile(self, now: dt.datetime | None = None) -> int:
        """Enqueue what the lifecycle calls for and the outbox lacks; return how many were new.

        - an open incident whose opening has no message (its hook's insert failed, or
          notifications were turned on while it was open): announce it;
        - an open incident whose opening went out `k` repeat intervals ago: update `k`;
        - a resolved episode that was announced but whose resolve has no message.
        """
        now = now or self._now()
        latest = [ordered(steps)[-1] for steps in (await self._incidents.transitions()).values()]
        latest = [s for s in latest if s.kind == "open" or s.at >= now - self.max_age]
        openings = {
            s.incident_id: OutboxMessage.opening(s.incident_id, s.episode, now) for s in latest
        }
        found = await self.outbox.messages(keys=[m.key for m in openings.values()])
        heads = {m.incident_id: m for m in found}
        wanted: list[OutboxMessage] = []
        for step in latest:
            head = heads.get(step.incident_id)
            if step.kind == "resolve":
                if head is not None and head.episode == step.episode:
                    wanted.append(OutboxMessage.for_step(step, now))
            elif head is None:
                if step.at >= now - self.max_age:
                    wanted.append(openings[step.incident_id])
            elif self._repeat is not None:
                seq = int((now - head.created) / self._repeat)
                if seq >= 1:
                    wanted.append(OutboxMessage(step.incident_id, step.episode, "update", now, seq))
        new = await self.outbox.enqueue(wanted) if wanted else 0
        self.stats.enqueued += new
        return new

    async def _claim(self, message: OutboxMessage, number: int) -> Attempt | None:
        now = self._now()
        attempt = Attempt(message.key, number, self._worker, now, now + self._lease)
        return attempt if await self.outbox.claim(attempt) else None

    async def _skip(self, message: OutboxMessage, number: int, why: str, now: dt.datetime) -> None:
        attempt = await self._claim(message, number)
        if attempt is not None:
            await self._finish(attempt, "skipped", why)
            log.info("notification %s skipped: %s", message.key, why)

    async def _deliver(self, message: OutboxMessage, number: int) -> bool:
        """Claim and send one message; True once it is finished (delivered, rejected, skipped)."""
        async with self._limit:
            attempt = await self._claim(message, number)
            if attempt is None:
                return False  # another worker has it
            try:
                # Bounded below the lease, so no other worker takes over while this one sends.
                timeout = self._lease.total_seconds() / 2
                incident = await asyncio.wait_for(self._incident(message), timeout)
                if isinstance(incident, str):
                    await self._finish(attempt, "skipped", incident)
                    return True
                detail = await asyncio.wait_for(self.notifier.send(message, incident), timeout)
            except DeliveryError as exc:
                await self._failed(attempt, exc.detail, retry=exc.retry)
                return not exc.retry
            except Exception as exc:  # noqa: BLE001 - a timeout, the store away: retried later
                await self._failed(attempt, repr(exc)[:200], retry=True)
                return False
            await self._finish(attempt, "delivered", detail)
            self.stats.sent += 1
            log.info(
                "Notification %s delivered to %s (%s, attempt %d)",
                message.key,
                self.notifier.target,
                detail,
                number,
            )
            return True

    async def _incident(self, message: OutboxMessage) -> Incident | str:
        """The incident to describe, or why the message is no longer worth sending."""
        incident = await get_incident(self._incidents, message.incident_id)
        if incident is None:
            return "the incident is gone (a rebuild cleared it)"
        if message.kind == "update" and (
            incident.episodes[-1].number != message.episode or incident.status != "open"
        ):
            return "the episode resolved before the update went out"
        return incident

    async def _failed(self, attempt: Attempt, detail: str, *, retry: bool) -> None:
        self.stats.last_error = f"{attempt.key}: {detail}"
        if not retry:
            self.stats.rejected += 1
            log.error(
                "Notification %s rejected by %s (%s): not retried",
                attempt.key,
                self.notifier.target,
                detail,
            )
            await self._finish(attempt, "rejected", detail)
            return
        self.stats.failed += 1
        delay = backoff(
            attempt.number, base_s=self._backoff[0], cap_s=self._backoff[1], rng=self._rng
        )
        log.warning(
            "Notification %s to %s failed (%s, attempt %d), retrying in %.1fs",
            attempt.key,
            self.notifier.target,
            detail,
            attempt.number,
            delay,
        )
        retry_at = self._now() + dt.timedelta(seconds=delay)
        await self._finish(attempt, "failed", detail, retry_at=retry_at)

    async def _finish(
        self,
        attempt: Attempt,
        outcome: Outcome,
        detail: str,
        *,
        retry_at: dt.datetime | None = None,
    ) -> None:
        done = dataclasses.replace(
            attempt, outcome=outcome, finished=self._now(), retry_at=retry_at, detail=detail
        )
        try:
            await self.outbox.finish(done)
        except Exception as exc:  # noqa: BLE001 - the lease runs out and the message goes again
            log.warning("outcome of %s not recorded (it will be retried): %r", attempt.key, exc)
            return
        if outcome in FINAL:
            self._final[attempt.key] = done
        if outcome == "skipped":
            self.stats.skipped += 1

    async def close(self) -> None:
        await self.notifier.close()
        await self.outbox.close()


async def outbox_view(
    outbox: NotificationOutbox, *, max_age: dt.timedelta, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Every message within `max_age`, oldest first: its state and its latest attempt."""
    now = now or _utcnow()
    messages = sorted(await outbox.messages(since=now - max_age), key=lambda m: (m.created, m.key))
    attempts = await outbox.attempts([m.key for m in messages])
    states = plan(messages, attempts, now, max_age).states
    rows = []
    for message in messages:
        tries = attempts.get(message.key, [])
        latest = tries[-1] if tries else None
        rows.append(
            {
                "key": message.key,
                "incident": message.incident_id,
                "kind": message.kind,
                "created": message.created.isoformat(timespec="milliseconds"),
                "state": states[message.key],
                "attempts": len(tries),
                "last": None
                if latest is None
                else {
                    "worker": latest.worker,
                    "outcome": latest.outcome,
                    "detail": latest.detail,
                    "retry_at": None if latest.retry_at is None else latest.retry_at.isoformat(),
                },
            }
        )
    return rows


async def outbox_counts(
    outbox: NotificationOutbox, *, max_age: dt.timedelta, now: dt.datetime | None = None
) -> Mapping[str, int]:
    """The whole outbox's messages within `max_age` by state (every worker's), for /v1/infra."""
    counts = dict.fromkeys(STATES, 0)
    for row in await outbox_view(outbox, max_age=max_age, now=now):
        counts[row["state"]] += 1
    return counts
