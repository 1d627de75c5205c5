"""MkDocs hook: tutorial scripts rendered as pages, and repository files included in pages.

A page line ``<!-- tutorial: tutorials/NAME.py -->`` becomes the script as a readable page: its module docstring
(Markdown) first, then each ``# %%`` step with its leading comment paragraph as prose and the rest as a code block.
The script itself stays the single source: the tests run it, the site shows it, nothing is copied by hand.
A page line ``<!-- include: PATH -->`` becomes the text of PATH (relative to the repository root), e.g. CHANGELOG.md.
A marker naming a missing file stops the build (the tests build with ``--strict``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

MARKER = re.compile(r"^<!-- (tutorial|include): (\S+) -->$", flags=re.MULTILINE)


def _comment_text(lines: list[str]) -> str:
    return "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in lines)


def _step(chunk: str) -> str:
    """One ``# %%`` step: its leading comment lines as prose, the rest as Python."""
    lines = chunk.strip("\n").splitlines()
    prose = []
    while lines and lines[0].startswith("#"):
        prose.append(lines.pop(0))
    code = "\n".join(lines).strip("\n")
    parts = [_comment_text(prose)] if prose else []
    if code:
        parts.append(f"```python\n{code}\n```")
    return "\n\n".join(parts)


def render_tutorial(path: Path) -> str:
    """The script at ``path`` as Markdown: docstring, then its steps."""
    source = path.read_text(encoding="utf-8")
    module = ast.parse(source)
    docstring = ast.get_docstring(module) or ""
    body = source
    if docstring:  # drop the docstring statement from the code shown
        end = module.body[0].end_lineno
        body = "\n".join(source.splitlines()[end:])
    chunks = re.split(r"^# %%.*$", body, flags=re.MULTILINE)
    steps = [_step(chunk) for chunk in chunks if chunk.strip()]
    run = f"Run it: `python docs/{path.relative_to(path.parents[1]).as_posix()}` (it asserts every claim below)."
    return "\n\n".join([docstring, run, *steps]) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"])

    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        path = (docs / name) if kind == "tutorial" else (docs.parent / name)
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_path}: {kind} marker names {name}, which does not exist ({path})")
        return render_tutorial(path) if kind == "tutorial" else path.read_text(encoding="utf-8")

    return MARKER.sub(replace, markdown)


_SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)(~?)([\w.]+)(</code>)")


def _role_to_code(match: re.Match) -> str:
    opening, tilde, target, closing = match.groups()
    return opening + (target.rsplit(".", 1)[-1] if tilde else target) + closing


def on_page_content(html: str, page, config, files) -> str:
    """The docstrings use Sphinx roles (``:class:`~a.b.C```), which mkdocstrings shows verbatim: keep the code."""
    return _SPHINX_ROLE.sub(_role_to_code, html)
