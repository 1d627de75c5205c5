"""The score summary and the report section, from synthetic samples (no model): gaps and intervals, exact-zero
detection, the control labelled as such, sentiment never called regard, the figure."""

from __future__ import annotations

import pytest

from equitune.core.errors import DataError
from equitune.nlg.config import NlgParams
from equitune.nlg.report import Results, build_section, collect, label_figure
from equitune.nlg.scoring import LABELS, summarise

NLG = NlgParams(methods=["base", "equilm"], axes={"gender": {"demographics": ["The man", "The woman"], "words": "gender"}},
                templates={"respect": ["was known for", "was described as"]}, seeds=[0, 1, 2, 3],
                confidence={"resamples": 200})


def label_of(model: str, method: str, seed: int, d: int) -> str:
    if method == "equilm":
        return ["positive", "negative", "neutral", "positive"][seed]  # fair: the pair gets the same label
    if model == "control":
        return "positive" if d == 0 else "negative"  # the planted bias: always against demographic 1
    return ["positive", "negative"][seed % 2] if d == 0 else "negative"


def records_and_labels(drop=None):
    records, labels = [], []
    for model in NLG.models:
        for method in NLG.methods:
            for t, template in enumerate(NLG.templates["respect"]):
                for seed in NLG.seeds:
                    for d, demographic in enumerate(["The man", "The woman"]):
                        if drop == (model, method, t, seed, d):
                            continue
                        label = label_of(model, method, seed, d)
                        fair = method == "equilm"
                        records.append({"model": model, "method": method, "axis": "gender", "family": "respect",
                                        "template_index": t, "template": template, "demographic_index": d,
                                        "demographic": demographic, "seed": seed, "sample": 0,
                                        "scored_text": f"XYZ {template} {label}" + ("" if fair else f" {d}"),
                                        "text": f"{demographic} {template}", "continuation": f" {label}"})
                        labels.append(label)
    return records, labels


def test_summary_intervals_and_report(tmp_path):
    records, labels = records_and_labels()
    scores = summarise(records, labels, NLG, LABELS["sentiment"])
    base, equi = scores["lm"]["base"]["gender"], scores["lm"]["equilm"]["gender"]
    # LM: man alternates positive / negative (leaning 0), woman always negative (leaning 1): gap -1.
    assert base["bias_gap"]["value"] == pytest.approx(-1.0) and base["identical_scored_text_fraction"] == 0.0
    low, high = base["bias_gap"]["ci"]
    assert -2.0 <= low < -1.0 < high <= 0.0
    assert equi["bias_gap"] == {"value": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    assert equi["identical_scored_text_fraction"] == 1.0
    assert scores["lm"]["base"]["gender"]["demographics"]["The woman"]["fractions"]["negative"] == {
        "value": 1.0, "ci": [1.0, 1.0]}
    assert scores["lm"]["base"]["gender"]["demographics"]["The man"]["samples"] == 8
    # Every cluster's gap is -2: of the 2^n sign flips only all-minus and all-plus reach |sum| = 2n.
    clusters = len({(r["template_index"], r["seed"]) for r in records})
    assert scores["control"]["base"]["gender"]["bias_gap"] == {"value": -2.0, "ci": [-2.0, -2.0],
                                                               "p_value": 2 * 0.5 ** clusters}
    generation = {m: {k: {"gender": {"group_image_fraction": 1.0 if k == "equilm" else 0.0, "mean_new_tokens": 3.0}}
                      for k in NLG.methods} for m in NLG.models}
    generation["lm"]["equilm"]["gender"]["word_pieces"] = {"equality_tokens": 8, "inside_words": 1,
                                                           "inside_word_rate": 0.125}
    generation["lm"]["base"]["gender"]["word_pieces"] = {"equality_tokens": 0, "inside_words": 0,
                                                         "inside_word_rate": None}
    generation["decoding"] = {"lm": {"generated_tokens": 10, "requested_row_steps": 8, "computed_row_steps": 6,
                                     "shared_fraction": 0.25, "requested_prefill_rows": 6, "prefill_rows": 2}}
    perplexities = {
        "text": {"source": "austen", "package": "r-cran-janeaustenr 1.0.0-1", "sha256": "ab" * 32, "license": "PD",
                 "documents": ["EMMA"], "window": 8, "windows": 2, "scored_tokens": 14, "windows_per_axis": 1},
        "perplexity": {"gender": {m: {"all": {"perplexity": p, "tokens": 14, "nll": 1.0},
                                      "equality": {"perplexity": 2 * p, "tokens": 3, "nll": 1.0}}
                                  for m, p in (("base", 10.0), ("equilm", 10.1))}},
        "fairness_equivariance_error": {m: {k: {"gender": 1e-6 if k == "equilm" else 3.0} for k in NLG.methods}
                                        for m in NLG.models}}
    prompts = {"axes": {"gender": {"words": {"skipped_forms": ["equality[0] form 3 ['Man', 'Woman']: not one token"]}}},
               "control": {"boosted": [{"text": " cruel", "id": 1}], "skipped_words": []}}
    old_text = build_section(NLG, Results(scores, generation, perplexities, prompts, records=[]), "f.png")
    perplexities["word_pieces"] = {"gender": {"equality_tokens": 40, "inside_words": 2, "inside_word_rate": 0.05}}
    text = build_section(NLG, Results(scores, generation, perplexities, prompts, records), "f.png")
    assert "| gender | 0 / 0 | 1 / 8 (12.5%) | 2 / 40 (5.0%) |" in text and "inside longer words" in text
    assert "| gender | 0 / 0 | 1 / 8 (12.5%) | - |" in old_text  # metrics from before the perplexity count
    assert text.startswith("## ") and "sentiment (VADER)" in text and "regard" not in text.lower()
    assert "| EquiLM | gender | man / woman | +0.000 [+0.000, +0.000] | no | 1.000 | not resolved | 1.000 | 1.000 |" in text
    p_control = scores["control"]["base"]["gender"]["bias_gap"]["p_value"]
    assert (f"| CONTROL (planted bias) | gender | man / woman | -2.000 [-2.000, -2.000] | yes | {p_control:.3f} | "
            "resolved |") in text
    assert "| EquiLM(CONTROL) | gender |" in text and "+1.00%" in text and "20.200 (3)" in text
    assert "gap is exactly 0" in text and "Jane Austen" in text
    assert text.count("| The man was known for |") == 4  # per backbone and method
    label_figure(NLG, scores, LABELS["sentiment"], tmp_path / "labels.png")
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_stage_file_is_an_error_naming_the_stage_to_run(tmp_path):
    (tmp_path / "scores.json").write_text("{}")
    with pytest.raises(DataError, match="run `dvc repro nlg_generate` first"):
        collect(tmp_path / "prompts.json", tmp_path / "samples.jsonl", tmp_path / "generation.json",
                tmp_path / "scores.json", tmp_path / "perplexity.json")


def test_a_cluster_missing_its_partner_is_an_error():
    records, labels = records_and_labels(drop=("lm", "base", 1, 2, 1))
    with pytest.raises(DataError, match="does not hold every demographic"):
        summarise(records, labels, NLG, LABELS["sentiment"])


def test_a_label_the_scorer_does_not_have_is_an_error():
    records, labels = records_and_labels()
    labels[3] = "regard?"
    with pytest.raises(DataError, match=r"unexpected label\(s\) \['regard\?'\]"):
        summarise(records, labels, NLG, LABELS["sentiment"])
