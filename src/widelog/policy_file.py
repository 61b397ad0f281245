"""Reading a policy file (sampling, incidents): TOML, with errors that name the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: Path | str, *, what: str, error: type[Exception]) -> dict[str, Any]:
    """The file's table; `error` (naming `what` and the path) if it cannot be read or parsed."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
