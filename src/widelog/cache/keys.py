"""Response-cache keys: a versioned normalization of the question, hashed with all it depends on.

Normalization `n1`, in this order (`normalize_query`):

1. Unicode NFKC: compatibility forms fold together (full-width Latin and punctuation, half-width
   katakana, decomposed Hangul jamo, ligatures, superscripts).
2. `str.casefold()`: full Unicode case folding ("Straße" and "STRASSE" meet at "strasse").
3. NFKC again: case folding can leave sequences that NFKC would write differently.
4. Every run of whitespace (`str.isspace`: tabs, newlines, NBSP, U+3000, ...) becomes one space;
   leading and trailing whitespace goes.

Nothing else changes: punctuation, zero-width characters and word order are kept, so two questions
share an answer only when they are the same text up to these steps. Changing a step means a new
`NORMALIZATION_VERSION`; it starts every key, so new code never reads entries written under old
rules (those expire by their TTL).

The key covers everything the answer depends on: the normalized question, the prompt version,
the language (exact: it is passed to the model as given), the model (one model's answer never
serves another) and the conversation before the question (each earlier turn's role and normalized
text). The earlier turns are in the key rather than making such requests bypass the cache: the
answer depends on them, so including them is correct by construction, a first turn (no context)
gets exactly the key a bypass design would give it, and a scripted multi-turn flow can still hit.
The fields are JSON-encoded as a list before hashing, so no choice of field values can make two
different inputs hash the same material.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

NORMALIZATION_VERSION: Final = "n1"
_encode = msgspec.json.encode


def normalize_query(text: str) -> str:
    """The `n1` form of a question (see the module docstring for the steps)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def answer_key(
    question: str,
    *,
    context: Sequence[tuple[str, str]] = (),
    prompt_version: str,
    language: str | None,
    model: str,
) -> str:
    """`n1:<32 hex>`: the cache key of the answer to `question` after the `(role, text)` turns."""
    material = [
        NORMALIZATION_VERSION,
        normalize_query(question),
        prompt_version,
        language,
        model,
        [(role, normalize_query(text)) for role, text in context],
    ]
    digest = hashlib.blake2b(_encode(material), digest_size=16).hexdigest()
    return f"{NORMALIZATION_VERSION}:{digest}"
