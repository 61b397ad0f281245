"""Exit codes, and the one place that turns an expected failure into lines a person can act on.

A wrong setting or an unreachable store is not a bug in widelog: the person who ran the command
needs to know what failed, where, and what to do, not 280 lines of driver traceback. Anything
`explain` does not recognize is a bug, and keeps its traceback (so does everything with `--debug`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import typer

from widelog._extras import MissingExtraError
from widelog.config import SettingsError
from widelog.incidents.rules import IncidentRulesError
from widelog.sampling.policy import SamplingPolicyError

OK: Final = 0
FAILED: Final = 1  # the command ran and found a problem (the demo lost events, no such incident)
BAD_CONFIG: Final = 2  # a setting, option, policy or rules file is wrong: fix it and run again
UNREACHABLE: Final = 3  # a store, broker or Redis the command needs did not answer at start


class Unreachable(Exception):  # noqa: N818 - reads as what happened, like `TimeoutError`
    """A dependency did not answer: what it is, where (no credentials), why, and what to do."""

    def __init__(self, what: str, where: str, *, reason: str, hint: str) -> None:
        super().__init__(f"{what} at {where} is not reachable: {reason}\n  {hint}")


@dataclass(frozen=True, slots=True)
class Failure:
    exit_code: int
    message: str  # one or two plain lines, no markup


# (exception, exit code, what to put before its message); the first match wins.
_KNOWN: Final[tuple[tuple[type[BaseException], int, str], ...]] = (
    (Unreachable, UNREACHABLE, ""),
    (MissingExtraError, BAD_CONFIG, ""),  # its message is the pip install line
    (SettingsError, BAD_CONFIG, "invalid settings: "),
    (SamplingPolicyError, BAD_CONFIG, "invalid sampling policy: "),
    (IncidentRulesError, BAD_CONFIG, "invalid incident rules: "),
    (typer.Abort, FAILED, "aborted"),
)


def explain(exc: BaseException) -> Failure | None:
    """The exit code and message for an expected failure; None for a bug (show the traceback)."""
    if isinstance(exc, typer.TyperException):  # typer's (vendored click's) usage errors
        return _usage(exc)
    for kind, exit_code, what in _KNOWN:
        if isinstance(exc, kind):
            return Failure(exit_code, f"error: {what}{exc}")
    return None


def _usage(exc: typer.TyperException) -> Failure:
    message = exc.format_message()
    if not message:  # a group run without a command: typer has printed its help already
        return Failure(exc.exit_code, "")
    command = getattr(getattr(exc, "ctx", None), "command_path", None)  # usage errors have one
    if not command:
        return Failure(exc.exit_code, f"error: {message}")
    return Failure(exc.exit_code, f"error: {command}: {message}\n  see `{command} --help`")
