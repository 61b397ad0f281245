"""How cached values are stored: versioned, compact JSON, and the one rule for trimming history.

Every stored value carries `v` (its schema version). A value this code cannot read — garbage
bytes, a missing field, an unknown version written by newer code — raises `UndecodableValueError`;
adapters report it as a corrupt value, which reads as a miss instead of failing the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

SCHEMA_VERSION: Final = 1
Role = Literal["system", "user", "assistant"]


class UndecodableValueError(ValueError):
    """Bytes that are not a value of a schema version this code knows."""


class _Turn(msgspec.Struct, frozen=True):
    v: int
    role: Role
    content: str


class StoredAnswer(msgspec.Struct, frozen=True):
    """A cached LLM answer as stored (`v` is the schema version)."""

    v: int
    text: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    created_at: float


_encoder = msgspec.json.Encoder()
_turn_decoder = msgspec.json.Decoder(_Turn)
_answer_decoder = msgspec.json.Decoder(StoredAnswer)


def encode_turn(role: str, content: str) -> bytes:
    return _encoder.encode(_Turn(SCHEMA_VERSION, role, content))  # type: ignore[arg-type]


def decode_turn(raw: bytes | str) -> tuple[str, str]:
    """`(role, content)` of a stored turn."""
    try:
        turn = _turn_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise UndecodableValueError(f"not a session turn: {exc}") from exc
    if turn.v != SCHEMA_VERSION:
        raise UndecodableValueError(f"session turn schema v{turn.v}, this code reads v1")
    return turn.role, turn.content


def encode_answer(
    *,
    text: str,
    model: str,
    provider: str,
    input_tokens: int,
    output_tokens: int,
    created_at: float,
) -> bytes:
    return _encoder.encode(
        StoredAnswer(SCHEMA_VERSION, text, model, provider, input_tokens, output_tokens, created_at)
    )


def decode_answer(raw: bytes | str) -> StoredAnswer:
    try:
        answer = _answer_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise UndecodableValueError(f"not a cached answer: {exc}") from exc
    if answer.v != SCHEMA_VERSION:
        raise UndecodableValueError(f"cached answer schema v{answer.v}, this code reads v1")
    return answer


def first_kept(sizes: Sequence[int], *, max_turns: int, max_bytes: int) -> int:
    """Index of the oldest turn to keep: the newest `max_turns`, then fewer until under the bytes.

    A turn larger than `max_bytes` on its own is not kept (the session ends up empty). The Redis
    adapter runs the same rule in Lua; `tests/contract/test_caches.py` holds both to it.
    """
    start = max(0, len(sizes) - max_turns)
    total = sum(sizes[start:])
    while start < len(sizes) and total > max_bytes:
        total -= sizes[start]
        start += 1
    return start
