"""Loading the policies (sampling, incidents, redaction): a TOML file plus `WIDELOG_<KIND>_*`.

The domain models only validate; this is the one place that reads files and the environment, so
both policies fail a start the same way: naming the file or variable and the bad key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from widelog.config import incident_settings
from widelog.events.redaction import RedactionPolicy, RedactionPolicyError
from widelog.incidents.rules import IncidentRules, IncidentRulesError
from widelog.sampling.policy import SamplingPolicy, SamplingPolicyError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class PolicyKind(Generic[M]):
    """How one policy is found and overridden."""

    what: str  # in messages: "sampling policy"
    model: type[M]
    error: type[ValueError]
    path_env: str  # names the TOML file
    overrides: Mapping[str, tuple[str, ...]]  # variable -> key path in the policy
    lists: frozenset[str]  # variables whose value is a comma-separated list
    elsewhere: frozenset[str] = frozenset()  # variables with the prefix that `Settings` reads

    @property
    def prefix(self) -> str:
        return self.path_env.rsplit("_", 1)[0] + "_"


SAMPLING: Final = PolicyKind(
    what="sampling policy",
    model=SamplingPolicy,
    error=SamplingPolicyError,
    path_env="WIDELOG_SAMPLING_POLICY",
    overrides={
        "WIDELOG_SAMPLING_VERSION": ("version",),
        "WIDELOG_SAMPLING_SALT": ("salt",),
        "WIDELOG_SAMPLING_DRY_RUN": ("dry_run",),
        "WIDELOG_SAMPLING_ERROR_STATUSES": ("error", "statuses"),
        "WIDELOG_SAMPLING_SLOW_THRESHOLD_MS": ("slow", "threshold_ms"),
        "WIDELOG_SAMPLING_CRITICAL_ROUTES": ("critical", "routes"),
        "WIDELOG_SAMPLING_FORCED_ALLOWED": ("forced", "allowed"),
        "WIDELOG_SAMPLING_BASELINE_RATE": ("baseline", "rate"),
    },
    lists=frozenset({"WIDELOG_SAMPLING_ERROR_STATUSES", "WIDELOG_SAMPLING_CRITICAL_ROUTES"}),
)
INCIDENTS: Final = PolicyKind(
    what="incident rules",
    model=IncidentRules,
    error=IncidentRulesError,
    path_env="WIDELOG_INCIDENTS_RULES",
    overrides={
        "WIDELOG_INCIDENTS_ENABLED": ("enabled",),
        "WIDELOG_INCIDENTS_LATENESS": ("lateness",),
        "WIDELOG_INCIDENTS_DISABLED_RULES": ("disabled_rules",),
    },
    lists=frozenset({"WIDELOG_INCIDENTS_DISABLED_RULES"}),
    elsewhere=incident_settings(),  # the notifications' webhook and its options
)
REDACTION: Final = PolicyKind(
    what="redaction policy",
    model=RedactionPolicy,
    error=RedactionPolicyError,
    path_env="WIDELOG_REDACTION_POLICY",
    overrides={
        "WIDELOG_REDACTION_ENABLED": ("enabled",),
        "WIDELOG_REDACTION_HEADERS": ("headers",),
        "WIDELOG_REDACTION_FIELDS": ("fields",),
        "WIDELOG_REDACTION_VALUES": ("values",),
        "WIDELOG_REDACTION_EMAILS": ("emails",),
    },
    lists=frozenset(
        {"WIDELOG_REDACTION_HEADERS", "WIDELOG_REDACTION_FIELDS", "WIDELOG_REDACTION_VALUES"}
    ),
)


def load_sampling_policy(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> SamplingPolicy:
    """The file at `path` (else the one `WIDELOG_SAMPLING_POLICY` names, else defaults) + env."""
    return load_policy(SAMPLING, path, environ)


def load_incident_rules(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> IncidentRules:
    """The file at `path` (else the one `WIDELOG_INCIDENTS_RULES` names, else defaults) + env."""
    return load_policy(INCIDENTS, path, environ)


def load_redaction_policy(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> RedactionPolicy:
    """The file at `path` (else the one `WIDELOG_REDACTION_POLICY` names, else defaults) + env."""
    return load_policy(REDACTION, path, environ)


def load_policy(
    kind: PolicyKind[M], path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> M:
    """The policy of `kind`, or `kind.error` naming the file or variable and the bad key.

    `environ` (default: the process's) may hold anything: only `kind`'s prefix is read, and an
    unknown name with that prefix is refused (a typo must not silently keep the default).
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(kind.path_env):
        path = environ[kind.path_env]
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path), kind)
    from_env = _apply_overrides(raw, environ, kind)
    try:
        return kind.model.model_validate(raw)
    except ValidationError as exc:
        sources = [str(path)] if path is not None else []
        if from_env:
            sources.append("environment")
        raise kind.error(_describe(exc, raw, " + ".join(sources), from_env, kind)) from None


def _read_toml(path: Path, kind: PolicyKind[Any]) -> dict[str, Any]:
    if path.suffix.lower() in {".yaml", ".yml"}:
        raise kind.error(f"{path}: write the {kind.what} in TOML (YAML needs a dependency)")
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise kind.error(f"cannot read {kind.what} {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise kind.error(f"{path}: not valid TOML: {exc}") from None


def _apply_overrides(
    raw: dict[str, Any], environ: Mapping[str, str], kind: PolicyKind[Any]
) -> dict[tuple[str, ...], str]:
    """Write `kind`'s variables into `raw`; return which policy key each one set."""
    applied: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if not name.startswith(kind.prefix) or name == kind.path_env or name in kind.elsewhere:
            continue
        keys = kind.overrides.get(name)
        if keys is None:
            known = ", ".join([kind.path_env, *kind.overrides, *sorted(kind.elsewhere)])
            raise kind.error(f"unknown setting {name} for the {kind.what} (known: {known})")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise kind.error(f"{name}: {kind.what} key {key!r} is not a table")
            node = child
        parsed: Any = value
        if name in kind.lists:
            parsed = [item.strip() for item in value.split(",") if item.strip()]
        node[keys[-1]] = parsed
        applied[keys] = name
    return applied


def _describe(
    exc: ValidationError,
    raw: Mapping[str, Any],
    source: str,
    from_env: Mapping[tuple[str, ...], str],
    kind: PolicyKind[Any],
) -> str:
    """One line per error, naming the variable that set the key, and list items by their `id`."""
    lines = [f"invalid {kind.what} ({source or 'defaults'}):"]
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = _key_name(loc, raw)
        env = next((name for keys, name in from_env.items() if loc[: len(keys)] == keys), None)
        if not loc:  # a check across fields: name the variable whose key the message names
            env = next((name for keys, name in from_env.items() if keys[-1] in error["msg"]), None)
        where = f"{env} ({key})" if env else key
        got = repr(error.get("input"))
        lines.append(f"  {where}: {error['msg']} (got {got[:80]})")
    return "\n".join(lines)


def _key_name(loc: tuple[str, ...], raw: Mapping[str, Any]) -> str:
    """`rules[2] (slow-chat).window` rather than `rules.2.window`, when the item has an id."""
    if len(loc) >= 2 and loc[1].isdigit() and isinstance(raw.get(loc[0]), list):
        items, index = raw[loc[0]], int(loc[1])
        item = items[index] if index < len(items) else None
        if isinstance(item, Mapping) and "id" in item:
            return f"{loc[0]}[{index}] ({item['id']})" + "".join(f".{p}" for p in loc[2:])
    return ".".join(loc) or "<policy>"
