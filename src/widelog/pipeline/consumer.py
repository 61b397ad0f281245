"""The consumer: reads a transport in batches and stores them. Transport- and store-agnostic.

At-least-once: a batch is committed to its source only after the store has it, so a crash
re-delivers and the idempotent store (`event_id` is the key) turns re-delivery into duplicates
that are counted, not stored twice. A store outage never drops or commits anything: the batch is
retried with capped exponential backoff for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from widelog.events.event import UndecodableEventError, decode
from widelog.histogram import BATCH_BOUNDS, Histogram
from widelog.pipeline.ports import DeadLetter, Message, WriteResult
from widelog.sampling.counts import CountRecord, is_count_record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from widelog.pipeline.ports import EventSource, EventStore, RequestCountStore

_T = TypeVar("_T")
log = logging.getLogger("widelog.consumer")


@dataclass(slots=True)
class ConsumerStats:
    """What the consumer did; `/metrics`, `/v1/infra` and the worker's probe port read these."""

    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BOUNDS))
    write_ms: Histogram = field(default_factory=Histogram)  # a batch, poll to commit
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0  # duplicates of a stored event_id with other content, kept apart
    dead_lettered: int = 0
    write_failures: int = 0
    poll_failures: int = 0
    on_stored_failures: int = 0  # batches committed without `on_stored` (it kept failing)
    count_records: int = 0  # count records stored (re-sends included: they replace)
    count_records_ignored: int = 0  # count records received with no count store to keep them
    last_batch_ms: float = 0.0


