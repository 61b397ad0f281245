"""The `widelog` command. It needs `pip install 'widelog[server]'`; the library does not."""

from __future__ import annotations

import sys

from widelog._extras import MissingExtraError, extra


def main() -> None:
    """Run the command line, or say in one line which extra is missing (exit 2, no traceback).

    The console script points here rather than at the typer app so that `widelog` without
    `[server]` explains itself; a command that needs another extra (`WIDELOG_TRANSPORT=kafka
    widelog worker` without `[kafka]`) ends the same way.
    """
    try:
        with extra("server", needed_by="the widelog command"):
            from widelog.cli.main import main as run  # noqa: PLC0415 - checked, before typer loads

        run()
    except MissingExtraError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
