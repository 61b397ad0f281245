"""Incident notifications: lifecycle steps → a durable outbox → a webhook, off the consumer's path.

The aggregator's `on_recorded` hook enqueues one message per recorded step in an insert-only
outbox beside the incident records (`_id` = the idempotency key, so several workers and restarts
enqueue each message once); `OutboxSender` delivers pending messages in the background with
claims under a lease, retries with capped exponential backoff and jitter, and a repeat ("update")
message while an incident stays open. Delivery is at-least-once: a receiver deduplicates by the
idempotency key. See docs/incidents.md, *Notifications*.
"""

from widelog.incidents.notify.model import Attempt, MessageKind, OutboxMessage, Outcome
from widelog.incidents.notify.ports import DeliveryError, NotificationOutbox, Notifier
from widelog.incidents.notify.sender import OutboxSender, SenderStats

__all__ = [
    "Attempt",
    "DeliveryError",
    "MessageKind",
    "NotificationOutbox",
    "Notifier",
    "OutboxMessage",
    "OutboxSender",
    "Outcome",
    "SenderStats",
]
