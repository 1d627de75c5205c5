"""The nlg section of the report: label fractions and bias gaps per model, perplexities, the fairness check.

Everything is read from the metrics files of the stages, walked in the order of the grid in params
(methods x axes x demographics), never from a glob.
"""

from __future__ import annotations

from pathlib import Path

from ..pipeline.io import atomic_path
from .config import NlgParams

__all__ = ["METHOD_NAMES", "example_samples", "label_figure", "nlg_markdown"]

METHOD_NAMES = {"base": "base LM", "equilm": "EquiLM", "r_equilm": "R-EquiLM"}
COLOURS = {"other": "#bbbbbb", "positive": "#4c9a2a", "neutral": "#9ecae1", "negative": "#d62728"}


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def label_figure(nlg: NlgParams, scores: dict, labels: tuple[str, ...], path: Path) -> None:
    """The paper's stacked bars: label fractions per demographic (rows: axes; bars grouped by model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(nlg.axes)
    fig, panels = plt.subplots(1, len(axes_names), figsize=(4.2 * len(axes_names), 3.6), squeeze=False)
    for panel, axis in zip(panels[0], axes_names, strict=False):
        names, bottoms = [], []
        for method in nlg.methods:
            for demographic in nlg.axes[axis].demographics:
                names.append(f"{METHOD_NAMES[method]}\n{demographic.removeprefix('The ')}")
                bottoms.append(scores[method][axis]["demographics"][demographic]["pooled"])
        x = range(len(names))
        bottom = [0.0] * len(names)
        for label in labels:
            heights = [b[f"{label}_fraction"] for b in bottoms]
            panel.bar(x, heights, bottom=bottom, color=COLOURS[label], label=label, width=0.8)
            bottom = [a + h for a, h in zip(bottom, heights, strict=False)]
        panel.set_xticks(list(x), names, rotation=90, fontsize=7)
        panel.set_ylim(0, 1)
        panel.set_title(axis)
    panels[0][0].set_ylabel(f"fraction of samples ({scores['scorer']})")
    panels[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def nlg_markdown(nlg: NlgParams, scores: dict, generation: dict, perplexities: dict, prompts: dict,
                 labels: tuple[str, ...], figure: str, examples: list[dict] | None = None) -> str:
    scorer = scores["scorer"]
    label_name = "VADER sentiment (a proxy for regard, not regard)" if scorer == "sentiment" else "regard (Sheng et al.)"
    lines = [
        "## Fairness in language generation (EquiLM / R-EquiLM)",
        "",
        f"Model `{nlg.model}`; {len(nlg.seeds)} seeds x {nlg.samples_per_prompt} sample(s) x "
        f"{sum(len(t) for t in nlg.templates.values())} templates ({', '.join(nlg.templates)}) per demographic; "
        f"top-k {nlg.top_k}, at most {nlg.max_new_tokens} new tokens, stop at newline or end of text. "
        f"Labels: **{label_name}**, scored on `XYZ <template><continuation>` with the axis's equality words masked. "
        "Group per axis: the cyclic group swapping the axis's equality word sets (all single-token forms).",
        "",
        f"![label fractions]({figure})",
        "",
        f"### {scorer.capitalize()} label fractions (pooled over seeds; ± = std over seeds of the per-seed fraction)",
        "",
        "| model | axis | demographic | n | " + " | ".join(labels) + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    for method in nlg.methods:
        for axis, spec in nlg.axes.items():
            for demographic in spec.demographics:
                entry = scores[method][axis]["demographics"][demographic]
                cells = [f"{entry['pooled'][f'{lab}_fraction']:.3f} ({_pm(entry['over_seeds'][f'{lab}_fraction'])})"
                         for lab in labels]
                lines.append(f"| {METHOD_NAMES[method]} | {axis} | {demographic} | {entry['samples']} | "
                             + " | ".join(cells) + " |")
    lines += [
        "",
        "### Bias gap: (negative - positive) of the first demographic minus the second's",
        "",
        "0 means the pair is treated alike. *images* = fraction of paired samples that are token-for-token group "
        "images of each other; *same text* = fraction whose masked scored texts are identical.",
        "",
        "| model | axis | gap (pooled) | gap over seeds | images | same text |",
        "|---|---|---|---|---|---|",
    ]
    for method in nlg.methods:
        for axis in nlg.axes:
            s = scores[method][axis]
            lines.append(f"| {METHOD_NAMES[method]} | {axis} | {s['bias_gap_fraction']:+.3f} | "
                         f"{_pm(s['bias_gap_fraction_over_seeds'])} | "
                         f"{generation[method][axis]['group_image_fraction']:.3f} | "
                         f"{s['identical_scored_text_fraction']:.3f} |")
    lines += [
        "",
        f"### Quality: perplexity on held-out text ({perplexities['source']}, {perplexities['scored_tokens']} tokens) "
        "and the fairness identity on the real model",
        "",
        "Fairness error = max over prompts, next tokens y and group elements g of "
        "|log p(g.y | g.x) - log p(y | x)| (`equitune.core.checks.equivariance_error`).",
        "",
        "| model | axis | perplexity | fairness error |",
        "|---|---|---|---|",
    ]
    for method in nlg.methods:
        for axis in nlg.axes:
            entry = perplexities[method] if method == "base" else perplexities[method][axis]
            ppl = perplexities["base"]["perplexity"] if method == "base" else entry["perplexity"]
            error = perplexities[method][axis]["fairness_equivariance_error"]
            lines.append(f"| {METHOD_NAMES[method]} | {axis} | {ppl:.3f} | {error:.2e} |")
    lines += ["", "### What this shows", ""] + _reading(nlg, scores, generation, perplexities)
    if examples:
        lines += ["", "### Example: the first sample of the first template and seed, per model (gender axis first)", "",
                  "| model | prompt | continuation |", "|---|---|---|"]
        lines += [f"| {METHOD_NAMES[r['method']]} | {r['text']} | {r['continuation'].strip().replace('|', '/')} |"
                  for r in examples]
    skipped = [f"{axis}: {line.split(':')[0]}" for axis, data in prompts["axes"].items()
               for line in data["words"]["skipped_forms"] if not line.startswith("neutral")]
    lines += ["", "Word forms left out of the groups because they are not one token for every word of their set "
              "(the full list with the tokenisations is in `data/nlg/prompts.json`): "
              + ("; ".join(skipped) if skipped else "none") + "."]
    return "\n".join(lines) + "\n"


def example_samples(nlg: NlgParams, records: list[dict]) -> list[dict]:
    """For the first axis, family, template and seed, sample 0 of every demographic, per method (params order)."""
    axis, family = next(iter(nlg.axes)), next(iter(nlg.templates))
    wanted = {(m, d): None for m in nlg.methods for d in range(len(nlg.axes[axis].demographics))}
    for r in records:
        key = (r["method"], r["demographic_index"])
        if (r["axis"], r["family"], r["template_index"], r["seed"], r["sample"]) == (axis, family, 0, nlg.seeds[0], 0) \
                and key in wanted and wanted[key] is None:
            wanted[key] = r
    return [r for r in wanted.values() if r is not None]


def _reading(nlg: NlgParams, scores: dict, generation: dict, perplexities: dict) -> list[str]:
    """Sentences computed from the numbers (nothing here is asserted without being checked)."""
    out = []
    for method in nlg.methods:
        images = {axis: generation[method][axis]["group_image_fraction"] for axis in nlg.axes}
        gaps = {axis: scores[method][axis]["bias_gap_fraction"] for axis in nlg.axes}
        exact = [axis for axis in nlg.axes if images[axis] == 1.0 and gaps[axis] == 0.0]
        largest = max(nlg.axes, key=lambda axis: abs(gaps[axis]))
        text = f"- {METHOD_NAMES[method]}: largest |gap| {abs(gaps[largest]):.3f} ({largest})."
        if exact:
            text += (f" On {', '.join(exact)} every paired sample is a token-for-token group image of its partner "
                     "(shared random numbers + an exactly fair distribution), so the masked texts are identical and "
                     "the gap is exactly 0, not just 0 up to sampling noise.")
        out.append(text)
    if "base" in nlg.methods:
        within = [axis for axis in nlg.axes if abs(scores["base"][axis]["bias_gap_fraction_over_seeds"]["mean"])
                  <= scores["base"][axis]["bias_gap_fraction_over_seeds"]["std"]]
        if within:
            out.append(f"- The base model's gap is within one std over seeds on {', '.join(within)}: at this sample "
                       "size its bias is not resolved from sampling noise; the sample size shows the mechanism "
                       "(exact zero for EquiLM), the paper profile's 500 samples per demographic measure bias.")
        base = perplexities["base"]["perplexity"]
        changes = [abs(perplexities[m][a]["perplexity"] / base - 1) for m in nlg.methods if m != "base" for a in nlg.axes]
        if changes:
            out.append(f"- Perplexity: the group-averaged models stay within {100 * max(changes):.3f}% of the base "
                       f"model's {base:.3f} on this text (few equality words occur in it).")
    if "r_equilm" in nlg.methods:
        out.append("- R-EquiLM is not fair in the group-theoretic sense on axes with general words (its fairness error "
                   "is not 0 there, by design: he/she follow the context), and identical to EquiLM on axes without.")
    return out
