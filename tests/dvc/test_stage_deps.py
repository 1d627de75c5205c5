"""dvc.yaml cannot go stale: every stage's deps cover all the project code its script runs.

For each stage (matrix cells expanded), the script is the command's second word; its import closure (every
``equitune`` module it can import, lazily or not, and the package ``__init__`` files on the way) must lie under a
dep of the stage (a file, or a folder that contains it). Package data read at run time (the NLG word lists) lies
inside the package folders, so a folder dep covers it.

The package root ``src/equitune/__init__.py`` runs in every stage but is not a dep of any: it must hold nothing but
its docstring (checked here), so that no change to it can change a result.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.imports import closure
from helpers.paths import ROOT, dvc_commands


def _stages() -> dict[str, tuple[Path, list[Path]]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.name: (ROOT / dvc_commands()[stage.name][1],
                             [Path(dep.def_path) if Path(dep.def_path).is_absolute() else ROOT / dep.def_path
                              for dep in stage.deps])
                for stage in repo.index.stages}


STAGES = _stages()
PACKAGE_ROOT = ROOT / "src" / "equitune" / "__init__.py"


def _uncovered(script: Path, deps: list[Path]) -> list[str]:
    needed = [script, *sorted(closure(script) - {PACKAGE_ROOT})]
    return [str(f.relative_to(ROOT)) for f in needed if not any(f == d or f.is_relative_to(d) for d in deps)]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_the_import_closure(stage):
    script, deps = STAGES[stage]
    assert script.is_file(), f"{stage}: its script {script} does not exist"
    missing = _uncovered(script, deps)
    assert not missing, f"{stage}: runs project code its deps do not list: {missing}"


def test_the_check_sees_a_missing_package():
    """The check itself: without the experiment's package among the deps, a SCAN stage is reported."""
    script, deps = STAGES["scan_prepare"]
    without = [d for d in deps if d != ROOT / "src/equitune/scan"]
    assert len(without) == len(deps) - 1
    missing = _uncovered(script, without)
    assert "src/equitune/scan/splits.py" in missing and "src/equitune/scan/grammar.py" in missing


def test_the_package_root_holds_only_its_docstring():
    body = ast.parse(PACKAGE_ROOT.read_text()).body
    assert len(body) <= 1 and all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                                  for node in body), "src/equitune/__init__.py must stay a docstring only"
