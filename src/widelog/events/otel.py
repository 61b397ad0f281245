"""The active OpenTelemetry span's ids, so an event and the app's trace point at each other.

widelog never depends on OpenTelemetry: `opentelemetry-api` is imported on the first call, once,
and when it is missing every later call is one call of a function that returns None.
"""

from __future__ import annotations

from collections.abc import Callable

SpanIds = dict[str, str]

_lookup: Callable[[], SpanIds | None] | None = None


def active_span_ids() -> SpanIds | None:
    """`trace_id` and `span_id` (W3C hex) of the active span, or None when there is none.

    With the SDK's spans, `parent_span_id` too (the caller's span when the server span continued
    a `traceparent`). Never raises: a broken tracer costs the event its ids, not the request.
    """
    lookup = _lookup or _resolve()
    return lookup()


def _resolve() -> Callable[[], SpanIds | None]:
    global _lookup  # noqa: PLW0603 - the import is tried once per process
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional, imported on first use
    except ImportError:
        _lookup = _no_span
        return _lookup

    def from_opentelemetry() -> SpanIds | None:
        try:
            span = trace.get_current_span()
            context = span.get_span_context()
            if not context.is_valid:
                return None
            ids = {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
            parent = getattr(span, "parent", None)  # SDK spans know it; the API's do not
            if parent is not None and parent.is_valid:
                ids["parent_span_id"] = f"{parent.span_id:016x}"
        except Exception:  # noqa: BLE001 - a broken tracer must not break the request
            return None
        return ids

    _lookup = from_opentelemetry
    return _lookup


def _no_span() -> None:
    return None
