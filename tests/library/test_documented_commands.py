"""Every shell command the documentation shows is run by a test or marked with what it needs (docs/commands.yaml).

What this module owns:

- Extraction: every command in the ```bash / ```sh / ```shell blocks of README.md, docs/**/*.md and the files their
  ``<!-- include: PATH -->`` markers pull in. Backslash continuations are joined, comment-only lines and trailing
  ``# comments`` (outside quotes) dropped, whitespace runs collapsed; ``VAR=value command`` stays as written. A
  command's id is ``page:line`` (the line it starts on).
- The registry, docs/commands.yaml: every documented command matches exactly one entry (``command``: the
  normalised text, or ``pattern``: a regex over the whole of it) and every entry matches at least one command, so
  no entry outlives its command. An entry either names ``tested_by`` (``path::test_name``: the file exists, ast
  finds the test function in it, parametrised ids ``[...]`` stripped) with ``evidence`` (one string that each named
  file must contain, or a list of one string per test) so that the link cannot silently go stale; or it names
  ``needs`` and ``why``, and the command must show what it needs (NEEDS_MARKERS below: one of the strings must occur
  in the command; for ``gpu``, in the command or in its code block):

  ========================  ====================================================================================
  needs                     one of
  ========================  ====================================================================================
  gpu                       cuda, CUDA_VISIBLE_DEVICES, nvidia-smi, --gres=gpu, --device cuda (command or block)
  cluster                   sbatch, slurm, grid.sh
  server                    MLFLOW_TRACKING_URI, MLFLOW_BACKEND_STORE_URI, team-server, team_server.py,
                            endpointurl, s3://, postgresql, --host, AWS_SECRET_ACCESS_KEY
  internet                  make paper, hf download, HF_, paper
  root                      sudo, apt-get, slurmd, useradd
  full-pipeline             make repro, make test, dvc repro, dvc exp run, dvc queue
  ========================  ====================================================================================

- A self-test: the checker reports a planted uncovered command, a stale entry, a wrong marker, a missing test and
  missing evidence.
- What can be checked of every command without running it: each ``make`` target exists in the Makefile, each
  ``--option`` given to a repository script occurs in that script (the stage scripts in pipelines/ build theirs
  from shared helpers: their documented commands are compared with dvc.yaml's instead), a script run by its path
  is executable.
- The documented commands cheap enough to run here run verbatim (``bash -c`` with the documentation's text) in a
  scratch clone of HEAD or a scratch DVC project, and what the documentation says they print or write is checked:
  ``dvc plots show`` (both forms), ``dvc plots diff main my-exp``, ``dvc queue status && dvc exp show --md``, the
  team's DVC remote (``dvc remote add``/``modify``, ``git commit .dvc/config``), ``dvc commit <cell>`` (on a
  terminal: DVC asks before recording a changed stage), ``python scripts/team_server.py status`` without a server,
  ``source .venv/bin/activate``, the ``make`` targets' recipes (``make -n``), the ``-S`` overrides of the queued
  experiments (against the params schema) and the stage commands shown under torchrun (against dvc.yaml).
"""

from __future__ import annotations

import ast
import json
import os
import pty
import re
import select
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers.paths import ROOT, dvc_commands
from helpers.toy_project import clean_env

REGISTRY = ROOT / "docs" / "commands.yaml"
SHELL_LANGUAGES = {"bash", "sh", "shell"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)")
INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", flags=re.MULTILINE)

# needs -> (strings of which one must occur, whether the command's whole code block counts as well as the command)
NEEDS_MARKERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "gpu": (("cuda", "CUDA_VISIBLE_DEVICES", "nvidia-smi", "--gres=gpu", "--device cuda"), True),
    "cluster": (("sbatch", "slurm", "grid.sh"), False),
    "server": (("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "team-server", "team_server.py", "endpointurl",
                "s3://", "postgresql", "--host", "AWS_SECRET_ACCESS_KEY"), False),
    "internet": (("make paper", "hf download", "HF_", "paper"), False),
    "root": (("sudo", "apt-get", "slurmd", "useradd"), False),
    "full-pipeline": (("make repro", "make test", "dvc repro", "dvc exp run", "dvc queue"), False),
}
ENTRY_KEYS = {"command", "pattern", "tested_by", "evidence", "needs", "why"}


# ----- extraction -----

@dataclass(frozen=True)
class DocumentedCommand:
    where: str  # page:line, the line the command starts on
    text: str  # normalised: continuations joined, comments dropped, whitespace collapsed
    block: str  # the whole code block it came from, comments included


