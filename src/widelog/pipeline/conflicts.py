"""Conflicting duplicates: an `event_id` already stored, delivered again with other content.

A re-delivery, a replay or a retry carries the same bytes, and the store absorbs it as a
duplicate. Two *different* events under one id (a client that reuses ids, a bug that mutates an
event after publishing it) would be absorbed the same way, and the second version silently lost.
The stores tell the two apart by a content hash, compared only for the ids that collided: equal
is a duplicate, different is a conflict whose second version is kept in a `conflicts` place with
the reason `conflicting duplicate` and counted.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping

CONFLICT_REASON: Final = "conflicting duplicate"

# Sorted keys: the hash is of the content, not of the order a producer wrote the fields in.
_canonical = msgspec.json.Encoder(order="sorted", enc_hook=str)


def content_hash(event: Mapping[str, Any]) -> str:
    """A 128-bit hash of the event's canonical JSON (stable across processes and versions)."""
    return hashlib.blake2b(_canonical.encode(event), digest_size=16).hexdigest()


def conflict_id(event_id: str, digest: str) -> str:
    """One record per distinct version: a re-delivered conflicting version is kept once."""
    return f"{event_id}:{digest}"
