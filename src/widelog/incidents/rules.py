"""Incident rules as data: what to group, by which fields, over which window, above which bar.

The rules are a TOML file (`WIDELOG_INCIDENTS_RULES`) plus a few `WIDELOG_INCIDENTS_*` overrides,
validated once at startup, so a bad rule fails the start naming the key instead of failing a
batch. Without a file the built-in `DEFAULT_RULES` apply; a file's `[[rules]]` replace them (the
example file `incidents.example.toml` spells the defaults out). `docs/incidents.md` explains each
field and the lifecycle.

A rule matches single events (`match`: every condition given must hold) and groups the matches by
`group_by` fields. A group becomes an incident when, in a sliding `window` of whole minutes, its
re-weighted count reaches `min_count` and/or its share of the re-weighted requests in its `scope`
reaches `min_rate`, and the scope saw at least `min_requests` requests (the volume guard).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from widelog.events.event import is_error
from widelog.incidents.masking import mask

MESSAGE_FIELD: Final = "message"  # pseudo-field: the masked `error.message`
MAX_KEY_CHARS: Final = 200
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_FIELD = r"^(?:message|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)$"


class IncidentRulesError(ValueError):
    """The rules cannot be used; the message names the bad key (file path or env variable)."""


def parse_duration(value: object) -> int:
    """Whole seconds from `90`, `"90s"`, `"5m"`, `"1h30m"` or `"2d"`; `ValueError` otherwise."""
    if isinstance(value, bool):
        # ValueError, not TypeError: pydantic reports only ValueError as a validation error.
        raise ValueError("a duration is a number of seconds or a string such as '5m'")  # noqa: TRY004
    if isinstance(value, int | float):
        if not math.isfinite(value) or value != int(value) or value < 0:
            raise ValueError(f"{value!r} is not a whole, non-negative number of seconds")
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.isdigit():
            return int(text)
        found = _DURATION.match(text)
        if text and found:
            days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
            return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    raise ValueError(f"{value!r} is not a duration such as '90s', '5m', '1h30m' or '2d'")


Seconds = Annotated[int, BeforeValidator(parse_duration)]
FieldPath = Annotated[str, Field(pattern=_FIELD, max_length=128)]
Glob = Annotated[str, Field(min_length=1, max_length=256)]
Scalar = str | int | float | bool


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Section):
    """Conditions on one event; every one that is given must hold."""

    error: bool | None = None  # True: an error.code, or a 5xx (the project's one definition)
    error_codes: tuple[Glob, ...] = ()  # fnmatch globs on error.code
    exclude_error_codes: tuple[Glob, ...] = ()
    status_at_least: Annotated[int, Field(ge=100, le=599)] | None = None
    status_below: Annotated[int, Field(ge=100, le=600)] | None = None
    duration_ms_over: Annotated[float, Field(gt=0)] | None = None
    routes: tuple[Glob, ...] = ()  # fnmatch globs on http.route
    where: dict[FieldPath, tuple[Scalar, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_everything(self) -> Match:
        given = (
            self.error is not None
            or self.error_codes
            or self.exclude_error_codes
            or self.status_at_least is not None
            or self.status_below is not None
            or self.duration_ms_over is not None
            or self.routes
            or self.where
        )
        if not given:
            raise ValueError(
                "a rule must match something: set error, error_codes, status_at_least, "
                "duration_ms_over, routes or where (matching every request is never an incident)"
            )
        return self


class Rule(_Section):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    description: Annotated[str, Field(max_length=300)] = ""
    match: Match
    group_by: tuple[FieldPath, ...] = ("error.code", "http.route")
    scope: tuple[FieldPath, ...] | None = None  # default: group_by minus error.* and message
    window: Seconds = 300
    quiet: Seconds = 900
    min_count: Annotated[float, Field(ge=1)] | None = None
    min_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    min_requests: Annotated[float, Field(ge=0)] = 20
    resolve_below: Annotated[float, Field(gt=0, le=1)] = 0.5  # x min_rate: resolves an incident
    # Rules whose signals an open incident of this rule explains: an event that both match counts
    # toward this rule's incident, and their groups become its facets instead of incidents.
    explains: tuple[str, ...] = ()

    @field_validator("group_by")
    @classmethod
    def _distinct_fields(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
        if not fields:
            raise ValueError("group_by needs at least one field")
        if len(set(fields)) != len(fields):
            raise ValueError(f"group_by lists a field twice: {list(fields)}")
        return fields

    @field_validator("window")
    @classmethod
    def _whole_minutes(cls, window: int) -> int:
        if window % 60 or not 60 <= window <= 86_400:
            raise ValueError("window must be whole minutes, from 1m to 24h (counts are per minute)")
        return window

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.min_count is None and self.min_rate is None:
            raise ValueError("set min_count, min_rate or both")
        if self.quiet < self.window or self.quiet > 7 * 86_400:
            raise ValueError(
                "quiet must be at least the window (or a resolved incident's own events would "
                "reopen it) and at most 7d"
            )
        outside = [field for field in self.rate_scope if field not in self.group_by]
        if outside:
            raise ValueError(f"scope fields must be group_by fields too: {outside}")
        if self.id in self.explains:
            raise ValueError(f"a rule cannot explain itself: {self.id!r} in explains")
        return self

    @property
    def rate_scope(self) -> tuple[str, ...]:
        """The fields whose values define the requests a group's rate is a share of."""
        if self.scope is not None:
            return self.scope
        return tuple(f for f in self.group_by if not f.startswith("error.") and f != MESSAGE_FIELD)

    def snapshot(self) -> dict[str, Any]:
        """What an incident records about the rule that opened it (rules change; it must not)."""
        return {
            "id": self.id,
            "description": self.description,
            "group_by": list(self.group_by),
            "scope": list(self.rate_scope),
            "window_s": self.window,
            "quiet_s": self.quiet,
            "min_count": self.min_count,
            "min_rate": self.min_rate,
            "min_requests": self.min_requests,
            "resolve_below": self.resolve_below,
        }