def without_comment(line: str) -> str:
    """``line`` without a trailing ``# comment``: a ``#`` outside quotes that starts the line or follows a blank."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """The shell code blocks of a Markdown text: (line number of the block's first line, its lines, unindented)."""
    blocks, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        indent, fence, body, first = opening["indent"], opening["fence"], [], index + 1
        while index < len(lines) and lines[index].strip() != fence:
            line = lines[index]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            index += 1
        index += 1  # the closing fence
        if opening["language"] in SHELL_LANGUAGES:
            blocks.append((first, body))
    return blocks


def commands_in(page: str, text: str) -> list[DocumentedCommand]:
    commands = []
    for first, lines in shell_blocks(text):
        block, pending, start = "\n".join(lines), "", None
        for offset, line in enumerate(lines):
            code = without_comment(line).rstrip()
            if not code.strip() and not pending:
                continue  # blank or comment-only
            start = start if pending else first + offset
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            normalised = " ".join((pending + code).split())
            commands.append(DocumentedCommand(f"{page}:{start}", normalised, block))
            pending = ""
        assert not pending, f"{page}: a code block ends inside a continued command: {pending!r}"
    return commands


def documentation_pages(root: Path) -> list[Path]:
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    included = [root / name for page in pages for name in INCLUDE.findall(page.read_text(encoding="utf-8"))]
    return pages + [page for page in included if page.is_file() and page not in pages]


def documented_commands(root: Path = ROOT) -> list[DocumentedCommand]:
    return [command for page in documentation_pages(root)
            for command in commands_in(page.relative_to(root).as_posix(), page.read_text(encoding="utf-8"))]


# ----- the registry and its checker -----

def load_registry(path: Path = REGISTRY) -> list[dict]:
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(entries, list), f"{path} must be a list of entries"
    return entries


def entry_name(entry: dict) -> str:
    return entry.get("command") or f"pattern {entry.get('pattern')!r}"


def matches(entry: dict, command: DocumentedCommand) -> bool:
    if "command" in entry:
        return entry["command"] == command.text
    return re.fullmatch(entry["pattern"], command.text) is not None


def functions_defined_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def entry_problems(entry: dict, commands: list[DocumentedCommand], root: Path) -> list[str]:
    """What is wrong with one registry entry, given the commands it matches."""
    name = entry_name(entry)
    problems = [f"{name}: unknown keys {sorted(set(entry) - ENTRY_KEYS)}"] if set(entry) - ENTRY_KEYS else []
    if ("command" in entry) == ("pattern" in entry):
        return [*problems, f"{name}: give exactly one of `command` and `pattern`"]
    if ("tested_by" in entry) == ("needs" in entry):
        return [*problems, f"{name}: give exactly one of `tested_by` and `needs`"]
    if "tested_by" in entry:
        tests, evidence = entry["tested_by"], entry.get("evidence")
        if not tests or not evidence:
            return [*problems, f"{name}: `tested_by` needs a list of tests and `evidence`"]
        evidence = [evidence] * len(tests) if isinstance(evidence, str) else evidence
        if len(evidence) != len(tests):
            return [*problems, f"{name}: `evidence` is one string, or one per test ({len(tests)})"]
        for test, expected in zip(tests, evidence, strict=True):
            file, _, function = test.partition("::")
            function = function.rsplit("::", 1)[-1].split("[", 1)[0]
            path = root / file
            if not path.is_file():
                problems.append(f"{name}: tested_by {test}: no file {file}")
            elif function not in functions_defined_in(path):
                problems.append(f"{name}: tested_by {test}: {file} has no test {function!r}")
            elif expected not in path.read_text(encoding="utf-8"):
                problems.append(f"{name}: tested_by {test}: the evidence {expected!r} is not in {file}")
    else:
        if entry["needs"] not in NEEDS_MARKERS:
            return [*problems, f"{name}: needs {entry['needs']!r} is none of {sorted(NEEDS_MARKERS)}"]
        if not str(entry.get("why", "")).strip():
            problems.append(f"{name}: needs {entry['needs']} without a `why`")
        markers, block_counts = NEEDS_MARKERS[entry["needs"]]
        for command in commands:
            visible = command.text + ("\n" + command.block if block_counts else "")
            if not any(marker in visible for marker in markers):
                problems.append(f"{command.where}: {command.text!r} is marked needs {entry['needs']}, but shows "
                                f"none of {list(markers)}")
    return problems


def registry_problems(commands: list[DocumentedCommand], registry: list[dict], root: Path = ROOT) -> list[str]:
    """Every way the documented commands and the registry disagree; empty when they agree."""
    problems = []
    for command in commands:
        covering = [entry_name(entry) for entry in registry if matches(entry, command)]
        if len(covering) != 1:
            problems.append(f"{command.where}: {command.text!r} matches {len(covering)} registry entries "
                            f"{covering}; it needs exactly one")
    for entry in registry:
        matched = [command for command in commands if matches(entry, command)] if (
            "command" in entry or "pattern" in entry) else []
        if not matched:
            problems.append(f"{entry_name(entry)}: matches no documented command (a stale entry)")
        problems += entry_problems(entry, matched, root)
    return problems


def test_the_documentation_shows_commands():
    commands = documented_commands()
    pages = {command.where.split(":")[0] for command in commands}
    assert {"README.md", "docs/pipeline.md", "docs/mlflow.md", "docs/scaling-out.md"} <= pages, pages
    assert len(commands) >= 40, len(commands)


def test_every_documented_command_is_tested_or_marked():
    problems = registry_problems(documented_commands(), load_registry())
    assert not problems, "docs/commands.yaml and the documentation disagree:\n" + "\n".join(problems)


# ----- the checker checked -----

def test_extraction_joins_continuations_and_drops_comments():
    page = ("text\n\n  ```bash\n  # a comment line\n  make ui   # or: make ui PORT=5001\n"
            "  git commit .dvc/config -m \"The team's remote\"  # trailing\n"
            "  torchrun a.py --x 1 \\\n    --y 2\n  A=b c 'd # e'\n  ```\n\n```python\nprint(1)  # not shell\n```\n"
            "```\nplain # block\n```\n")
    assert [(c.where, c.text) for c in commands_in("p.md", page)] == [
        ("p.md:5", "make ui"), ("p.md:6", "git commit .dvc/config -m \"The team's remote\""),
        ("p.md:7", "torchrun a.py --x 1 --y 2"), ("p.md:9", "A=b c 'd # e'")]


@pytest.fixture
def fake_repo(tmp_path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_runs_it():\n    run(['mytool', '--go'])\n")
    return tmp_path


def synthetic_commands(*texts: str) -> list[DocumentedCommand]:
    return [DocumentedCommand(f"page.md:{line}", text, text) for line, text in enumerate(texts, 1)]


PLANTED = synthetic_commands("mytool --go", "make repro", "make test")
TESTED = {"command": "mytool --go", "tested_by": ["tests/test_x.py::test_runs_it[case]"],
          "evidence": "'mytool', '--go'"}
MARKED = {"pattern": r"make (repro|test)", "needs": "full-pipeline", "why": "the whole pipeline"}


def test_the_checker_accepts_a_consistent_registry(fake_repo):
    assert registry_problems(PLANTED, [TESTED, MARKED], fake_repo) == []


@pytest.mark.parametrize(("extra_commands", "registry", "expected"), [
    (("make ui",), [TESTED, MARKED], "'make ui' matches 0 registry entries"),
    ((), [TESTED, MARKED, {"command": "make gone", "needs": "full-pipeline", "why": "x"}],
     "make gone: matches no documented command (a stale entry)"),
    ((), [TESTED, MARKED, {"pattern": "make (ui|repro)", "needs": "full-pipeline", "why": "x"}],
     "'make repro' matches 2 registry entries"),
    ((), [TESTED, {**MARKED, "needs": "gpu"}], "'make repro' is marked needs gpu, but shows none of"),
    (("mytool --go --fast",), [TESTED, MARKED, {"command": "mytool --go --fast", "needs": "server", "why": "x"}],
     "is marked needs server, but shows none of"),
    ((), [{**TESTED, "tested_by": ["tests/test_x.py::test_gone"]}, MARKED], "has no test 'test_gone'"),
    ((), [{**TESTED, "tested_by": ["tests/test_y.py::test_runs_it"]}, MARKED], "no file tests/test_y.py"),
    ((), [{**TESTED, "evidence": "--stop"}, MARKED], "the evidence '--stop' is not in tests/test_x.py"),
    ((), [{**TESTED, "evidence": ["a", "b"]}, MARKED], "`evidence` is one string, or one per test (1)"),
    ((), [TESTED, {**MARKED, "needs": "magic"}], "needs 'magic' is none of"),
    ((), [TESTED, {"pattern": MARKED["pattern"], "needs": "full-pipeline"}], "needs full-pipeline without a `why`"),
    ((), [{**TESTED, "needs": "gpu", "why": "x"}, MARKED], "exactly one of `tested_by` and `needs`"),
], ids=["uncovered-command", "stale-entry", "two-entries", "wrong-marker", "marker-not-shown", "missing-test",
        "missing-file", "missing-evidence", "evidence-count", "unknown-marker", "no-why", "both-kinds"])
def test_the_checker_fails_on(fake_repo, extra_commands, registry, expected):
    problems = registry_problems(PLANTED + synthetic_commands(*extra_commands), registry, fake_repo)
    assert any(expected in problem for problem in problems), problems


# ----- what can be checked without running a command -----

def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE))


