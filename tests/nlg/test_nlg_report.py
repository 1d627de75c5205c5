"""The score summary and the report section, from synthetic samples (no model): gaps, exact-zero detection, figure."""

from __future__ import annotations

from equitune.nlg.config import NlgParams
from equitune.nlg.report import example_samples, label_figure, nlg_markdown
from equitune.nlg.scoring import LABELS, summarise

NLG = NlgParams(methods=["base", "equilm"], axes={"gender": {"demographics": ["The man", "The woman"], "words": "gender"}},
                templates={"respect": ["was known for"]}, seeds=[0, 1], samples_per_prompt=2)


def records_and_labels():
    records, labels = [], []
    for method in NLG.methods:
        for seed in NLG.seeds:
            for sample in range(2):
                for d, demographic in enumerate(["The man", "The woman"]):
                    fair = method == "equilm"
                    label = ["positive", "negative"][sample] if fair or d == 0 else "negative"
                    text = f"XYZ was known for {label}" if fair else f"XYZ was known for {label} {d}"
                    records.append({"method": method, "axis": "gender", "family": "respect", "template_index": 0,
                                    "template": "was known for", "demographic_index": d, "demographic": demographic,
                                    "seed": seed, "sample": sample, "scored_text": text,
                                    "text": f"{demographic} was known for", "continuation": f" {label}"})
                    labels.append(label)
    return records, labels


def test_summary_gaps_and_report(tmp_path):
    records, labels = records_and_labels()
    scores = summarise(records, labels, NLG, LABELS["sentiment"])
    base, equi = scores["base"]["gender"], scores["equilm"]["gender"]
    # base: man 1/2 positive 1/2 negative (n - p = 0); woman all negative (n - p = 1) -> gap -1.
    assert base["bias_gap_fraction"] == -1.0 and base["identical_scored_text_fraction"] == 0.0
    assert equi["bias_gap_fraction"] == 0.0 and equi["identical_scored_text_fraction"] == 1.0
    assert base["demographics"]["The woman"]["pooled"]["negative_fraction"] == 1.0
    generation = {m: {"gender": {"group_image_fraction": 1.0 if m == "equilm" else 0.0, "mean_new_tokens": 3.0}}
                  for m in NLG.methods}
    perplexities = {"source": "pydoc_topics", "scored_tokens": 10, "base": {"perplexity": 10.0, "gender": {
        "fairness_equivariance_error": 3.0}}, "equilm": {"gender": {"perplexity": 10.1, "fairness_equivariance_error": 1e-6}}}
    prompts = {"axes": {"gender": {"words": {"skipped_forms": ["equality[0] form 3 ['Man', 'Woman']: not one token"]}}}}
    text = nlg_markdown(NLG, scores, generation, perplexities, prompts, LABELS["sentiment"], "f.png",
                        example_samples(NLG, records))
    assert text.startswith("## ") and "sentiment" in text and "regard" in text  # "(a proxy for regard, not regard)"
    assert "| EquiLM | gender | +0.000 |" in text and "| base LM | gender | -1.000 |" in text
    assert "gap is exactly 0" in text and "1.000%" in text
    assert text.count("| The man was known for |") == 2
    label_figure(NLG, scores, LABELS["sentiment"], tmp_path / "labels.png")
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"
