"""The documentation site builds strictly, every tutorial runs and asserts what it shows, and pages stay true.

- ``mkdocs build --strict``: a broken link, a page missing from the navigation, an API object that no longer
  exists or a tutorial marker naming a missing script fails the build;
- every script in ``docs/tutorials/`` runs from the repository root in a fresh interpreter and exits 0 (each one
  asserts its own claims), has exactly one page, and its page is in the navigation;
- the site's library example is the README's, and every repository path the pages name in backticks exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from helpers.paths import ROOT

DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.py"))


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_config() -> dict:
    # mkdocs.yml uses no custom YAML tags, so the safe loader reads it.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 4, [p.name for p in TUTORIALS]


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_and_asserts_its_claims(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    source = script.read_text(encoding="utf-8")
    assert source.lstrip().startswith('"""# '), f"{script.name} must start with a Markdown docstring titled '# ...'"
    assert re.search(r"\bassert(_\w+)?\b|\.assert_close\(", source), f"{script.name} asserts nothing"


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.stem)
def test_every_tutorial_has_one_page_in_the_navigation(script):
    marker = f"<!-- tutorial: tutorials/{script.name} -->"
    pages = [p for p in DOCS.rglob("*.md") if marker in p.read_text(encoding="utf-8")]
    assert len(pages) == 1, f"{script.name}: pages with its marker: {pages}"
    nav = _nav_pages(_mkdocs_config()["nav"])
    assert pages[0].relative_to(DOCS).as_posix() in nav


def test_every_page_is_in_the_navigation():
    nav = set(_nav_pages(_mkdocs_config()["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == nav, f"pages not in nav: {sorted(pages - nav)}; nav entries without a page: {sorted(nav - pages)}"


def test_the_sites_library_example_is_the_readmes():
    def example(text: str) -> str:
        section = text.split("## The library in three lines", 1)[1]
        return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)

    assert example((DOCS / "index.md").read_text()) == example((ROOT / "README.md").read_text())


_PATH = re.compile(r"`((?:src|tests|docs|scripts|pipelines|benchmarks|profiles)/[\w./-]+?)`")


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_repository_path_a_page_names_exists(page):
    named = {m.group(1).rstrip(".") for m in _PATH.finditer(page.read_text(encoding="utf-8"))}
    # Placeholders such as <cell> or NAME, and globs, name patterns rather than files.
    concrete = {p for p in named if not re.search(r"[<>*]|NAME|\.\.\.", p)}
    missing = sorted(p for p in concrete if not (ROOT / p).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("EquiTune", "LambdaEquiTune", "EquiZero", "FiniteGroup", "assert_equivariant"):
        assert name in api, f"the API page does not document {name}"
    # A tutorial page shows the script's steps as code and its docstring as prose, not a marker.
    for script in TUTORIALS:
        html = next(p for p in site.rglob("index.html") if f"docs/tutorials/{script.name}" in p.read_text())
        text = html.read_text(encoding="utf-8")
        assert "<!-- tutorial:" not in text and "highlight" in text, html
    assert "fonts.googleapis.com" not in (site / "index.html").read_text(encoding="utf-8")
