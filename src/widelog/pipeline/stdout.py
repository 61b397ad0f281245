"""The development transport: one readable line per kept event on stdout, and nothing stored.

    12:01:02.345 POST /v1/chat 504 41ms req=0190f3c2-… error=LLM_TIMEOUT llm.model=gpt-4o-mini

Lines are written by a thread of their own from a bounded queue, not by `publish`: a write to a
slow terminal, or to a pipe into a paused `less`, blocks, and on the request path it would stall
the event loop. When `max_pending` lines wait, `publish` refuses (the event counts as
`publish_failed`), as the in-process queue does when full.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

import msgspec

from widelog.pipeline.ports import PublishError

_decoder = msgspec.json.Decoder(dict[str, Any])
_MAX_MESSAGE_CHARS: Final = 120
_RED, _YELLOW, _GREEN, _DIM = "31", "33", "32", "2"


class StdoutEventPublisher:
    """An `EventPublisher` that prints each event as one line; there is no consumer behind it."""

    def __init__(
        self, *, stream: TextIO | None = None, color: bool | None = None, max_pending: int = 10_000
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._color = _is_tty(self._stream) if color is None else color
        self._pending: queue.Queue[bytes | None] = queue.Queue(maxsize=max_pending)
        self.write_failures = 0  # lines the stream refused (closed, broken pipe)
        self._thread = threading.Thread(target=self._write, name="widelog-stdout", daemon=True)
        self._thread.start()

    def publish(self, key: str, payload: bytes) -> None:
        del key
        try:
            self._pending.put_nowait(payload)
        except queue.Full:
            raise PublishError(f"stdout is {self._pending.maxsize} lines behind") from None

    async def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        # The writer is a thread: polling its queue is simpler than a cross-thread event.
        while self._pending.unfinished_tasks and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return self._pending.unfinished_tasks

    async def close(self) -> None:
        """Print what is waiting (up to 2 s), then stop the writer.

        The thread is a daemon: a terminal that never takes the rest does not hold the exit.
        """
        await self.flush(2.0)
        with contextlib.suppress(queue.Full):
            self._pending.put_nowait(None)

    def _write(self) -> None:
        while (payload := self._pending.get()) is not None:
            try:
                self._stream.write(line_of(payload, color=self._color) + "\n")
                self._stream.flush()
            except Exception:  # noqa: BLE001 - a broken terminal must not stop the other lines
                self.write_failures += 1
            finally:
                self._pending.task_done()
        self._pending.task_done()


def line_of(payload: bytes, *, color: bool = False) -> str:
    """The line for one encoded event; a payload that is not an event is shown as it is."""
    try:
        doc = _decoder.decode(payload)
    except msgspec.DecodeError:
        return payload[:500].decode(errors="replace").replace("\n", "\\n")
    return format_event(doc, color=color)


def format_event(doc: Mapping[str, Any], *, color: bool = False) -> str:
    """`time what status duration req=… [error=… error.message=…] [llm.model=…] [logs=N]`.

    The time is the event's start, UTC as stored, to the millisecond. Every value that could
    break the line (spaces, quotes, newlines) is JSON-quoted, so one event is one line.
    """

    def paint(text: str, tone: str) -> str:
        return f"\x1b[{tone}m{text}\x1b[0m" if color and text else text

    http, unit, error, llm = (_section(doc, k) for k in ("http", "unit", "error", "llm"))
    failed = bool(error.get("code")) or _int(http.get("status")) >= 500
    if http:
        status = http.get("status")
        tone = _RED if failed else _YELLOW if _int(status) >= 400 else _GREEN
        head = f"{_v(http.get('method'))} {_v(http.get('route'))} {paint(_v(status), tone)}"
    elif unit:
        status = unit.get("status")
        head = f"unit {_v(unit.get('name'))} {paint(_v(status), _RED if failed else _GREEN)}"
    else:
        head = "event"
    parts = [paint(_clock(doc.get("timestamp")), _DIM), head, _duration(doc.get("duration_ms"))]
    parts.append(f"req={_v(doc.get('request_id'))}")
    if error.get("code"):
        parts.append(paint(f"error={_v(error['code'])}", _RED))
    if error.get("message"):
        parts.append(f"error.message={_v(str(error['message'])[:_MAX_MESSAGE_CHARS])}")
    if llm.get("model"):
        parts.append(f"llm.model={_v(llm['model'])}")
    logs = doc.get("logs")
    if isinstance(logs, list) and logs:
        parts.append(f"logs={len(logs) + _int(doc.get('logs_dropped'))}")
    return " ".join(p for p in parts if p)


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _v(value: Any) -> str:
    text = "-" if value is None else str(value)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _clock(timestamp: Any) -> str:
    try:
        moment = dt.datetime.fromisoformat(str(timestamp)).astimezone(dt.UTC)
    except ValueError:
        return "--:--:--.---"
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
