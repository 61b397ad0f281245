"""The wide event: every fact about one request in one structured record.

Fields live in a nested document: `event.set("llm.model", "m")` stores `{"llm": {"model": "m"}}`,
the shape MongoDB indexes and queries with dot paths. Everything is made storage-safe when it is
*set*, so the end of a request only encodes bytes:

- a key segment that starts with `$` gets a full-width `＄` instead (MongoDB reads `$` as an
  operator); inside values, a `.` in a key becomes `．` (a dot is a path separator there);
- NUL characters are removed from keys and string values, and lone surrogates (half of a
  UTF-16 pair, e.g. from `surrogateescape` or a bad slice) become U+FFFD: no UTF-8 encoder takes
  them, and one would fail the whole event at `finalize()`;
- values that JSON cannot carry are stringified; integers outside int64 (BSON's range) too;
- nesting deeper than `MAX_DEPTH` is stringified, which also ends reference cycles; a dotted key
  nests at most `MAX_DEPTH` levels, the rest of its dots become `．` in the last segment.

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
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
_encoder = msgspec.json.Encoder(enc_hook=str)
_decoder = msgspec.json.Decoder(dict[str, Any])


def safe_key(key: object) -> str:
    """A key MongoDB stores as a plain field name (no operator, no path, no NUL)."""
    text = _clean(key if isinstance(key, str) else str(key)).replace(".", "\uff0e")
    if text.startswith("$"):
        text = "\uff04" + text[1:]
    return text or "_"


def _clean(text: str) -> str:
    """`text` without NUL and with each lone surrogate as U+FFFD: encodable as UTF-8 and BSON."""
    if not text.isascii():
        text = _SURROGATES.sub("\ufffd", text)
    return text.replace("\x00", "")


def _safe_segment(segment: str) -> str:
    segment = _clean(segment)
    if segment.startswith("$"):
        segment = "\uff04" + segment[1:]
    return segment or "_"


# A key's safe path: its parent segments and its leaf. Bounded: a caller that builds keys from data
# must not turn it into a leak, and long keys are not kept at all.
_PATHS: dict[str, tuple[tuple[str, ...], str]] = {}
_MAX_CACHED_PATHS: Final = 4096
_MAX_CACHED_KEY_CHARS: Final = 200


def _path(key: str) -> tuple[tuple[str, ...], str]:
    """The storage-safe segments of a dotted key, nested at most `MAX_DEPTH` levels."""
    *parents, leaf = key.split(".") if "." in key else (key,)
    if len(parents) >= MAX_DEPTH:  # `a.a.a…` 100 levels deep would be refused by `decode`
        parents, leaf = (
            parents[: MAX_DEPTH - 1],
            "\uff0e".join([*parents[MAX_DEPTH - 1 :], leaf]),
        )
    path = (tuple(_safe_segment(parent) for parent in parents), _safe_segment(leaf))
    if len(key) <= _MAX_CACHED_KEY_CHARS:
        if len(_PATHS) >= _MAX_CACHED_PATHS:
            _PATHS.clear()
        _PATHS[key] = path
    return path


def safe_value(value: Any, depth: int = 0) -> Any:  # noqa: PLR0911 - one return per type
    """A JSON- and BSON-safe copy of `value`, NUL and lone surrogates out of strings; never raises.

    NUL ends a C string: BSON cannot carry it in keys, and in values it truncates what many
    tools downstream of the store display.
    """
    if isinstance(value, str):
        return _clean(value)
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
        return _clean(str(value))
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the request
        return f"<unprintable {type(value).__name__}>"


def is_error(doc: Mapping[str, Any]) -> bool:
    """The one definition of "this request failed": an error code, or a 5xx status."""
    # `type(x) is dict` first: every event takes this path, and an ABC check costs ~1 µs.
    error = doc.get("error")
    if (
        error is not None
        and (type(error) is dict or isinstance(error, Mapping))
        and error.get("code")
    ):
        return True
    http = doc.get("http")
    if http is None or not (type(http) is dict or isinstance(http, Mapping)):
        return False
    status = http.get("status")
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
        """Set a field; dots in `key` mean nesting (`"llm.model"`).

        Called ~20 times per request, so the common case is inlined: the key's safe path comes
        from a cache (keys are literals in the app's code, the same on every request) and a
        scalar value is checked here without a call; anything else goes through `safe_value`.
        """
        if type(key) is not str:
            key = key if isinstance(key, str) else _stringify(key)
        parents, leaf = _PATHS.get(key) or _path(key)
        node = self.doc
        for segment in parents:
            child = node.get(segment)
            if not isinstance(child, dict):
                child = node[segment] = {}
            node = child
        kind = type(value)
        if kind is str:
            # `replace` hands back the same object when there is no NUL: no copy.
            node[leaf] = value.replace("\x00", "") if value.isascii() else _clean(value)
        elif kind is int:
            node[leaf] = value if _INT64_MIN <= value <= _INT64_MAX else str(value)
        elif kind is float or kind is bool or value is None:
            node[leaf] = value
        else:
            try:
                safe = safe_value(value)
            except Exception:  # noqa: BLE001 - a container that fails to iterate must not fail the request
                safe = f"<unstorable {type(value).__name__}>"
            node[leaf] = safe

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
            self.set("error.message", _stringify(message)[:_MAX_MESSAGE_CHARS])
        if kind is not None:
            self.set("error.type", kind)

    def record_exception(self, exc: BaseException, *, code: str | None = None) -> None:
        """Record an exception, keeping an error code a handler set before it (the root cause)."""
        if self.get("error.code") is None:
            try:
                code = code or getattr(exc, "code", None)
            except Exception:  # noqa: BLE001 - a property that raises must not fail the request
                code = None
            self.set("error.code", code or "UNHANDLED_EXCEPTION")
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

    Oversized events first lose the tails of long strings (and keys), then everything but their
    core fields, and last everything but the scalars that identify them; any way `truncated: true`
    and `original_bytes` say so. The result is at most `max_bytes` for any `max_bytes` of 1 KiB
    or more (`Settings` allows 4 KiB and up).
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
    payload = _encoder.encode(shrunk)
    if len(payload) <= max_bytes:
        return payload
    # Core fields can be large too (an app's own keys under `http` or `error`): keep the ids.
    ids = {k: v for k, v in shrunk.items() if k in _ID_FIELDS and not isinstance(v, dict | list)}
    return _encoder.encode({**ids, "truncated": True, "original_bytes": original})


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


_ID_FIELDS: Final = frozenset({"event_id", "request_id", "timestamp", "service", "duration_ms"})


def _truncate_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, dict):
        return {_cut(k, limit): _truncate_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_truncate_strings(v, limit) for v in value[:limit]]
    return value


def _cut(key: str, limit: int) -> str:
    return key if len(key) <= limit else key[:limit] + "…"


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

    Another producer may not escape keys as `WideEvent.set` does: keys that start with `$` or
    hold `.` or NUL are escaped the same way (`safe_key`) and counted in `keys_escaped`, so a
    payload can never hand MongoDB an operator or a path.
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
        if isinstance(doc.get("record"), str) and "event_id" not in doc:
            return doc  # not an event but a record the consumer routes (e.g. request counts)
        raise UndecodableEventError("no event_id")
    if escaped := _escape_keys(doc):
        doc["keys_escaped"] = escaped
    return doc


def _escape_keys(node: dict[str, Any] | list[Any]) -> int:
    """Escape unsafe keys in place (nesting is bounded by `MAX_NESTING`); how many there were."""
    count = 0
    children = node.values() if isinstance(node, dict) else node
    for child in children:
        if isinstance(child, dict | list):
            count += _escape_keys(child)
    if isinstance(node, dict):
        unsafe = [k for k in node if k.startswith("$") or "." in k or "\x00" in k]
        for key in unsafe:
            node[safe_key(key)] = node.pop(key)
        count += len(unsafe)
    return count


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
