"""The wheel installs with torch alone and runs the README's example and the first tutorial.

``pip install equitune`` promises a library whose only dependency is torch. This test builds the wheel from the
package's files, checks its metadata (version, ``py.typed``, torch as the one unconditional requirement), creates a
virtual environment *without* the system's site-packages, and makes exactly the distributions torch needs visible
in it (torch and its own requirements, from their installed metadata, linked into one folder on the venv's path:
installing a second 5 GB copy of torch from the cache would add minutes and prove nothing more). ``pip install
--no-index`` of the wheel must then succeed, which it cannot if the wheel requires anything else, and the README's
library example and ``docs/tutorials/invariant_classifier.py`` run against the installed package, outside the
repository, where no pipeline package (mlflow, dvc, transformers, torchvision, numpy...) can be imported.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers.paths import ROOT

pytestmark = pytest.mark.slow

PIPELINE_ONLY = ("mlflow", "dvc", "transformers", "torchvision", "numpy", "pydantic", "yaml", "onnx")


def _torch_closure() -> dict[str, object]:
    """torch and every distribution it requires on this platform (extras such as cuda-toolkit[cudart] included)."""
    todo, found, visited = [("torch", frozenset())], {}, set()
    while todo:
        name, extras = todo.pop()
        dist = distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if (key, extras) in visited:
            continue
        visited.add((key, extras))
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))
            if wanted:
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def _link_torch_alone(target: Path) -> None:
    """Symlink the top-level files and folders of torch's closure (and their .dist-info) into ``target``."""
    target.mkdir()
    for dist in _torch_closure().values():
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            link = target / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", str(dist), str(source)])
    (wheel_file,) = dist.glob("equitune-*.whl")
    return wheel_file


def _version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_wheel_declares_torch_alone_and_ships_its_type_marker(wheel):
    version = _version()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert wheel.name.startswith(f"equitune-{version}-")
    assert "equitune/py.typed" in names and "equitune/core/wrappers.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    requires = [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    unconditional = [r.name for r in requires if r.marker is None]
    assert unconditional == ["torch"], unconditional
    assert {"pipeline", "nlg", "export", "docs", "dev"} <= {
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}


def test_the_wheel_installs_with_torch_alone_and_runs_the_readme_and_the_first_tutorial(wheel, tmp_path):
    venv = tmp_path / "venv"
    # No --system-site-packages (nothing of this environment) and no pip or setuptools of its own (an old bundled
    # setuptools would shadow torch's requirement): this environment's pip installs into it with --python.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    _link_torch_alone(tmp_path / "torch-alone")
    (site / "torch_alone.pth").write_text(str(tmp_path / "torch-alone") + "\n")

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    # --no-index: the wheel's requirements must all be met by what is there, i.e. torch's closure.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--disable-pip-version-check",
          str(wheel)], env={**env, "PATH": os.environ["PATH"]})

    outside = tmp_path / "elsewhere"  # not the repository: its src/ must not shadow the installed package
    outside.mkdir()
    check = textwrap.dedent(f"""
        import importlib.metadata, importlib.util, pathlib, equitune
        assert pathlib.Path(equitune.__file__).is_relative_to({str(site)!r}), equitune.__file__
        assert importlib.metadata.version("equitune") == {_version()!r}
        importable = [m for m in {PIPELINE_ONLY!r} if importlib.util.find_spec(m) is not None]
        assert not importable, f"not a torch-alone environment: {{importable}}"
        print(importlib.metadata.version("equitune"))
    """)
    _run([str(python), "-c", check], cwd=outside, env=env)

    readme = textwrap.dedent("""
        import torch
        from torch import nn
        torch.manual_seed(0)
        pretrained = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        images = torch.randn(2, 3, 8, 8)
    """) + _readme_example()
    printed = _run([str(python), "-c", readme], cwd=outside, env=env).stdout.split()
    assert len(printed) == 1 and float(printed[0]) < 1e-5

    tutorial = ROOT / "docs" / "tutorials" / "invariant_classifier.py"
    shutil.copy(tutorial, outside / tutorial.name)
    _run([str(python), tutorial.name], cwd=outside, env=env)


def _readme_example() -> str:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## The library in three lines", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