CONTROL_OPERATORS = ("&&", "||", ";", "|")


def test_make_targets_and_script_options_exist():
    problems, targets = [], make_targets()
    for command in documented_commands():
        try:
            words = shlex.split(command.text)
        except ValueError as error:
            problems.append(f"{command.where}: {command.text!r} is not valid shell: {error}")
            continue
        if words[0] == "make":
            missing = [word for word in words[1:] if "=" not in word and word not in targets]
            problems += [f"{command.where}: no Makefile target {target!r}" for target in missing]
        if (ROOT / words[0]).is_file() and not os.access(ROOT / words[0], os.X_OK):
            problems.append(f"{command.where}: {words[0]} is run by its path but is not executable")
        words = words[:min([words.index(word) for word in CONTROL_OPERATORS if word in words], default=len(words))]
        scripts = [index for index, word in enumerate(words) if word.endswith(".py") and "/" in word]
        if not scripts:
            continue
        script = ROOT / words[scripts[0]]
        if not script.is_file():
            problems.append(f"{command.where}: no script {words[scripts[0]]}")
        elif not words[scripts[0]].startswith("pipelines/"):  # stage scripts: compared with dvc.yaml below
            source = script.read_text(encoding="utf-8")
            options = {word.split("=", 1)[0] for word in words[scripts[0] + 1:] if word.startswith("--")}
            problems += [f"{command.where}: {words[scripts[0]]} takes no {option}" for option in sorted(options)
                         if f'"{option}"' not in source]
    assert not problems, "\n".join(problems)


