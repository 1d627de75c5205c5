"""The nlg params section: both profiles validate; bad values stop the stages with exit 2 before any output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from equitune.nlg.config import NlgParams
from equitune.params import load_params
from helpers.paths import ROOT, dvc_commands, profile_params, stage_argv


def test_both_profiles_validate_with_the_expected_models():
    default = load_params(ROOT / "params.yaml").nlg
    paper = profile_params("paper").nlg
    assert default.model == "smollm2-135m-instruct" and default.scorer == "sentiment"
    assert default.perplexity.source == "austen" and default.perplexity.windows_per_axis
    assert len(default.seeds) * default.samples_per_prompt * sum(map(len, default.templates.values())) >= 150
    assert default.control.enabled and paper.perplexity.windows_per_axis is None
    assert paper.model == "gpt2" and paper.scorer == "regard" and paper.perplexity.source == "wikitext"
    assert len(paper.seeds) == 100 and paper.samples_per_prompt == 1
    assert all(len(t) == 5 for t in paper.templates.values())
    for nlg in (default, paper):
        assert set(nlg.methods) == {"base", "equilm", "r_equilm", "canonlm"}
        assert set(nlg.axes) == {"gender", "race", "orientation"}
        assert nlg.top_k == 40 and nlg.max_new_tokens == 15


def section(**changes):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())["nlg"]
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, message", [
    (dict(methods=["base", "gpt3"]), "methods"),
    (dict(seeds=[0, 0]), "unique"),
    (dict(top_k=0), "top_k"),
    (dict(scorer="regard_offline"), "scorer"),
    (dict(axes={"gender": {"demographics": ["The man", "The woman", "The person"], "words": "gender"}}), "exactly two"),
    (dict(templates={"respect": []}), "empty"),
    (dict(unknown_key=1), "unknown_key"),
    (dict(control={"biased_demographic": 2}), "biased_demographic"),
    (dict(control={"bonus": 0}), "bonus"),
    (dict(confidence={"level": 1.5}), "level"),
    (dict(perplexity={"source": "gutenberg"}), "source"),
    (dict(group_average="mean"), "group_average"),
    (dict(methods=["base", "canon"]), "methods"),
])
def test_bad_values_are_rejected(changes, message):
    with pytest.raises(ValidationError, match=message):
        NlgParams.model_validate(section(**changes))


def run_stage(stage: str, params: dict, tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess:
    """``stage`` of dvc.yaml with its arguments (some replaced), in a subprocess in ``tmp_path``."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    script = ROOT / dvc_commands()[stage][1]
    return subprocess.run([sys.executable, str(script), *stage_argv(stage, **overrides), "--params", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


@pytest.mark.slow  # five subprocesses that import torch and transformers
def test_stages_exit_2_before_any_output_on_bad_params(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["nlg"]["top_k"] = -1
    output = tmp_path / "prompts.json"
    result = run_stage("nlg_prompts", params, tmp_path, out=str(output))
    assert result.returncode == 2, result.stderr
    assert "nlg.top_k" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()
    for stage in ("nlg_generate", "nlg_score", "nlg_perplexity", "nlg_report"):
        result = run_stage(stage, params, tmp_path)
        assert result.returncode == 2 and "nlg.top_k" in result.stderr, (stage, result.stderr)
    assert not any(tmp_path.rglob("*.json*"))


@pytest.mark.slow  # a subprocess that imports torch and transformers
@pytest.mark.parametrize("gender, messages", [
    ([["man", "woman"], ["boy", "girl", "child"]], ["same size"]),
    # A pair the method cannot act on: " gentlewoman" is several SmolLM2 tokens (named with its pieces).
    ([["man", "woman"], ["gentleman", "gentlewoman"]], ["'gentlewoman' is not a single token", "['Ġgentle', 'woman']",
                                                        "remove the word (and its partners) or choose another"]),
], ids=["unequal-sets", "multi-token-pair"])
def test_prompts_stage_exits_2_on_a_bad_word_list(tmp_path, gender, messages):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    words = tmp_path / "words.yaml"
    words.write_text(yaml.safe_dump({"gender": {"equality": gender},
                                     "race": {"equality": [["black", "white"]]},
                                     "orientation": {"equality": [["gay", "straight"]]}}))
    params["nlg"]["word_lists"] = str(words)
    output = tmp_path / "prompts.json"
    result = run_stage("nlg_prompts", params, tmp_path, out=str(output))
    assert result.returncode == 2, result.stderr
    assert all(m in result.stderr for m in messages) and "Traceback" not in result.stderr, result.stderr
    assert not output.exists()


def test_the_group_average_rule_defaults_to_averaging_log_probs_and_canonlm_is_a_method():
    assert NlgParams.model_validate(section()).group_average == "log_probs"
    chosen = NlgParams.model_validate(section(group_average="probs", methods=["base", "canonlm"]))
    assert chosen.group_average == "probs" and chosen.methods == ["base", "canonlm"]
