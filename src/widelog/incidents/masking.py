"""Error-message normalization: the same failure with different parameters reads the same.

In the manner of Sentry's message parameterization and Drain3's masking: variable parts of a
message (URLs, e-mail addresses, UUIDs, timestamps, IPs, hex, quoted values, ids, numbers) are
replaced by placeholders, in a fixed order, so `"timeout after 3012 ms for user 'bob'"` and
`"timeout after 2987 ms for user 'ann'"` both become `"timeout after <num> ms for user '<str>'"`.

The rules are versioned (`MASKING_VERSION`): an incident stores the version its messages were
masked with, so a change to the rules is visible instead of silently splitting groups. Bump the
version whenever a pattern or its order changes. Matching is ASCII-only (`re.ASCII`): what counts
as a digit or a word character never depends on the locale or on Unicode tables.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

MASKING_VERSION: Final = "mask-1"
MAX_INPUT_CHARS: Final = 2000
MAX_OUTPUT_CHARS: Final = 500
_MAX_PASSES: Final = 8

_T = "[A-Za-z0-9_-]"  # one character of an id-like token
_HEX4 = "[0-9A-Fa-f]{1,4}"

# (name, pattern, placeholder), applied in this order: earlier rules protect what later ones would
# break apart (a URL holds numbers and maybe an IP; a timestamp holds numbers).
RULES: Final[tuple[tuple[str, str, str], ...]] = (
    ("url", r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", "<url>"),
    ("email", r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", "<email>"),
    (
        "uuid",
        r"(?<![0-9A-Fa-f-])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}"
        r"-[0-9A-Fa-f]{12}(?![0-9A-Fa-f-])",
        "<uuid>",
    ),
    (
        "timestamp",
        r"(?<![\w-])[0-9]{4}-[0-9]{2}-[0-9]{2}"
        r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
        r"(?![\w-])",
        "<ts>",
    ),
    ("time", r"(?<![\w:])[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?(?![\w:])", "<ts>"),
    ("ipv4", r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?::[0-9]{1,5})?(?![\w.])", "<ip>"),
    (
        "ipv6",
        rf"(?<![\w:])(?:(?:{_HEX4}:){{7}}{_HEX4}|(?:{_HEX4}:){{1,6}}:(?:{_HEX4}(?::{_HEX4})*)?"
        rf"|::{_HEX4}(?::{_HEX4})*)(?![\w:])",
        "<ip>",
    ),
    ("hex_literal", r"\b0[xX][0-9A-Fa-f]+\b", "<hex>"),
    (
        "hex",
        r"\b(?=[0-9A-Fa-f]{8,}\b)(?=[0-9]*[A-Fa-f])(?=[A-Fa-f]*[0-9])[0-9A-Fa-f]+\b",
        "<hex>",
    ),
    ("single_quoted", r"(?<!\w)'[^'\n]*'(?!\w)", "'<str>'"),
    ("double_quoted", r'(?<!\w)"[^"\n]*"(?!\w)', '"<str>"'),
    (
        "id",
        rf"(?<!{_T})(?={_T}{{8,}}(?!{_T}))(?={_T}*[A-Za-z])(?=(?:[A-Za-z_-]*[0-9]){{3}}){_T}+(?!{_T})",
        "<id>",
    ),
    ("number", r"(?<![A-Za-z0-9_.-])[-+]?[0-9]+(?:[.,][0-9]+)*(?:[eE][-+]?[0-9]+)?", "<num>"),
)

_COMPILED: Final = tuple(
    (re.compile(pattern, re.ASCII), placeholder) for _, pattern, placeholder in RULES
)


def mask(message: str) -> str:
    """`message` with its variable parts replaced by placeholders; deterministic and idempotent.

    Input beyond `MAX_INPUT_CHARS` is ignored and the result is cut at `MAX_OUTPUT_CHARS`, so a
    megabyte of stack trace never becomes a megabyte of group key.
    """
    text = message[:MAX_INPUT_CHARS]
    # Masking can expose a new match (a quote that closes after a placeholder), so run the rules
    # to a fixpoint: then masking a masked message changes nothing.
    for _ in range(_MAX_PASSES):
        masked = _mask_once(text)
        if masked == text:
            break
        text = masked
    return text


def _mask_once(text: str) -> str:
    for pattern, placeholder in _COMPILED:
        text = pattern.sub(placeholder, text)
    text = " ".join(text.split())  # line breaks and runs of spaces never distinguish failures
    return text[:MAX_OUTPUT_CHARS]


def message_key(normalized: str) -> str:
    """A short stable id of a normalized message (16 hex of its SHA-256)."""
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()[:16]