class BatchConsumer:
    """Poll → decode → `write_batch` → dead-letter the rejects → commit, one batch at a time.

    `on_stored` (e.g. the incident aggregator) gets the events a batch stored for the first time
    — not re-deliveries, not rejects — after the write and before the commit, retried like the
    write but only `on_stored_attempts` times: the events are stored, and what is derived from
    them must never hold the source back (a hook that fails on some event would otherwise stop
    every partition for good). After that the batch is committed uncounted, with an error and
    `stats.on_stored_failures`; `widelog incidents rebuild` recounts from the store. A crash
    between the write and the hook also leaves events uncounted (their re-delivery is a
    duplicate): counts downstream are at-most-once, the events themselves at-least-once.
    `on_counts` gets the count records a batch brought, once stored, on the same terms.
    """

    def __init__(
        self,
        source: EventSource,
        store: EventStore,
        *,
        source_name: str,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        write_attempts: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        shutdown_timeout: float = 10.0,
        drain_on_stop: bool = True,
        idle_poll: float = 0.1,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_stored: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
        on_stored_attempts: int = 8,
        on_counts: Callable[[list[CountRecord]], Awaitable[None]] | None = None,
        keepalive_interval: float = 1.0,
        counts: RequestCountStore | None = None,
    ) -> None:
        self._source = source
        self._store = store
        self._source_name = source_name
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._write_attempts = write_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._shutdown_timeout = shutdown_timeout
        self._drain_on_stop = drain_on_stop
        self._idle_poll = idle_poll
        self._sleep = sleep
        self._on_stored = on_stored
        self._on_stored_attempts = on_stored_attempts
        self._on_counts = on_counts
        self._keepalive_interval = keepalive_interval
        self._counts = counts
        self.stats = ConsumerStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish the batch in hand and return.

        With `drain_on_stop` (the in-process queue, which dies with the process) it first empties
        the source; a durable source keeps its backlog for the next consumer instead.
        """
        while True:
            batch = await self._collect(stop)
            if batch:
                await self.process(batch, stop)
            if stop.is_set() and (not batch or not self._drain_on_stop):
                return

    async def _collect(self, stop: asyncio.Event) -> list[Message]:
        """Up to `batch_size` messages, returned at most `flush_interval` s after the first."""
        batch: list[Message] = []
        deadline: float | None = None
        while len(batch) < self._batch_size:
            if stop.is_set():
                timeout = 0.0
            elif deadline is None:
                timeout = self._idle_poll
            else:
                timeout = min(self._idle_poll, deadline - time.monotonic())
            messages = await self._poll(self._batch_size - len(batch), max(timeout, 0.0))
            if messages and deadline is None:
                deadline = time.monotonic() + self._flush_interval
            batch.extend(messages)
            if not batch and not stop.is_set():
                continue
            if (not messages and stop.is_set()) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                break
        return batch

    async def _poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Poll; a transport outage is logged and waited out, never fatal to the consumer."""
        try:
            messages = await self._source.poll(max_messages, timeout)
        except Exception as exc:  # noqa: BLE001 - the broker may come back; the worker must stay
            self.stats.poll_failures += 1
            if self.stats.poll_failures % 20 == 1:
                log.warning("poll failed (%d so far), retrying: %r", self.stats.poll_failures, exc)
            await self._sleep(min(self._max_backoff, 1.0))
            return []
        return messages

    def _sort(
        self, batch: Sequence[Message]
    ) -> tuple[list[dict[str, Any]], list[Message], list[DeadLetter], list[CountRecord]]:
        """Decode a batch into events (with their messages), dead letters and count records."""
        docs: list[dict[str, Any]] = []
        positions: list[Message] = []
        letters: list[DeadLetter] = []
        records: list[CountRecord] = []
        for message in batch:
            try:
                doc = decode(message.payload)
                if is_count_record(doc):
                    # Not an event: never sampled, never counted as one; kept in its own place.
                    records.append(CountRecord.from_doc(doc))
                    continue
                if "event_id" not in doc:
                    raise UndecodableEventError(f"unknown record kind {doc.get('record')!r}")  # noqa: TRY301
                docs.append(doc)
                positions.append(message)
            except ValueError as exc:  # UndecodableEventError, or a malformed count record
                letters.append(self._dead_letter(message, str(exc)))
            except Exception as exc:  # logged: one message must never stop the worker
                log.exception("decoding a message failed unexpectedly; dead-lettering it")
                letters.append(self._dead_letter(message, f"decode failed: {exc!r}"))
        return docs, positions, letters, records

    async def process(self, batch: Sequence[Message], stop: asyncio.Event | None = None) -> None:
        started = time.perf_counter()
        docs, positions, letters, records = self._sort(batch)

        if records and not await self._store_counts(records, stop):
            return  # shutting down with the store still down: leave the batch uncommitted

        results: list[WriteResult] = []

        async def write() -> None:
            results.append(await self._store.write_batch(docs))

        if not await self._retry(write, "write_batch", stop):
            return  # shutting down with the store still down: leave the batch uncommitted
        result = results[-1]
        letters += [self._dead_letter(positions[i], reason) for i, reason in result.rejected]
        if self._on_stored is not None:
            skip = (
                set(result.duplicate_indexes)
                | set(result.conflict_indexes)
                | {i for i, _ in result.rejected}
            )
            new = [doc for i, doc in enumerate(docs) if i not in skip]
            await self._derive(self._on_stored, new, "on_stored", stop)
        if self._on_counts is not None and self._counts is not None:
            await self._derive(self._on_counts, records, "on_counts", stop)
        if letters and not await self._retry(
            lambda: self._store.write_dead_letters(letters), "write_dead_letters", stop
        ):
            return
        try:
            await self._source.commit(batch)
        except Exception as exc:  # noqa: BLE001 - stored already; a re-delivery is a duplicate
            log.warning("commit failed, the batch may be delivered again: %r", exc)

        elapsed_ms = (time.perf_counter() - started) * 1000
        ok = result.inserted + result.duplicates + result.conflicts
        stats = self.stats
        stats.batches += 1
        stats.stored += result.inserted
        stats.duplicates += result.duplicates
        stats.conflicts += result.conflicts
        if result.conflicts:
            log.warning(
                "%d events have the event_id of a stored event with other content (e.g. %s):"
                " the stored version stays, the new one is kept in the store's conflicts",
                result.conflicts,
                docs[result.conflict_indexes[0]].get("event_id"),
            )
        stats.dead_lettered += len(letters)
        stats.last_batch_ms = elapsed_ms
        stats.batch_sizes.observe(len(batch))
        stats.write_ms.observe(elapsed_ms)
        log.info(
            "Processed batch: %d events (%d success, %d failures) in %.0fms",
            len(batch),
            ok,
            len(letters),
            elapsed_ms,
        )

    async def _derive(
        self,
        hook: Callable[[list[_T]], Awaitable[None]],
        items: list[_T],
        name: str,
        stop: asyncio.Event | None,
    ) -> None:
        """Hand stored items to a hook, retried `on_stored_attempts` times, then given up."""
        if items and not await self._retry(
            lambda: hook(items), name, stop, attempts=self._on_stored_attempts
        ):
            self.stats.on_stored_failures += 1  # stored and committed all the same

    async def _store_counts(self, records: list[CountRecord], stop: asyncio.Event | None) -> bool:
        counts = self._counts
        if counts is None:
            self.stats.count_records_ignored += len(records)
            if self.stats.count_records_ignored == len(records):
                log.warning("count records received but no count store configured: ignored")
            return True
        if not await self._retry(lambda: counts.write_request_counts(records), "counts", stop):
            return False
        self.stats.count_records += len(records)
        return True

    async def _retry(
        self,
        call: Callable[[], Awaitable[None]],
        what: str,
        stop: asyncio.Event | None,
        *,
        attempts: int | None = None,
    ) -> bool:
        """Call until it succeeds (or `attempts` calls failed); False if it never did.

        Without `attempts` it gives up only when `stop` is set and the shutdown grace ran out.
        """
        attempt = 0
        give_up_at: float | None = None
        while True:
            try:
                await self._keeping_alive(call)
            except Exception as exc:  # noqa: BLE001 - any store failure is retried, none is fatal
                attempt += 1
                self.stats.write_failures += 1
                delay = min(self._backoff * 2 ** min(attempt - 1, 32), self._max_backoff)
                outage = attempt > self._write_attempts
                if attempts is not None and attempt >= attempts:
                    log.error("%s failed %d times: giving up on it for this batch", what, attempt)
                    return False
                log.log(
                    logging.ERROR if outage else logging.WARNING,
                    "%s failed (attempt %d), retrying in %.1fs: %r",
                    what,
                    attempt,
                    delay,
                    exc,
                )
                if stop is not None and stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + self._shutdown_timeout
                    if time.monotonic() >= give_up_at:
                        log.error("%s: store still down at shutdown; batch left uncommitted", what)
                        return False
                await self._wait_paused(delay)
            else:
                return True

    async def _keeping_alive(self, call: Callable[[], Awaitable[None]]) -> None:
        """Await a store call; while it has not answered, keep the source alive every interval.

        A hung store (a frozen server holds the connection open) can take the driver's socket
        timeout to answer; a Kafka consumer that polled not once in the meantime exceeds
        `max.poll.interval.ms`, is thrown out of its group and rebalances. A call that answers
        within one interval (every healthy write) never pauses the source.
        """
        task = asyncio.ensure_future(call())
        try:
            while not (await asyncio.wait({task}, timeout=self._keepalive_interval))[0]:
                await self._source.keepalive()
            task.result()
        finally:
            if not task.done():  # cancelled (shutdown) or the keepalive raised
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _wait_paused(self, delay: float) -> None:
        """Back off without fetching, but keep the source alive at least once a second.

        A Kafka consumer that does not poll for `max.poll.interval.ms` is thrown out of its group;
        an outage of the store must not turn into a rebalance storm.
        """
        remaining = delay
        while True:
            await self._source.keepalive()
            if remaining <= 0:
                return
            step = min(remaining, 1.0)
            await self._sleep(step)
            remaining -= step

    def _dead_letter(self, message: Message, error: str) -> DeadLetter:
        where = (
            self._source_name
            if message.position is None
            else (f"{self._source_name}@{message.position}")
        )
        letter_id = where if message.position is not None else None
        return DeadLetter(payload=message.payload, error=error, source=where, letter_id=letter_id)
