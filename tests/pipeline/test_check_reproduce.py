"""scripts/check_reproduce.py: tolerance rules, missing and extra metrics, exclusions, and one end-to-end check
on the toy DVC project (a reproducing commit passes, a tampered committed metric fails)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.toy_project import clean_env, make_toy_project, run

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_reproduce", ROOT / "scripts" / "check_reproduce.py")
check = importlib.util.module_from_spec(_spec)
sys.modules["check_reproduce"] = check  # pydantic resolves the models' annotations through sys.modules
_spec.loader.exec_module(check)


def tolerances(**data):
    return check.Tolerances.model_validate({"default": {"abs": 1e-6, "rel": 1e-6}, **data})


RULES = tolerances(
    rules=[{"pattern": "*accuracy*", "abs": 1e-3}, {"pattern": "*loss*", "rel": 1e-3}],
    exclude=[{"pattern": "metrics/nlg/*:*perplexity*", "reason": "GPU-only kernel"}],
)


def problems(committed, regenerated, config=RULES, file="metrics/x.json"):
    return check.compare_metrics(check.flatten(committed), check.flatten(regenerated), file, config)


def test_committed_reproduce_yaml_is_valid():
    config = check.load_tolerances(ROOT / "reproduce.yaml")
    assert config.default.abs >= 0 and config.rules


def test_flatten_names_nested_keys_like_tracking():
    assert check.flatten({"test": {"accuracy": 0.5, "per_group": [1, 2]}, "loss": 1}) == {
        "test/accuracy": 0.5, "test/per_group/0": 1, "test/per_group/1": 2, "loss": 1}


def test_first_matching_rule_wins_and_default_applies_otherwise():
    assert check.tolerance_for("metrics/a.json:test/accuracy", RULES).abs == 1e-3
    assert check.tolerance_for("metrics/a.json:train/loss", RULES).rel == 1e-3
    assert check.tolerance_for("metrics/a.json:epochs", RULES) == RULES.default
    first = tolerances(rules=[{"pattern": "*", "abs": 5.0}, {"pattern": "*accuracy*", "abs": 0.0}])
    assert check.tolerance_for("m.json:accuracy", first).abs == 5.0


def test_absolute_tolerance():
    assert problems({"accuracy": 0.5}, {"accuracy": 0.5009})[1] == []
    assert problems({"accuracy": 0.5}, {"accuracy": 0.4991})[1] == []
    assert len(problems({"accuracy": 0.5}, {"accuracy": 0.4989})[1]) == 1
    [message] = problems({"accuracy": 0.5}, {"accuracy": 0.5011})[1]
    assert "metrics/x.json:accuracy: committed 0.5, reproduced 0.5011" in message


def test_relative_tolerance_scales_with_the_value():
    assert problems({"loss": 1000.0}, {"loss": 1000.9})[1] == []
    assert len(problems({"loss": 1000.0}, {"loss": 1001.1})[1]) == 1
    assert len(problems({"loss": 0.01}, {"loss": 0.0101})[1]) == 1  # 1 % off a small loss is not 1e-3 relative


def test_default_tolerance_is_tight():
    assert problems({"epochs": 3}, {"epochs": 3.0})[1] == []
    assert len(problems({"invariance": 1.0}, {"invariance": 1.00001})[1]) == 1


def test_non_finite_and_non_numbers():
    assert len(problems({"loss": 1.0}, {"loss": math.nan})[1]) == 1
    assert len(problems({"loss": 1.0}, {"loss": math.inf})[1]) == 1
    assert problems({"loss": math.nan}, {"loss": math.nan})[1] == []
    assert problems({"name": "c4"}, {"name": "c4"})[1] == []
    assert len(problems({"name": "c4"}, {"name": "d4"})[1]) == 1
    assert len(problems({"flag": True}, {"flag": 1})[1]) == 1, "a bool is not the number 1"
    assert len(problems({"accuracy": 0.5}, {"accuracy": "0.5"})[1]) == 1


def test_missing_metric_fails():
    compared, found = problems({"accuracy": 0.5, "loss": 1.0}, {"accuracy": 0.5})
    assert compared == 1 and found == ["metrics/x.json:loss: missing from the regenerated metrics"]


def test_extra_metric_fails():
    compared, found = problems({"accuracy": 0.5}, {"accuracy": 0.5, "loss": 1.0})
    assert compared == 1 and len(found) == 1 and "produced now but not in the committed metrics" in found[0]


def test_excluded_metric_is_skipped_and_reported(capsys):
    compared, found = problems({"perplexity": 10.0, "loss": 1.0}, {"perplexity": 99.0, "loss": 1.0},
                               file="metrics/nlg/a.json")
    assert (compared, found) == (1, [])
    assert "skip metrics/nlg/a.json:perplexity: GPU-only kernel" in capsys.readouterr().out
    # The exclusion is scoped by its pattern: the same key elsewhere is compared.
    assert len(problems({"perplexity": 10.0}, {"perplexity": 99.0}, file="metrics/scan/a.json")[1]) == 1


def test_exclusion_without_reason_and_unknown_keys_are_refused(tmp_path):
    for bad in ({"default": {"abs": 0}, "exclude": [{"pattern": "*"}]},
                {"default": {"abs": 0}, "rules": [{"pattern": "*", "absolute": 1}]},
                {"default": {"abs": -1}}):
        path = tmp_path / "reproduce.yaml"
        path.write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match="is invalid"):
            check.load_tolerances(path)


def test_compare_trees_flags_missing_and_uncommitted_files(tmp_path):
    (tmp_path / "metrics" / "a").mkdir(parents=True)
    (tmp_path / "metrics" / "a" / "one.json").write_text(json.dumps({"accuracy": 0.5}))
    (tmp_path / "metrics" / "a" / "new.json").write_text(json.dumps({"accuracy": 0.5}))
    committed = {"metrics/a/one.json": {"accuracy": 0.5}, "metrics/a/gone.json": {"accuracy": 0.1}}
    compared, found = check.compare_trees(committed, tmp_path, RULES)
    assert compared == 1
    assert found == ["metrics/a/gone.json: not produced by dvc repro",
                     "metrics/a/new.json: produced by dvc repro but not committed"]


def test_the_clone_runs_its_own_code_not_the_editable_install(tmp_path):
    """PYTHONPATH=<clone>/src must beat the editable install of this checkout, module by module."""
    clone = tmp_path / "clone"
    (clone / "src" / "equitune").mkdir(parents=True)
    (clone / "src" / "equitune" / "__init__.py").write_text("")
    (clone / "src" / "equitune" / "marker.py").write_text("WHERE = 'clone'\n")
    env = check.clone_environment(clone)
    check.check_clone_code_wins(clone, env)
    # A module the clone lacks must not be borrowed from the working tree (as a namespace package would).
    probe = "import equitune.marker as m, importlib.util as u; print(m.WHERE, u.find_spec('equitune.pipeline'))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=clone, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["clone", "None"]


def test_the_clone_check_refuses_a_shadowed_package(tmp_path):
    """A clone whose equitune has no __init__.py is only a namespace portion: the installed package wins."""
    clone = tmp_path / "clone"
    (clone / "src" / "equitune").mkdir(parents=True)
    env = check.clone_environment(clone)
    with pytest.raises(SystemExit, match="not its own code"):
        check.check_clone_code_wins(clone, env)


@pytest.mark.slow
def test_end_to_end_on_the_toy_project(tmp_path):
    root = make_toy_project(tmp_path / "toy", seed=2, epochs=2)
    (root / "reproduce.yaml").write_text((ROOT / "reproduce.yaml").read_text())
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "results"], root)
    script = [sys.executable, str(ROOT / "scripts" / "check_reproduce.py"), "--repo", str(root)]
    passed = subprocess.run(script, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "compared 3 metrics in 1 files" in passed.stdout and "results reproduce" in passed.stdout

    metrics = json.loads((root / "metrics" / "toy.json").read_text())
    metrics["test"]["accuracy"] = 0.512  # a committed result the code does not give (it gives 0.502)
    (root / "metrics" / "toy.json").write_text(json.dumps(metrics))
    run(["git", "commit", "-q", "-am", "tampered"], root)
    failed = subprocess.run(script, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert "FAIL metrics/toy.json:test/accuracy: committed 0.512, reproduced 0.502" in failed.stdout
    kept = failed.stdout.split("clone kept at ")[-1].split()[0]
    subprocess.run(["rm", "-rf", str(Path(kept).parent)], check=True)
