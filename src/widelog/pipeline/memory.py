"""The embedded transport: an in-process queue between the request path and the batcher.

Not durable: events still in the queue die with the process. It exists so the whole pipeline runs
with no services (demo, tests, a single small instance); use Kafka or Redis Streams for more.

The consumer is woken once per batch, not once per event: `poll(n, timeout)` waits until `n`
events are queued or `timeout` passed, as librdkafka's `consume(n, timeout)` does. Woken on every
`put` (an `asyncio.Queue` getter), it cost the API ~100 µs of loop iterations, a task and a timer
per event at a steady rate (issue #13); now a batch of 100 costs one wake-up. Events reach the
store no later than before: the consumer's `flush_interval_s` still bounds how long a batch waits.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from widelog.pipeline.ports import Message, PublishError

if TYPE_CHECKING:
    from collections.abc import Sequence


class InProcessQueue:
    """One bounded queue shared by an `InProcessEventPublisher` and an `InProcessEventSource`."""

    def __init__(self, *, max_events: int = 100_000) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_events)
        self._wanted = 0  # the size that wakes the waiting poll
        self._filled: asyncio.Future[None] | None = None

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def put(self, payload: bytes) -> None:
        """Queue `payload` (`asyncio.QueueFull` when full); wake the poll once its batch is in."""
        self.queue.put_nowait(payload)
        filled = self._filled
        if filled is not None and self.queue.qsize() >= self._wanted and not filled.done():
            filled.set_result(None)

    async def wait_for(self, size: int, timeout: float) -> None:
        """Return once `size` events are queued, or after `timeout` s, whichever is first."""
        if self.queue.qsize() >= size or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        filled = self._filled = loop.create_future()
        self._wanted = size
        timer = loop.call_later(timeout, _resolve, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    async def drained(self) -> None:
        """Return once every published event has been polled *and committed*."""
        await self.queue.join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class InProcessEventPublisher:
    def __init__(self, queue: InProcessQueue) -> None:
        self._queue = queue

    def publish(self, key: str, payload: bytes) -> None:
        del key  # one queue, no partitions: the key has nothing to choose
        try:
            self._queue.put(payload)
        except asyncio.QueueFull:
            raise PublishError("in-process queue is full") from None

    async def flush(self, timeout: float) -> int:
        """Nothing to do: the queue is the destination (the consumer drains it)."""
        del timeout
        return 0

    async def close(self) -> None:
        return None


class InProcessEventSource:
    def __init__(self, queue: InProcessQueue) -> None:
        self._shared = queue
        self._queue = queue.queue
        self._uncommitted = 0

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages`, once that many are queued or `timeout` s passed."""
        await self._shared.wait_for(max_messages, timeout)
        queue = self._queue
        messages = [Message(queue.get_nowait()) for _ in range(min(max_messages, queue.qsize()))]
        self._uncommitted += len(messages)
        return messages

    async def commit(self, messages: Sequence[Message]) -> None:
        for _ in messages:
            self._queue.task_done()
        self._uncommitted -= len(messages)

    async def backlog(self) -> dict[str, int]:
        return {"queued": self._queue.qsize() + self._uncommitted}

    async def keepalive(self) -> None:
        return None

    async def close(self) -> None:
        return None