CLIENT_ERROR_CODES: Final = ("VALIDATION_ERROR", "MESSAGE_TOO_LARGE")

DEFAULT_RULES: Final = (
    Rule(
        id="errors",
        description="requests failing with the same error code on the same route",
        match=Match(error=True, exclude_error_codes=CLIENT_ERROR_CODES),
        group_by=("error.code", "http.route"),
        min_count=10,
        min_rate=0.005,
        min_requests=20,
        explains=("latency", "llm_provider"),
    ),
    Rule(
        id="client_errors",
        description="a large share of a route's requests rejected as invalid by the API",
        match=Match(error_codes=CLIENT_ERROR_CODES),
        group_by=("error.code", "http.route"),
        min_count=20,
        min_rate=0.2,
        min_requests=50,
    ),
    Rule(
        id="latency",
        description="a route where more than 5% of requests take longer than 2 s",
        match=Match(duration_ms_over=2000),
        group_by=("http.route",),
        min_count=10,
        min_rate=0.05,
        min_requests=50,
    ),
    Rule(
        id="llm_provider",
        description="an LLM provider and model failing a large share of calls",
        match=Match(error_codes=("LLM_*",)),
        group_by=("llm.provider", "llm.model"),
        min_count=10,
        min_rate=0.1,
        min_requests=50,
    ),
)


class IncidentRules(_Section):
    """The whole rule set; `fingerprint` says exactly which rules an incident was judged by."""

    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "1"
    enabled: bool = True
    lateness: Seconds = 120  # how late an event may arrive and still keep its incident open
    # How long the facts of groups that never opened are kept, past the longest window or quiet
    # period and the lateness (the per-minute counts are kept only that long).
    count_retention: Seconds = 6 * 3600
    disabled_rules: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = DEFAULT_RULES

    @model_validator(mode="after")
    def _known_ids(self) -> IncidentRules:
        ids = [rule.id for rule in self.rules]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"rule ids must be unique: {twice}")
        unknown = sorted(set(self.disabled_rules) - set(ids))
        if unknown:
            raise ValueError(f"disabled_rules names unknown rules {unknown} (known: {ids})")
        for rule in self.rules:
            unknown = sorted(set(rule.explains) - set(ids))
            if unknown:
                raise ValueError(
                    f"rule {rule.id!r} explains unknown rules {unknown} (known: {ids})"
                )
        judging_order(self.rules)  # raises on a cycle
        return self

    @property
    def active(self) -> tuple[Rule, ...]:
        if not self.enabled:
            return ()
        return tuple(rule for rule in self.rules if rule.id not in self.disabled_rules)

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return f"{self.version}:{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def judging_order(rules: Sequence[Rule]) -> tuple[str, ...]:
    """Rule ids with every rule after the rules that explain it (explainers are judged first).

    A cycle has no such order, and is an error: each rule would wait for the other.
    """
    waiting = {r.id: {e.id for e in rules if r.id in e.explains} for r in rules}
    order: list[str] = []
    while waiting:
        ready = sorted(rid for rid, explainers in waiting.items() if not explainers)
        if not ready:
            raise ValueError(f"explains must not form a cycle: {sorted(waiting)}")
        order += ready
        for rid in ready:
            del waiting[rid]
        for explainers in waiting.values():
            explainers.difference_update(ready)
    return tuple(order)


