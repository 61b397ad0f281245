"""The logger librdkafka's own lines go through (`"logger": librdkafka_log`), a child of ours.

librdkafka logs every failed connection attempt as an ERROR (`FAIL`). While a broker is down, a
consumer group member retries its bootstrap and coordinator connections about every 50 ms:
451 ERROR lines in 25 s from one worker with Kafka restarting (measured). The first line per
client says what happened; the rest are counted and the count goes out with the next line let
through, at most once per `every_s` (a count still held back when the failures stop is not
logged: the broker is back by then).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

librdkafka_log = logging.getLogger("widelog.kafka.librdkafka")

CONNECTION_FAILED: Final = "FAIL"  # librdkafka's facility for a failed or lost connection


class RepeatedConnectionFailures(logging.Filter):
    """At most one librdkafka `FAIL` line per client per `every_s`, then how many were held back."""

    def __init__(self, *, every_s: float = 5.0) -> None:
        super().__init__()
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}
        self._lock = threading.Lock()  # librdkafka logs from its own threads

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # confluent-kafka calls logger.log(level, "%s [%s] %s", facility, client name, message)
        if not isinstance(args, tuple) or len(args) != 3 or args[0] != CONNECTION_FAILED:
            return True
        client = str(args[1])
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(client, -self._every_s) < self._every_s:
                self._held_back[client] = self._held_back.get(client, 0) + 1
                return False
            self._last[client] = now
            held_back = self._held_back.pop(client, 0)
        if held_back:
            record.msg = f"{record.msg} (%d more like it held back since the previous one)"
            record.args = (*args, held_back)
        return True


librdkafka_log.addFilter(RepeatedConnectionFailures())