# ----- the cheap commands, run as documented -----

def documented(start: str) -> str:
    """The one documented command (normalised) that starts with ``start``."""
    found = {command.text for command in documented_commands() if command.text.startswith(start)}
    assert len(found) == 1, f"expected one documented command starting {start!r}; found {sorted(found)}"
    return found.pop()


def shell(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
          ) -> subprocess.CompletedProcess:
    """``command`` as a user types it, in bash, with this environment's tools first on PATH."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[-1]} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def on_a_terminal(command: str, cwd: Path, answer: str, timeout: float = 120) -> tuple[int, str]:
    """``command`` in bash on a pseudo-terminal (DVC asks its questions only on one), answering ``[y/n]`` once."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=clean_env(), stdin=terminal, stdout=terminal,
                               stderr=terminal, close_fds=True)
    os.close(terminal)
    output, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: every writer of the terminal has exited
                    break
                if not chunk:
                    break
                output += chunk
                if not answered and b"[y/n]" in output:
                    os.write(controller, answer.encode() + b"\n")
                    answered = True
            elif process.poll() is not None:
                break
        else:
            process.kill()
    finally:
        os.close(controller)
    return process.wait(timeout=30), output.decode(errors="replace")


@pytest.fixture
def clone(tmp_path) -> Path:
    """A scratch clone of HEAD: the committed dvc.yaml, params, lock, metrics and curves; no DVC cache."""
    dest = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=120)
    return dest


def is_documented(text: str) -> bool:
    return text in {command.text for command in documented_commands()}


@pytest.mark.slow  # DVC in a scratch clone or project: seconds each
def test_dvc_plots_show_writes_one_page_with_every_curve(clone):
    assert is_documented("dvc plots show")
    succeeded(shell("dvc plots show", clone))
    page = clone / "dvc_plots" / "index.html"  # what the docs' comment says it writes
    assert page.is_file()
    html = page.read_text(encoding="utf-8")
    curves = sorted(path.relative_to(clone).as_posix() for path in (clone / "plots").rglob("*.csv"))
    assert len(curves) >= 10 and not [curve for curve in curves if curve not in html], curves


