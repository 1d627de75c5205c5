"""The project's import graph, read from the source (ast), for the layout and stage-deps tests.

Every ``import`` statement counts, also those inside functions: a lazy import is still code the caller runs.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from helpers.paths import ROOT

SRC = ROOT / "src"


def module_file(module: str) -> Path | None:
    """The file of an ``equitune`` module (``equitune.core`` -> src/equitune/core/__init__.py), else None."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, package: str | None) -> set[str]:
    """Absolute module names imported by the file at ``path`` (``package``: its package, for relative imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    raise ValueError(f"{path}: relative import outside a package")
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            # `from package import module` imports a submodule
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


@functools.cache
def project_imports(path: Path) -> frozenset[str]:
    """The ``equitune`` modules that the file at ``path`` imports directly (only those that exist as files)."""
    is_package_file = path.is_relative_to(SRC)
    package = None
    if is_package_file:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for name in _imported_names(path, package):
        if name == "equitune" or name.startswith("equitune."):
            if module_file(name) is not None:
                found.add(name)
    return frozenset(found)


def closure(path: Path) -> set[Path]:
    """Every project file that running the file at ``path`` can import (package ``__init__`` files included)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in project_imports(current):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                file = module_file(".".join(parts[:i]))
                if file is not None:
                    todo.append(file)
    seen.discard(path)
    return seen


def package_files() -> list[Path]:
    return sorted((SRC / "equitune").rglob("*.py"))
