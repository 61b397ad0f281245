"""The package layout holds: features never import the reference app, the CLI or the root."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "widelog"
FEATURES = ("events", "pipeline", "sampling", "incidents", "cache")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize(
    "path", modules(*FEATURES), ids=lambda p: p.relative_to(PACKAGE).as_posix()
)
def test_a_feature_module_imports_no_app_no_cli_and_no_composition_root(path):
    forbidden = ("widelog.chat", "widelog.cli", "widelog.bootstrap", "widelog._instrument")
    assert [] == sorted(m for m in imports_of(path) if m.startswith(forbidden))


def test_the_library_outside_the_reference_app_never_imports_it():
    library = [p for p in PACKAGE.rglob("*.py") if p.parent.name not in {"chat", "cli"}]
    offenders = {
        p.relative_to(PACKAGE).as_posix(): sorted(
            m for m in imports_of(p) if m.startswith("widelog.chat")
        )
        for p in library
    }
    assert {} == {path: found for path, found in offenders.items() if found}
