"""Optional dependencies: which extra brings which module, and one clear error when one is missing.

`pip install widelog` brings what an instrumented app needs with the embedded pipeline (the event,
the middleware, sampling, the SQLite store). Drivers and the command line are extras, imported only
by the builder that needs them, inside `with extra(...)`, so choosing one that is not installed
fails when the pipeline is built, with the `pip install` line that fixes it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

# extra -> {top-level module it brings: the distribution to name in the message}
EXTRAS: Final[Mapping[str, Mapping[str, str]]] = {
    "kafka": {"confluent_kafka": "confluent-kafka"},
    "redis": {"redis": "redis"},
    "mongo": {"pymongo": "pymongo", "bson": "pymongo"},
    "server": {
        "typer": "typer",
        "rich": "rich",
        "fastapi": "fastapi",
        "starlette": "fastapi",
        "uvicorn": "uvicorn",
        "httpx": "httpx",
    },
}


class MissingExtraError(ImportError):
    """A chosen adapter or command whose extra is not installed.

    An `ImportError`, not a `SettingsError`: the settings are valid, the installation is not
    complete, and the fix is `pip install`, not a different variable. Code that already guards an
    optional feature with `except ImportError` keeps working; the original `ModuleNotFoundError`
    is its `__cause__`.
    """


@contextmanager
def extra(name: str, *, needed_by: str) -> Iterator[None]:
    """Turn a missing module of extra `name` into a `MissingExtraError` saying what needs it.

    Only the extra's own modules are translated: any other missing module is a bug (ours or a
    broken install) and propagates as it is.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        distribution = EXTRAS[name].get((exc.name or "").partition(".")[0])
        if distribution is None:
            raise
        raise MissingExtraError(
            f"{needed_by} needs {distribution}: pip install 'widelog[{name}]'", name=exc.name
        ) from exc