@pytest.mark.slow  # DVC in a scratch clone or project: seconds each
def test_one_cells_training_loss_is_plotted_from_its_curve(clone):
    command = documented("dvc plots show plots/")
    assert command == "dvc plots show plots/scan/pretrain/add_jump-lstm-0.csv -y train_loss"
    curve = clone / "plots/scan/pretrain/add_jump-lstm-0.csv"  # a cell of the committed grid (ls plots/*/*)
    assert curve.is_file() and "train_loss" in curve.read_text().splitlines()[0].split(",")
    succeeded(shell(command, clone))
    html = (clone / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    first_loss = curve.read_text().splitlines()[1].split(",")[1]
    assert '"field": "train_loss"' in html and first_loss in html
    assert "add_jump-lstm-1.csv" not in html  # one cell only


@pytest.mark.slow  # DVC in a scratch clone or project: seconds each
def test_a_teams_dvc_remote_is_configured_and_committed(clone):
    for start in ("dvc remote add -d team", "dvc remote modify team endpointurl", "git commit .dvc/config"):
        succeeded(shell(documented(start), clone))
    committed = succeeded(shell("git show HEAD:.dvc/config && git log -1 --format=%s", clone)).stdout
    for line in ("remote = team", "['remote \"team\"']", "url = s3://lab-bucket/equitune-dvc",
                 "endpointurl = https://minio.lab.example:9000", "The team's DVC remote"):
        assert line in committed, committed
    assert not re.search(r"access_key|secret", committed)  # credentials stay outside the repository
    assert not succeeded(shell("git status --porcelain .dvc", clone)).stdout


@pytest.mark.slow  # DVC in a scratch clone or project: seconds each
def test_dvc_commit_records_a_cells_outputs_after_asking(clone):
    command = documented("dvc commit")
    assert command == "dvc commit scan_pretrain@add_jump-lstm-0"
    # What the torchrun command leaves behind: the cell's outputs (stand-ins here), over its inputs (stand-ins too:
    # a clone holds no DVC-cached data).
    for folder, name in (("data/scan/add_jump", "train.txt"), ("models/scan/add_jump-lstm-0", "model.pt")):
        (clone / folder).mkdir(parents=True)
        (clone / folder / name).write_text("stand-in\n")
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["scan_pretrain@add_jump-lstm-0"]
    code, output = on_a_terminal(command, clone, answer="y")
    assert code == 0 and "Are you sure you want to commit it? [y/n]" in output, output
    recorded = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["scan_pretrain@add_jump-lstm-0"]
    model = {out["path"]: out for out in recorded["outs"]}["models/scan/add_jump-lstm-0"]
    assert (model["nfiles"], model["size"]) == (1, len("stand-in\n"))
    assert model["md5"] != {out["path"]: out for out in lock["outs"]}["models/scan/add_jump-lstm-0"]["md5"]
    assert "up to date" in succeeded(shell("dvc status scan_pretrain@add_jump-lstm-0", clone)).stdout


@pytest.fixture
def scratch_project(tmp_path) -> Path:
    """A DVC project on branch main with a param, a metric and a curve, and an experiment my-exp that changes all
    three (saved with `dvc exp save`: nothing runs)."""
    root = tmp_path / "scratch"
    root.mkdir()
    succeeded(shell("git init -q -b main && dvc init -q", root))
    with (root / ".dvc" / "config").open("a") as config:
        config.write("[core]\n    check_update = false\n")  # no update check over the network
    (root / "dvc.yaml").write_text("params: [params.yaml]\nmetrics: [metrics.json]\n"
                                   "plots:\n  - curve.csv:\n      x: step\n      y: loss\n")
    for lr, accuracy, losses in ((0.1, 0.5, (0.9, 0.6)), (0.2, 0.7, (0.8, 0.3))):
        (root / "params.yaml").write_text(f"lr: {lr}\n")
        (root / "metrics.json").write_text(json.dumps({"acc": accuracy}))
        (root / "curve.csv").write_text("step,loss\n" + "".join(f"{n},{v}\n" for n, v in enumerate(losses)))
        if lr == 0.1:
            succeeded(shell("git add -A && git commit -qm base", root))
    succeeded(shell("dvc exp save -q -n my-exp", root))
    return root


@pytest.mark.slow  # DVC in a scratch clone or project: seconds each
def test_plots_diff_and_exp_show_compare_an_experiment_with_main(scratch_project):
    command = documented("dvc plots diff")
    assert command == "dvc plots diff main my-exp"
    succeeded(shell(command, scratch_project))
    html = (scratch_project / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert '"rev": "main"' in html and '"rev": "my-exp"' in html  # two revisions overlaid

    shown = succeeded(shell(documented("dvc queue status && dvc exp show --md"), scratch_project)).stdout
    assert "No experiment tasks in the queue" in shown, shown
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in shown.splitlines()
             if line.startswith("|")]
    assert table[0][:1] + table[0][2:] == ["Experiment", "acc", "lr"], shown  # the metric and the param
    rows = {row[0]: row[2:] for row in table[2:]}
    experiment = next(name for name in rows if name.endswith("[my-exp]"))
    assert rows["main"] == ["0.5", "0.1"] and rows[experiment] == ["0.7", "0.2"], shown


def test_team_server_status_without_a_server_says_it_is_not_running(tmp_path):
    command = documented("python scripts/team_server.py status")
    result = shell(command, ROOT, clean_env(EQUITUNE_TEAM_DIR=str(tmp_path / "team")))
    assert result.returncode == 3, result.stdout + result.stderr  # the script's "exit 3 when not running"
    assert json.loads(result.stdout)["running"] is False


@pytest.mark.parametrize(("arguments", "recipe"), [
    ("ui", "python -m equitune.pipeline.ui --port 5000"),
    ("ui PORT=5001", "python -m equitune.pipeline.ui --port 5001"),
    ("team-server", "python scripts/team_server.py start"),
    ("team-server-stop", "python scripts/team_server.py stop"),
    ("repro", "python scripts/repro.py"),
    ("repro JOBS=1", "python scripts/repro.py --jobs 1"),
    ("test", "python scripts/check_reproduce.py"),
])
def test_make_targets_run_what_the_documentation_says(arguments, recipe):
    """`make -n` prints a target's recipe without running it (the documentation's `= python ...` comments)."""
    assert is_documented(f"make {arguments.split()[0]}")
    printed = succeeded(shell(f"make -n {arguments}", ROOT)).stdout.splitlines()
    assert recipe in [line.strip() for line in printed], printed


def test_activating_the_environment_puts_its_tools_first():
    command = documented("source .venv/bin/activate")
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.fail("no .venv in this checkout: `make repro` or `bash scripts/setup.sh` makes it")
    found = succeeded(shell(f"{command} && command -v python dvc mlflow", ROOT)).stdout.split()
    assert [Path(path).name for path in found] == ["python", "dvc", "mlflow"], found
    assert {Path(path).parent.resolve() for path in found} == {(ROOT / ".venv" / "bin").resolve()}, found


def test_queued_overrides_name_keys_the_params_schema_accepts():
    from equitune.params import validate

    overrides = [(command.where, setting) for command in documented_commands()
                 if command.text.startswith("dvc exp run --queue -S ")
                 for setting in re.findall(r"-S '([^']+)'", command.text)]
    assert overrides, "no documented `dvc exp run --queue -S '...'`: this test checks nothing"
    for where, setting in overrides:
        key, value = setting.split("=", 1)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        *parents, leaf = key.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        assert leaf in node, f"{where}: -S {setting}: params.yaml has no key {key}"
        node[leaf] = yaml.safe_load(value)  # DVC parses -S values as YAML
        validate(params, f"{where}: -S {setting}")


def test_stage_commands_under_torchrun_are_the_dvc_yaml_commands():
    """The docs' torchrun examples are their stages' dvc.yaml commands with torchrun in place of python."""
    launcher = "torchrun --standalone --nproc_per_node=2 pipelines/"
    variables, stages = {}, {}
    for command in documented_commands():
        if assignment := re.fullmatch(r"([A-Z_]+)=(\S+)", command.text):
            variables[assignment[1]] = assignment[2]
        if command.text.startswith(launcher):
            text = re.sub(r"\$(\w+)", lambda name: variables[name[1]], command.text)
            words = ["python", *shlex.split(text)[3:]]
            named = [stage for stage, stage_words in dvc_commands().items() if stage_words == words]
            assert named, f"{command.where}: no dvc.yaml stage runs {' '.join(words)!r}"
            stages[named[0]] = command.where
    assert set(stages) == {"scan_pretrain@add_jump-lstm-0",
                           "images_tune_group@fashion_mnist-efficientnet_lite0-equitune-c4-0", "nlg_generate"}, stages
