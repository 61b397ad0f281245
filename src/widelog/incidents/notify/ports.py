"""Ports of the notifications: the outbox (beside the incident records) and the notifier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Collection, Sequence

    from widelog.incidents.model import Incident
    from widelog.incidents.notify.model import Attempt, OutboxMessage


class NotificationOutbox(Protocol):
    """Durable, shared, insert-only: messages by idempotency key, and the attempts at each.

    Several workers use one outbox; a message is inserted once whoever enqueues it, an attempt
    (`key#n`) is claimed by exactly one of them, and only that one records its outcome.
    """

    async def enqueue(self, messages: Sequence[OutboxMessage]) -> int:
        """Insert the messages not there yet (by key); return how many were new."""
        ...

    async def messages(
        self, *, since: dt.datetime | None = None, keys: Collection[str] | None = None
    ) -> list[OutboxMessage]:
        """Messages created at or after `since` and/or with these keys (all if neither)."""
        ...

    async def attempts(self, keys: Collection[str]) -> dict[str, list[Attempt]]:
        """Every attempt at these messages, with its outcome if recorded, by key."""
        ...

    async def claim(self, attempt: Attempt) -> bool:
        """Insert the claim `attempt.claim_id`; True only for the first claimant."""
        ...

    async def finish(self, attempt: Attempt) -> None:
        """Record the outcome of an attempt this worker claimed."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class DeliveryError(Exception):
    """A message the receiver did not take; `retry` False when trying again cannot help."""

    def __init__(self, detail: str, *, retry: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry = retry


class Notifier(Protocol):
    """Sends one message about one incident, or raises `DeliveryError`."""

    @property
    def target(self) -> str:
        """Where messages go, safe to log and show (no credentials)."""
        ...

    async def send(self, message: OutboxMessage, incident: Incident) -> str:
        """Deliver; return a short detail for the record (e.g. `HTTP 200`)."""
        ...

    async def close(self) -> None: ...
