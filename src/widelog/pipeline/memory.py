"""The embedded transport: an in-process queue between the request path and the batcher.

Not durable: events still in the queue die with the process. It exists so the whole pipeline runs
with no services (demo, tests, a single small instance); use Kafka or Redis Streams for more.
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

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def drained(self) -> None:
        """Return once every published event has been polled *and committed*."""
        await self.queue.join()


class InProcessEventPublisher:
    def __init__(self, queue: InProcessQueue) -> None:
        self._queue = queue.queue

    def publish(self, key: str, payload: bytes) -> None:
        del key  # one queue, no partitions: the key has nothing to choose
        try:
            self._queue.put_nowait(payload)
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
        self._queue = queue.queue
        self._uncommitted = 0

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        queue = self._queue
        if queue.empty():
            try:
                first = await asyncio.wait_for(queue.get(), timeout) if timeout > 0 else None
            except TimeoutError:
                return []
            if first is None:
                return []
            messages = [Message(first)]
        else:
            messages = []
        while len(messages) < max_messages and not queue.empty():
            messages.append(Message(queue.get_nowait()))
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
