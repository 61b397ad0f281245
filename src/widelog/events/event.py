"""The wide event: every fact about one request in one structured record.

Fields live in a nested document: `event.set("llm.model", "m")` stores `{"llm": {"model": "m"}}`,
the shape MongoDB indexes and queries with dot paths. Everything is made storage-safe when it is
*set*, so the end of a request only encodes bytes:

- a key segment that starts with `$` gets a full-width `＄` instead (MongoDB reads `$` as an
  operator); inside values, a `.` in a key becomes `．` (a dot is a path separator there);
- NUL characters are removed from keys and string values;
- values that JSON cannot carry are stringified; integers outside int64 (BSON's range) too;
- nesting deeper than `MAX_DEPTH` is stringified, which also ends reference cycles.

Full-width replacements are what MongoDB's documentation suggested for user keys: reversible,
readable, and never an operator.
"""

from __future__ import annotations

import datetime as dt
import re
import traceback
from collections.abc import Mapping
from typing import Any, Final

import msgspec

MAX_DEPTH: Final = 8
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_MESSAGE_CHARS: Final = 2000
_encoder = msgspec.json.Encoder(enc_hook=str)
_decoder = msgspec.json.Decoder(dict[str, Any])


def safe_key(key: object) -> str:
    """A key MongoDB stores as a plain field name (no operator, no path, no NUL)."""
    text = key if isinstance(key, str) else str(key)
    text = text.replace("\x00", "").replace(".", "\uff0e")
    if text.startswith("$"):
        text = "\uff04" + text[1:]
    return text or "_"


def _safe_segment(segment: str) -> str:
    segment = segment.replace("\x00", "")
    if segment.startswith("$"):
        segment = "\uff04" + segment[1:]
    return segment or "_"


def safe_value(value: Any, depth: int = 0) -> Any:  # noqa: PLR0911 - one return per type
    """A JSON- and BSON-safe copy of `value`, without NUL characters in any string; never raises.

    NUL ends a C string: BSON cannot carry it in keys, and in values it truncates what many
    tools downstream of the store display.
    """
    if isinstance(value, str):
        return value.replace("\x00", "")
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if depth >= MAX_DEPTH:
        return _stringify(value)
    if isinstance(value, Mapping):
        return {safe_key(k): safe_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [safe_value(v, depth + 1) for v in value]
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return _stringify(value)


def _stringify(value: Any) -> str:
    try:
        return str(value).replace("\x00", "")
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the request
        return f"<unprintable {type(value).__name__}>"


def is_error(doc: Mapping[str, Any]) -> bool:
    """The one definition of "this request failed": an error code, or a 5xx status."""
    error = doc.get("error")
    if isinstance(error, Mapping) and error.get("code"):
        return True
    http = doc.get("http")
    status = http.get("status") if isinstance(http, Mapping) else None
    return isinstance(status, int) and status >= 500


class WideEvent:
    """The record one request builds up while it runs; published once by `LoggingService`."""

    __slots__ = ("doc", "finalized", "started_ns")

    def __init__(self, doc: dict[str, Any], *, started_ns: int) -> None:
        self.doc = doc
        self.started_ns = started_ns
        self.finalized = False

    @property
    def event_id(self) -> str:
        return str(self.doc["event_id"])

    @property
    def request_id(self) -> str:
        return str(self.doc["request_id"])

    def set(self, key: str, value: Any) -> None:
        """Set a field; dots in `key` mean nesting (`"llm.model"`)."""
        *parents, leaf = key.split(".") if "." in key else (key,)
        node = self.doc
        for parent in parents:
            segment = _safe_segment(parent)
            child = node.get(segment)
            if not isinstance(child, dict):
                child = node[segment] = {}
            node = child
        node[_safe_segment(leaf)] = safe_value(value)

    def update(self, fields: Mapping[str, Any]) -> None:
        for key, value in fields.items():
            self.set(key, value)

    def get(self, key: str, default: Any = None) -> Any:
        node: Any = self.doc
        for segment in key.split("."):
            if not isinstance(node, dict) or segment not in node:
                return default
            node = node[segment]
        return node

    def error(self, code: str, *, message: str | None = None, kind: str | None = None) -> None:
        """Record why this request failed; `code` is what errors are grouped and sampled by."""
        self.set("error.code", code)
        if message is not None:
            self.set("error.message", message[:_MAX_MESSAGE_CHARS])
        if kind is not None:
            self.set("error.type", kind)

    def record_exception(self, exc: BaseException, *, code: str | None = None) -> None:
        """Record an exception, keeping an error code a handler set before it (the root cause)."""
        if self.get("error.code") is None:
            self.set("error.code", code or getattr(exc, "code", None) or "UNHANDLED_EXCEPTION")
        self.set("error.type", type(exc).__qualname__)
        self.set("error.message", _stringify(exc)[:_MAX_MESSAGE_CHARS])
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            self.set("error.where", f"{last.filename}:{last.lineno} in {last.name}")

    @property
    def has_error(self) -> bool:
        return is_error(self.doc)


def encode(doc: Mapping[str, Any], *, max_bytes: int) -> bytes:
    """Serialize an event, shrinking it under `max_bytes` instead of failing.

    Oversized events first lose the tails of long strings, then everything but their core fields;
    either way `truncated: true` and `original_bytes` say so.
    """
    payload = _encoder.encode(doc)
    if len(payload) <= max_bytes:
        return payload
    original = len(payload)
    for limit in (4096, 1024, 256, 64):
        shrunk = {**_truncate_strings(doc, limit), "truncated": True, "original_bytes": original}
        payload = _encoder.encode(shrunk)
        if len(payload) <= max_bytes:
            return payload
    core = {k: doc[k] for k in CORE_FIELDS if k in doc}
    shrunk = {**_truncate_strings(core, 64), "truncated": True, "original_bytes": original}
    return _encoder.encode(shrunk)


CORE_FIELDS: Final = (
    "event_id",
    "request_id",
    "timestamp",
    "service",
    "env",
    "instance",
    "http",
    "duration_ms",
    "error",
    "sampling",
    "trace_id",
)


def _truncate_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, dict):
        return {k: _truncate_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_truncate_strings(v, limit) for v in value[:limit]]
    return value


