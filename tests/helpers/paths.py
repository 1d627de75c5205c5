"""Where the repository is, and the stage scripts' ``main`` functions, for the tests."""

from __future__ import annotations

import functools
import importlib.util
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""


def load_script(path: Path, name: str | None = None, *, register: bool = False) -> ModuleType:
    """A script loaded as a module by its path (scripts are not a package, and no script imports another), named
    ``name`` (default: the file's stem); ``register`` puts it in ``sys.modules`` first, for code that looks itself up
    there (pydantic resolving a model's annotations)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stage_main(script: str) -> Callable:
    """``main`` of a stage script, e.g. ``stage_main("scan/tune")`` for pipelines/scan/tune.py."""
    return load_script(ROOT / "pipelines" / f"{script}.py", f"stage_{script.replace('/', '_')}").main


@functools.cache
def dvc_commands() -> dict[str, list[str]]:
    """Every stage of dvc.yaml (matrix cells expanded from params.yaml) -> its command, split into words."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        # `addressing` is relative to the working directory; the name is what `dvc repro NAME` takes.
        return {stage.name: shlex.split(stage.cmd) for stage in repo.index.stages}


def stage_argv(stage: str, **overrides: str) -> list[str]:
    """The arguments dvc.yaml passes to ``stage``'s script (``scan_tune@add_jump-gru-0``), after the script name;
    ``overrides`` replace option values (``seed="7"`` replaces ``--seed``'s)."""
    words = dvc_commands()[stage]
    if words[:1] != ["python"] or not words[1].startswith("pipelines/"):
        raise ValueError(f"{stage}: expected 'python pipelines/...'; got {words[:2]}")
    argv = words[2:]
    for name, value in overrides.items():
        option = "--" + name.replace("_", "-")
        if option not in argv:
            raise ValueError(f"{stage}'s command has no {option}")
        argv[argv.index(option) + 1] = value
    return argv


def profile_data(name: str) -> dict:
    """The params mapping of a profile: params.yaml for ``default``, else params.yaml + profiles/<name>.yaml."""
    import yaml

    from equitune.params import compose

    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    if name == "default":
        return default
    return compose(default, yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text()))


def profile_params(name: str):
    """The validated params of a profile (see :func:`profile_data`)."""
    from equitune.params import validate

    return validate(profile_data(name), name)
