"""Kafka transport: a non-blocking producer with a spool fallback, and a consumer-group source.

librdkafka traps this module is written around:
- `produce()` returning means "queued in this process", not "stored": durability starts with the
  delivery report (acks=all). Until then an event lives in librdkafka's memory.
- A broker outage shows up later, as delivery errors after `message.timeout.ms`, or at once as a
  full local queue (`BufferError`). Both send the event to the spool; so does a broker that
  librdkafka reports as all-down, until a replay gets through again.
- Offsets are committed explicitly, only for messages whose batch the store has, and never with
  a call that can wait forever (see `KafkaEventSource`).
- Some refusals are for good: a record larger than the topic's `max.message.bytes`, a topic this
  client may not write to. Sent again, they fail again, so the replay quarantines them instead
  of retrying the segment forever (`Delivery.refused`).
- A fatal error (the idempotent producer cannot keep its guarantees) ends a producer for good:
  it is replaced by a new one, after a backoff, while events go to the spool.
"""

from widelog.pipeline.kafka.admin import KafkaGroupBacklog, ensure_topic
from widelog.pipeline.kafka.publisher import KafkaEventPublisher
from widelog.pipeline.kafka.source import KafkaEventSource, KafkaPosition

__all__ = [
    "KafkaEventPublisher",
    "KafkaEventSource",
    "KafkaGroupBacklog",
    "KafkaPosition",
    "ensure_topic",
]
