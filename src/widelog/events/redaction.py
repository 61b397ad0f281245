"""Secrets stay out of events: scrubbed after sampling, before the event is encoded and published.

What counts as a secret is data (`RedactionPolicy`, loaded by `widelog.policies` from a TOML file
and `WIDELOG_REDACTION_*`), checked once at startup and compiled once into a `Redactor`:

- a field whose name is a secret (`password`, `llm.api_key`, `headers.Authorization`) has its
  whole value replaced, e.g. by `"[redacted:password]"`. Names are matched per key segment,
  case-insensitively, on whole words: the segment `accessToken` (words `access`, `token`) ends
  with the pattern `token`, so it is a secret; `input_tokens` and `token_count` are not, and
  LLM token counts are core fields here;
- a token-shaped value anywhere in a string (`Bearer …`, a JWT, `sk-…`, `AKIA…`, `ghp_…`,
  `xoxb-…`; e-mail addresses only when `emails` is on) is replaced by its marker in place, so an
  error message keeps its sense: `upstream refused [redacted:bearer]`;
- the event then carries `redacted: <count>`, so an operator knows something was removed.

A marker says which kind of secret it replaced, never any part of it. The scrub runs only on
kept events (dropped ones are never published), walks the document once, and caches the verdict
on each key name, so a typical event costs a few microseconds (see docs/interop.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Built-in value patterns, by the kind their marker names. Each needs a distinctive prefix and a
# minimum length, so ordinary text (`bearer of bad news`, `sk-learn`) is left alone.
VALUE_PATTERNS: Final = {
    # The token must hold a digit: "Bearer information" is prose, not a credential.
    "bearer": r"\b(?i:bearer)\s+(?=[A-Za-z._~+/-]*\d)[A-Za-z0-9._~+/-]{8,}=*",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    "openai": r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{20,}",
    "stripe": r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    "aws": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "github": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    "slack": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "google": r"\bAIza[0-9A-Za-z_-]{35}",
}
# Literals every match of a pattern holds, lower-cased: a string holding none of its patterns'
# literals skips the regex, which is what makes scanning every string affordable (Python's regex
# engine tries each alternative at each position; `in` is a C memchr-based search).
_LITERALS: Final = {
    "bearer": ("bearer",),
    "jwt": ("eyj",),
    "openai": ("sk-",),
    "stripe": ("k_",),
    "aws": ("akia", "asia"),
    "github": ("gh",),
    "slack": ("xox",),
    "google": ("aiza",),
    "email": ("@",),
}
# Top-level fields widelog fills itself from validated sources (ids it made, configuration,
# W3C trace ids, the sampler's record): never scanned.
_OWN_FIELDS: Final = frozenset(
    {"event_id", "timestamp", "service", "env", "version", "instance", "trace_id", "span_id"}
    | {"parent_span_id", "sampling", "duration_ms", "redacted"}
)
EMAIL_PATTERN: Final = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# The shortest string any built-in pattern can match (`xoxb-` + 10; an e-mail `a@b.cd`): shorter
# strings, most of an event, skip the regex.
_MIN_TOKEN_CHARS: Final = 15
_MIN_EMAIL_CHARS: Final = 6
_MAX_CACHED_KEYS: Final = 4096  # key names repeat across events; a caller logging ids must not leak
_MAX_CACHED_TEXTS: Final = 4096
_MAX_CACHED_TEXT_CHARS: Final = 256
_WORDS: Final = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_NAME: Final = r"^[a-z][a-z0-9_]*$"

Name = Annotated[str, Field(pattern=_NAME, max_length=40)]


class RedactionPolicyError(ValueError):
    """The policy cannot be used; the message names the bad key (file path or env variable)."""


class RedactionPolicy(BaseModel):
    """What is a secret. Safe defaults: headers, secret field names and token-shaped values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Whole key segments, any case, `-` and `_` alike: request headers recorded by the app.
    headers: tuple[str, ...] = (
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
        "x-amz-security-token",
    )
    # A key segment is a secret when its words end with one of these (see the module docstring).
    fields: tuple[str, ...] = (
        "password",
        "passwd",
        "secret",
        "secret_key",
        "token",
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "authorization",
        "cookie",
        "credentials",
    )
    values: tuple[str, ...] = tuple(VALUE_PATTERNS)  # which built-in value patterns apply
    emails: bool = False  # personal data rather than a credential: on only when asked for
    patterns: dict[Name, str] = Field(default_factory=dict)  # your own: kind -> regex

    @field_validator("headers", "fields")
    @classmethod
    def _words_only(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _words(name):
                raise ValueError(f"{name!r} has no letters or digits to match")
        return names

    @field_validator("values")
    @classmethod
    def _known_values(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(kinds) - set(VALUE_PATTERNS))
        if unknown:
            raise ValueError(
                f"unknown value pattern {unknown} (known: {', '.join(VALUE_PATTERNS)})"
            )
        return kinds

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for kind, pattern in patterns.items():
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{kind}: not a regular expression: {exc}") from None
            if compiled.groupindex:
                raise ValueError(f"{kind}: named groups are not allowed (the marker names it)")
            if compiled.match(""):
                raise ValueError(f"{kind}: matches the empty string")
        return patterns


class Redactor:
    """A `RedactionPolicy` compiled once; `redact(doc)` scrubs a finalized event in place."""

    __slots__ = ("_headers", "_keys", "_literals", "_min_chars", "_suffixes", "_texts", "_values")

    def __init__(self, policy: RedactionPolicy) -> None:
        self._headers = {"-".join(_words(h)): f"[redacted:{h.lower()}]" for h in policy.headers}
        self._suffixes = [(_words(f), f"[redacted:{'_'.join(_words(f))}]") for f in policy.fields]
        alternatives = [(kind, VALUE_PATTERNS[kind]) for kind in policy.values]
        alternatives += list(policy.patterns.items())
        if policy.emails:
            alternatives.append(("email", EMAIL_PATTERN))
        # Your own patterns have no known literal: then every string long enough is scanned.
        self._literals = (
            None
            if policy.patterns
            else tuple({lit for kind, _ in alternatives for lit in _LITERALS[kind]})
        )
        self._values = (
            re.compile("|".join(f"(?P<{kind}>{regex})" for kind, regex in alternatives))
            if alternatives
            else None
        )
        # Your own patterns may match anything down to one character.
        self._min_chars = (
            1 if policy.patterns else _MIN_EMAIL_CHARS if policy.emails else _MIN_TOKEN_CHARS
        )
        self._keys: dict[str, str | None] = {}  # key segment -> its marker, None if not secret
        # Short strings that were clean: user agents, model names, routes repeat across events.
        self._texts: set[str] = set()

    def redact(self, doc: dict[str, Any]) -> int:
        """Scrub `doc` in place, add what was scrubbed to its `redacted` count; return the count."""
        count = self._scrub_dict(doc, skip=_OWN_FIELDS)
        if count:
            before = doc.get("redacted")
            doc["redacted"] = count + (before if type(before) is int else 0)
        return count

    def scrub(self, node: dict[str, Any] | list[Any]) -> int:
        """Scrub a dict or list (and everything in it) in place; return how many secrets."""
        return self._scrub_dict(node) if isinstance(node, dict) else self._scrub_list(node)

    def _scrub_dict(  # noqa: PLR0912 - the hot loop, its cases inlined on purpose
        self, node: dict[str, Any], skip: frozenset[str] = frozenset()
    ) -> int:
        # The hot loop of the scrub: exact-type checks and a cached verdict per key name, as
        # every kept event walks it (`isinstance` with unions costs more than the rest here).
        count = 0
        renamed: list[tuple[str, str]] = []
        verdicts, min_chars, clean = self._keys, self._min_chars, self._texts
        for key, value in node.items():
            marker = verdicts.get(key, _UNSEEN)
            if marker is _UNSEEN:
                marker = self.key_marker(key)
            if marker is None:
                # Most common first: strings (most are short, or known clean), then sub-documents.
                kind = type(value)
                if kind is str:
                    if len(value) >= min_chars and value not in clean and key not in skip:
                        scrubbed, found = self.scrub_text(value)
                        if found:
                            node[key] = scrubbed
                            count += found
                elif kind is dict:
                    if key not in skip:
                        count += self._scrub_dict(value)
                elif kind is int or kind is float or kind is bool or value is None or key in skip:
                    pass
                else:
                    count += self._scrub_item(node, key, value)
            elif value is not None and not isinstance(value, bool) and value != marker:
                node[key] = marker  # a value, not a key: the dict keeps its size while iterated
                count += 1
            if len(key) >= min_chars:  # a secret used as a key (a dict keyed by token)
                scrubbed, found = self.scrub_text(key)
                if found:
                    renamed.append((key, scrubbed))
                    count += found
        for key, scrubbed in renamed:
            node[scrubbed] = node.pop(key)
        return count

    def _scrub_list(self, node: list[Any]) -> int:
        return sum(self._scrub_item(node, index, value) for index, value in enumerate(node))

    def _scrub_item(self, container: Any, where: Any, value: Any) -> int:
        if isinstance(value, str):
            if len(value) < self._min_chars:
                return 0
            scrubbed, found = self.scrub_text(value)
            if found:
                container[where] = scrubbed
            return found
        if isinstance(value, dict):
            return self._scrub_dict(value)
        if isinstance(value, list):
            return self._scrub_list(value)
        return 0

    def scrub_text(self, text: str) -> tuple[str, int]:
        """`text` with each token-shaped secret replaced by its marker, and how many there were."""
        if self._values is None or len(text) < self._min_chars:
            return text, 0
        if text in self._texts:
            return text, 0
        if self._literals is not None:
            lowered = text.lower()
            for literal in self._literals:  # a loop, not any(): no generator per string
                if literal in lowered:
                    return self._values.subn(_marker, text)
            self._remember_clean(text)
            return text, 0
        scrubbed = self._values.subn(_marker, text)
        if not scrubbed[1]:
            self._remember_clean(text)
        return scrubbed

    def _remember_clean(self, text: str) -> None:
        if len(text) <= _MAX_CACHED_TEXT_CHARS:
            if len(self._texts) >= _MAX_CACHED_TEXTS:
                self._texts.clear()
            self._texts.add(text)

    def key_marker(self, key: str) -> str | None:
        """The marker replacing the value of a field named `key`, or None if it is no secret."""
        try:
            return self._keys[key]
        except KeyError:
            pass
        words = _words(key)
        marker = self._headers.get("-".join(words))
        if marker is None:
            marker = next(
                (m for suffix, m in self._suffixes if tuple(words[-len(suffix) :]) == suffix),
                None,
            )
        if len(self._keys) >= _MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[key] = marker
        return marker


_UNSEEN: Final = object()


def _marker(match: re.Match[str]) -> str:
    return f"[redacted:{match.lastgroup}]"


def _words(name: str) -> tuple[str, ...]:
    """`X-Api-Key` -> (x, api, key); `accessToken` -> (access, token); `APIKey` -> (api, key)."""
    return tuple(word.lower() for word in _WORDS.findall(name))