def field_value(doc: Mapping[str, Any], path: str) -> str | None:
    """The value at a dot path as a short string (`None` when absent): what keys are made of."""
    if path == MESSAGE_FIELD:
        error = doc.get("error")
        message = error.get("message") if isinstance(error, Mapping) else None
        return mask(message) if isinstance(message, str) else None
    node: Any = doc
    for segment in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(segment)
    if node is None:
        return None
    if isinstance(node, bool):
        text = "true" if node else "false"
    elif isinstance(node, str | int | float):
        text = str(node)
    else:
        text = json.dumps(node, sort_keys=True, default=str)
    return text[:MAX_KEY_CHARS]


Key = tuple[tuple[str, str | None], ...]  # ((field, value), ...) in group_by order


# Both ids are asked for every event and rule, and a few groups get most events: cached.
@functools.lru_cache(maxsize=4096)
def incident_id(rule_id: str, key: Key) -> str:
    """Deterministic: every worker computes the same id for a group, so there is one incident."""
    text = json.dumps([rule_id, [list(pair) for pair in key]], separators=(",", ":"))
    return "inc_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def scope_id(key: Key) -> str:
    text = json.dumps([list(pair) for pair in key], separators=(",", ":"))
    return "scope_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class CompiledRule:
    """A rule resolved once (globs compiled) so matching an event only compares."""

    __slots__ = ("_codes", "_exclude", "_routes", "_where", "rule", "scope_fields")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.scope_fields = rule.rate_scope
        match = rule.match
        self._codes = _globs(match.error_codes)
        self._exclude = _globs(match.exclude_error_codes)
        self._routes = _globs(match.routes)
        self._where = {
            path: {field_value({"v": v}, "v") for v in values}
            for path, values in match.where.items()
        }

    def matches(self, doc: Mapping[str, Any]) -> bool:  # noqa: PLR0911 - one exit per condition
        match = self.rule.match
        error = doc.get("error")
        code = error.get("code") if isinstance(error, Mapping) else None
        code = code if isinstance(code, str) and code else None
        if match.error is not None and is_error(doc) != match.error:
            return False
        if self._codes is not None and (code is None or not self._codes.match(code)):
            return False
        if self._exclude is not None and code is not None and self._exclude.match(code):
            return False
        http = doc.get("http")
        http = http if isinstance(http, Mapping) else {}
        status = http.get("status")
        status = status if isinstance(status, int) and not isinstance(status, bool) else None
        if match.status_at_least is not None and (status is None or status < match.status_at_least):
            return False
        if match.status_below is not None and (status is None or status >= match.status_below):
            return False
        if match.duration_ms_over is not None:
            duration = doc.get("duration_ms")
            if not isinstance(duration, int | float) or not duration > match.duration_ms_over:
                return False
        if self._routes is not None:
            route = http.get("route")
            if not isinstance(route, str) or not self._routes.match(route):
                return False
        return all(field_value(doc, path) in allowed for path, allowed in self._where.items())

    def key(self, doc: Mapping[str, Any]) -> Key:
        return tuple((path, field_value(doc, path)) for path in self.rule.group_by)

    def scope_key(self, doc: Mapping[str, Any]) -> Key:
        return tuple((path, field_value(doc, path)) for path in self.scope_fields)
