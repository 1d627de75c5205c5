"""The layout shows the architecture: core <- pipeline <- experiments (images, scan, nlg) <- params.

- Imports go one way: the core imports only torch (and the standard library); the pipeline plumbing never imports
  an experiment; an experiment never imports another experiment; there is no import cycle between modules.
- Checked twice: statically (every import statement in the source, lazy ones included) and by importing each
  package in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.imports import SRC, module_name, package_files, project_imports

LAYERS = {
    "core": set(),
    "pipeline": {"core"},
    "images": {"core", "pipeline"},
    "scan": {"core", "pipeline"},
    "nlg": {"core", "pipeline"},
    "params": {"core", "pipeline", "images", "scan", "nlg"},
    # Tools for users of the library, beside the experiments: none of them is a stage dependency.
    "export": {"core"},  # torch.export / ONNX of a wrapped model
    "diagnose": {"core"},  # where a model stops being equivariant
    "hf": {"core", "nlg"},  # EquiLM as a transformers model that generate() drives
}
"""Package -> the project packages it may import."""



def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "equitune"


def test_every_module_belongs_to_a_known_package():
    unknown = {module_name(p) for p in package_files() if _package(module_name(p)) not in {*LAYERS, "equitune"}}
    assert not unknown, f"modules outside the known packages {sorted(LAYERS)}: {sorted(unknown)}"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_one_way(path):
    own = _package(module_name(path))
    allowed = LAYERS.get(own, set()) | {own}
    bad = sorted(m for m in project_imports(path) if _package(m) not in allowed and m != "equitune")
    assert not bad, f"{path.relative_to(SRC)} ({own}) imports {bad}; {own} may import only {sorted(allowed)}"


def test_no_import_cycle_between_modules():
    graph = {module_name(p): {m for m in project_imports(p)} for p in package_files()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt.startswith(node + "."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])


def _loaded_after_import(package: str, submodules: bool = True) -> list[str]:
    """Every module in sys.modules after importing ``package`` (and all its submodules) in a fresh interpreter."""
    code = ("import importlib, json, pkgutil, sys\n"
            f"pkg = importlib.import_module({package!r})\n"
            f"for info in pkgutil.walk_packages(getattr(pkg, '__path__', []) if {submodules} else [], pkg.__name__ + '.'):\n"
            "    importlib.import_module(info.name)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["core", "pipeline", "images", "scan", "nlg", "export", "diagnose", "hf"])
def test_importing_a_package_loads_nothing_unrelated(package):
    loaded = _loaded_after_import(f"equitune.{package}")
    project = {m.split(".")[1] for m in loaded if m.startswith("equitune.")}
    unrelated = project - LAYERS[package] - {package}
    assert not unrelated, f"importing equitune.{package} (all its modules) loaded {sorted(unrelated)}"
    if package == "core":
        tops = {m.split(".")[0] for m in loaded}
        torch_alone = {m.split(".")[0] for m in _loaded_after_import("torch", submodules=False)}
        extra = sorted(tops - torch_alone - set(sys.stdlib_module_names) - {"equitune"})
        assert not extra, f"the core must need only torch; importing it also loaded {extra}"


def test_the_library_alone_needs_only_torch():
    import tomllib

    from helpers.paths import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["torch"]
    assert {"pipeline", "nlg", "dev"} <= set(project["optional-dependencies"])