class UndecodableEventError(ValueError):
    """A payload that is not a wide event; it goes to the dead letters, never into the store."""


# Limits of what `decode` accepts. Every event this library writes is far inside both (values
# are cut at `MAX_DEPTH` and events at `max_event_bytes`, at most 900 KiB); MongoDB itself
# refuses documents nested deeper than 100.
MAX_PAYLOAD_BYTES: Final = 1024 * 1024
MAX_NESTING: Final = 64
_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_EMPTY_PAIR: Final = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")


def decode(payload: bytes) -> dict[str, Any]:
    """The event in `payload`, or `UndecodableEventError` saying why it is not one.

    Nesting is checked before msgspec sees the payload: its recursion guard is the interpreter's
    recursion limit, which a process may raise far enough for a deep payload to overflow the C
    stack. The check never recurses, and costs two `bytes.count` calls for a normal event.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise UndecodableEventError(
            f"payload of {len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})"
        )
    if _nested_too_deep(payload, MAX_NESTING):
        raise UndecodableEventError(f"not a JSON object nested at most {MAX_NESTING} levels")
    try:
        doc = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UndecodableEventError(f"not a JSON object: {exc}") from exc
    event_id = doc.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise UndecodableEventError("no event_id")
    return doc


def _nested_too_deep(payload: bytes, limit: int) -> bool:
    """Whether the brackets outside strings nest deeper than `limit` (or do not pair up).

    Fewer brackets than `limit` cannot nest deeper. Otherwise strings are cut out, everything but
    brackets is dropped, and innermost pairs are removed one level per pass (each pass a regex,
    so the whole check runs at C speed): what is left after `limit` passes is too deep.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        brackets, removed = _EMPTY_PAIR.subn(b"", brackets)
        if not brackets:
            return False
        if not removed:
            return True  # unbalanced: not JSON, and possibly an unclosed `[[[[...`
    return True
