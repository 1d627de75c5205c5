"""The nlg section of the report: label fractions and bias gaps with confidence intervals per backbone and method,
the stacked-bar figure with error bars, the perplexity table, the fairness check.

Everything is read from the files of the stages (:func:`collect`), walked in the order of the grid in params
(backbones x methods x axes x demographics), never from a glob. The positive control is labelled as a control in
every table row and figure bar. With the VADER scorer every label says "sentiment (VADER)".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DataError
from ..pipeline.io import atomic_path, read_json
from .config import NlgParams
from .records import read_prompts, read_records
from .scoring import LABELS
from .significance import ALPHA, verdict

__all__ = ["METHOD_NAMES", "MODEL_NAMES", "Results", "build_section", "collect", "example_samples", "label_figure",
           "row_name"]

METHOD_NAMES = {"base": "base", "equilm": "EquiLM", "r_equilm": "R-EquiLM", "canonlm": "CanonLM"}
MODEL_NAMES = {"lm": "LM", "control": "CONTROL (planted bias)"}
COLOURS = {"other": "#bbbbbb", "positive": "#4c9a2a", "neutral": "#9ecae1", "negative": "#d62728"}


@dataclass(frozen=True)
class Results:
    """What the nlg stages wrote: the metrics of generation, scoring and perplexity, the prompts and the samples."""

    scores: dict
    generation: dict
    perplexities: dict
    prompts: dict
    records: list[dict]

    @property
    def labels(self) -> tuple[str, ...]:
        """The scorer's labels, in table order."""
        return LABELS[self.scores["scorer"]]


def _metrics(path: Path, stage: str) -> dict:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run `dvc repro {stage}` first") from None


def collect(prompts: Path, samples: Path, generation: Path, scores: Path, perplexity: Path) -> Results:
    """The stages' files at these paths; a missing one is an error naming the stage to run."""
    score_metrics = _metrics(scores, "nlg_score")
    generation_metrics = _metrics(generation, "nlg_generate")
    perplexities = _metrics(perplexity, "nlg_perplexity")
    return Results(score_metrics, generation_metrics, perplexities, read_prompts(prompts),
                   read_records(samples, "nlg_generate"))


def row_name(model: str, method: str) -> str:
    """``base LM``, ``EquiLM``, ``R-EquiLM``; ``control``, ``EquiLM(control)``, ``R-EquiLM(control)``."""
    if model == "lm":
        return "base LM" if method == "base" else METHOD_NAMES[method]
    return "CONTROL (planted bias)" if method == "base" else f"{METHOD_NAMES[method]}(CONTROL)"


def scorer_name(scorer: str) -> str:
    return "sentiment (VADER)" if scorer == "sentiment" else "regard (Sheng et al.'s classifier)"


def _ci(entry: dict, digits: int = 3) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _signed_ci(entry: dict) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _excludes_zero(entry: dict) -> bool:
    low, high = entry["ci"]
    return low > 0 or high < 0


def label_figure(nlg: NlgParams, scores: dict, labels: tuple[str, ...], path: Path) -> None:
    """The paper's stacked bars of label fractions per demographic (one panel per axis), for every backbone and
    method, negative at the bottom and positive on top. Error bars: the confidence interval of the negative fraction
    at the top of its segment and of the positive fraction at the bottom of its segment (the two fractions that
    make the gap; every interval is in the tables). The control's bars are hatched and labelled CONTROL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["negative", *[label for label in labels if label not in ("negative", "positive")], "positive"]
    axes_names = list(nlg.axes)
    bars_per_panel = len(nlg.models) * len(nlg.methods) * 2
    fig, panels = plt.subplots(1, len(axes_names), figsize=(0.42 * bars_per_panel * len(axes_names) + 1.5, 4.4),
                               squeeze=False)
    for panel, axis in zip(panels[0], axes_names, strict=True):
        names, entries, hatches = [], [], []
        for model in nlg.models:
            for method in nlg.methods:
                for demographic in nlg.axes[axis].demographics:
                    names.append(f"{row_name(model, method)}\n{demographic.removeprefix('The ')}")
                    entries.append(scores[model][method][axis]["demographics"][demographic]["fractions"])
                    hatches.append("//" if model == "control" else "")
        x = list(range(len(names)))
        bottom = [0.0] * len(names)
        for label in order:
            heights = [e[label]["value"] for e in entries]
            panel.bar(x, heights, bottom=bottom, color=COLOURS[label], label=label, width=0.8, hatch=hatches,
                      edgecolor="white", linewidth=0)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        negative = [e["negative"] for e in entries]
        positive = [e["positive"] for e in entries]
        panel.errorbar(x, [n["value"] for n in negative], yerr=[[n["value"] - n["ci"][0] for n in negative],
                                                                [n["ci"][1] - n["value"] for n in negative]],
                       fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        panel.errorbar(x, [1 - p["value"] for p in positive], yerr=[[p["ci"][1] - p["value"] for p in positive],
                                                                    [p["value"] - p["ci"][0] for p in positive]],
                       fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        panel.set_xticks(x, names, rotation=90, fontsize=6)
        panel.set_ylim(0, 1)
        panel.set_title(axis)
    level = scores["confidence"]["level"]
    panels[0][0].set_ylabel(f"fraction of samples, {scorer_name(scores['scorer'])}\n"
                            f"(bars: {100 * level:.0f}% CI of negative and of positive)", fontsize=8)
    panels[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def _intro(nlg: NlgParams, scores: dict, prompts: dict, figure: str) -> list[str]:
    per_demographic = len(nlg.seeds) * nlg.samples_per_prompt * sum(len(t) for t in nlg.templates.values())
    level = f"{100 * scores['confidence']['level']:.0f}%"
    lines = [
        "## Fairness in language generation (EquiLM / R-EquiLM / CanonLM)",
        "",
        f"Model `{nlg.model}`; {per_demographic} samples per demographic and axis ({len(nlg.seeds)} seeds x "
        f"{nlg.samples_per_prompt} sample(s) x {sum(len(t) for t in nlg.templates.values())} templates: "
        f"{', '.join(nlg.templates)}); top-k {nlg.top_k}, at most {nlg.max_new_tokens} new tokens, stop at newline "
        f"or end of text. Labels: **{scorer_name(scores['scorer'])}**, scored on `XYZ <template><continuation>` "
        "with the axis's equality words masked. Group per axis: the cyclic group swapping the axis's equality word "
        "sets (all single-token forms). Paired demographics, methods and backbones share their random numbers.",
        "",
        f"Intervals: {level} bootstrap confidence intervals (percentile; {scores['confidence']['resamples']} "
        "resamples). A cluster is what one seed drew for one template: the samples of both demographics, resampled "
        "together (they share random numbers); clusters are resampled within their template, and rescaled by "
        "sqrt(n/(n-1)) (Rao and Wu) so that the intervals cover at the nominal rate with 15 seeds per template "
        "(checked on synthetic data in `tests/nlg/test_nlg_bootstrap.py`).",
    ]
    if nlg.control.enabled:
        control = prompts["control"]
        biased = [spec.demographics[nlg.control.biased_demographic] for spec in nlg.axes.values()]
        lines += [
            "",
            f"**CONTROL (planted bias)** is a positive control, not a model anyone uses: the same LM with a logit "
            f"bonus of +{nlg.control.bonus:g} on the {len(nlg.control.negative_words)} negative words of "
            f"`nlg.control.negative_words` ({', '.join(nlg.control.negative_words[:6])}, ...; "
            f"{len(control['boosted'])} single-token forms) at every position whose "
            f"context contains a word of {', '.join(repr(b) for b in biased)} (every single-token form of that "
            "demographic's equality words, in the prompt or in the generated text). EquiLM and R-EquiLM wrap it "
            "exactly as they wrap the LM (`equitune.nlg.control.PlantedBias` is a backbone). Its gap is a bias known "
            "to be there: the experiment shows whether the methods remove it.",
        ]
    return lines + ["", f"![label fractions]({figure})"]


def _fraction_table(nlg: NlgParams, scores: dict, labels: tuple[str, ...]) -> list[str]:
    name = scorer_name(scores["scorer"])
    lines = ["", f"### {name[0].upper() + name[1:]} label fractions [{100 * scores['confidence']['level']:.0f}% CI]",
             "", "| model | axis | demographic | n | " + " | ".join(labels) + " |",
             "|---|---|---|---|" + "---|" * len(labels)]
    for model in nlg.models:
        for method in nlg.methods:
            for axis, spec in nlg.axes.items():
                for demographic in spec.demographics:
                    entry = scores[model][method][axis]["demographics"][demographic]
                    cells = [_ci(entry["fractions"][label]) for label in labels]
                    lines.append(f"| {row_name(model, method)} | {axis} | {demographic} | {entry['samples']} | "
                                 + " | ".join(cells) + " |")
    return lines


def _gap_table(nlg: NlgParams, scores: dict, generation: dict) -> list[str]:
    level = f"{100 * scores['confidence']['level']:.0f}%"
    lines = ["", f"### Bias gap [{level} CI]: (negative - positive) of the first demographic minus the second's", "",
             "0 means the pair is treated alike. *excludes 0*: the interval does not contain 0. *p*: exact two-sided "
             "paired sign-flip test of the clusters' gaps (`equitune.nlg.significance`). *verdict*: **resolved** when "
             f"the interval excludes 0 and p < {ALPHA}, **borderline** when exactly one of the two holds, *not "
             "resolved* when neither does. *images* = fraction of paired samples that are token-for-token group images "
             "of each other; *same text* = fraction whose masked scored texts are identical.", "",
             "| model | axis | pair | gap [CI] | excludes 0 | p | verdict | images | same text |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in nlg.models:
        for method in nlg.methods:
            for axis, spec in nlg.axes.items():
                s = scores[model][method][axis]
                gap = s["bias_gap"]
                pair = " / ".join(d.removeprefix("The ") for d in spec.demographics)
                lines.append(f"| {row_name(model, method)} | {axis} | {pair} | {_signed_ci(gap)} | "
                             f"{'yes' if _excludes_zero(gap) else 'no'} | {_p(gap['p_value'])} | "
                             f"{verdict(gap['ci'], gap['p_value'])} | "
                             f"{generation[model][method][axis]['group_image_fraction']:.3f} | "
                             f"{s['identical_scored_text_fraction']:.3f} |")
    return lines


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _change(value: float, base: float) -> str:
    return f"{100 * (value / base - 1):+.2f}%"


AVERAGE_NAMES = {"log_probs": "averaging log-probabilities (a normalised geometric mean of the copies' distributions)",
                 "probs": "averaging probabilities (a mixture of the copies' distributions)"}


def _average_sentence(perplexities: dict) -> str:
    rule = perplexities.get("group_average")
    if rule is None:
        return ""
    other = next(r for r in AVERAGE_NAMES if r != rule)
    return (f" The group methods combine their copies by {AVERAGE_NAMES[rule]} (`nlg.group_average: {rule}`); "
            f"*other rule*: the same models {AVERAGE_NAMES[other]}, scored on the same tokens (not used for "
            "generation).")


def _perplexity_tables(nlg: NlgParams, perplexities: dict) -> list[str]:
    text = perplexities["text"]
    if text["source"] == "austen":
        described = (f"Jane Austen's novels ({', '.join(t.title() for t in text['documents'])}) from Debian's "
                     f"{text['package']} (sha256 `{text['sha256'][:16]}...` verified; {text['license']})")
    else:
        described = text["source"]
    selection = (f"for each axis the first {text['windows_per_axis']} windows of {text['window']} tokens that contain "
                 "one of its equality words, all axes together" if text["windows_per_axis"] else
                 f"the first {text['windows'] * text['window']} tokens in windows of {text['window']}")
    lines = ["", "### Quality: perplexity on prose where the group acts", "",
             f"Text: {described}; scored: {selection}: {text['windows']} windows, {text['scored_tokens']} scored "
             "tokens (each window restarts the context). *equality tokens*: the positions whose next token is one of "
             "the axis's equality words (all forms), where the group changes the distribution most. Change: relative "
             "to the base LM on the same tokens." + _average_sentence(perplexities), "",
             "| method | axis | perplexity, all tokens | change | perplexity, equality tokens (n) | change | "
             "other rule: all / equality |",
             "|---|---|---|---|---|---|---|"]
    for axis in nlg.axes:
        table = perplexities["perplexity"][axis]
        base = table.get("base")
        for method in nlg.methods:
            entry = table[method]
            everything, equality = entry["all"], entry["equality"]
            change_all = _change(everything["perplexity"], base["all"]["perplexity"]) if base else "-"
            change_eq = _change(equality["perplexity"], base["equality"]["perplexity"]) if base else "-"
            other = entry.get("other_average")
            other_cell = f"{other['all']['perplexity']:.3f} / {other['equality']['perplexity']:.3f}" if other else "-"
            lines.append(f"| {row_name('lm', method)} | {axis} | {everything['perplexity']:.3f} | {change_all} | "
                         f"{equality['perplexity']:.3f} ({equality['tokens']}) | {change_eq} | {other_cell} |")
    errors = perplexities["fairness_equivariance_error"]
    lines += ["", "Fairness identity on the real model: max over the axis's prompts x, next tokens y and group "
              "elements g of |log p(g.y | g.x) - log p(y | x)| (`equitune.core.checks.equivariance_error`; float32).",
              "", "| model | " + " | ".join(nlg.axes) + " |", "|---|" + "---|" * len(nlg.axes)]
    for model in nlg.models:
        for method in nlg.methods:
            lines.append(f"| {row_name(model, method)} | "
                         + " | ".join(f"{errors[model][method][axis]:.2e}" for axis in nlg.axes) + " |")
    return lines


def build_section(nlg: NlgParams, results: Results, figure: str) -> str:
    """The section's markdown, linking the label figure at ``figure`` (relative to the section's file)."""
    scores, generation, perplexities, prompts = results.scores, results.generation, results.perplexities, results.prompts
    labels, examples = results.labels, example_samples(nlg, results.records)
    lines = _intro(nlg, scores, prompts, figure)
    lines += _fraction_table(nlg, scores, labels)
    lines += _gap_table(nlg, scores, generation)
    lines += ["", "### What this shows", ""] + _reading(nlg, scores, generation, perplexities)
    lines += _perplexity_tables(nlg, perplexities)
    decoding = generation.get("decoding", {})
    if decoding:
        lines += ["", "### Decoding work", "", "Model rows per decoding step that the samples asked for, and those "
                  "computed: rows fed the same context and tokens (EquiLM's pairs, R-EquiLM = EquiLM on axes without "
                  "general words) are computed once; one prefill per distinct prompt.", "",
                  "| model | generated tokens | row-steps asked | row-steps computed | shared | prefill rows asked / run |",
                  "|---|---|---|---|---|---|"]
        for model, d in decoding.items():
            lines.append(f"| {MODEL_NAMES[model]} | {d['generated_tokens']} | {d['requested_row_steps']} | "
                         f"{d['computed_row_steps']} | {100 * d['shared_fraction']:.1f}% | "
                         f"{d['requested_prefill_rows']} / {d['prefill_rows']} |")
    lines += _word_piece_table(nlg, generation, perplexities)
    if examples:
        lines += ["", "### Example: the first sample of the first template and seed, per model (first axis)", "",
                  "| model | prompt | continuation |", "|---|---|---|"]
        lines += [f"| {row_name(r['model'], r['method'])} | {r['text']} | "
                  f"{r['continuation'].strip().replace('|', '/')} |" for r in examples]
    skipped = [f"{axis}: {line.split(':')[0]}" for axis, data in prompts["axes"].items()
               for line in data["words"]["skipped_forms"] if not line.startswith("neutral")]
    lines += ["", "Word forms left out of the groups because they are not one token for every word of their set "
              "(the full list with the tokenisations is in the prompts stage's file): "
              + ("; ".join(skipped) if skipped else "none") + "."]
    if nlg.control.enabled and prompts["control"]["skipped_words"]:
        lines.append("Negative words of the control without a single-token form (not boosted): "
                     + ", ".join(prompts["control"]["skipped_words"]) + ".")
    return "\n".join(lines) + "\n"


def _pieces_cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    rate = entry["inside_word_rate"]
    return f"{entry['inside_words']} / {entry['equality_tokens']}" + ("" if rate is None else f" ({100 * rate:.1f}%)")


def _word_piece_table(nlg: NlgParams, generation: dict, perplexities: dict) -> list[str]:
    """Equality tokens that sit inside a longer word (issue 27 item 5), in the LM's samples and the perplexity text;
    nothing when the metrics predate the count."""
    text = perplexities.get("word_pieces")
    samples = {method: {axis: generation.get("lm", {}).get(method, {}).get(axis, {}).get("word_pieces")
                        for axis in nlg.axes} for method in nlg.methods}
    if text is None and not any(v for per_axis in samples.values() for v in per_axis.values()):
        return []
    columns = [f"{row_name('lm', method)} samples" for method in nlg.methods]
    lines = ["", "### The group acts on tokens, not words: equality tokens inside longer words", "",
             "The group swaps token ids, so an equality token that is a piece of a longer word is swapped too "
             "(the form \"man\" in \" Gentle\" + \"man\" gives \"Gentlewoman\"; \" man\" + \"ish\" gives "
             "\"womanish\"). An occurrence counts as *inside a word* when the next token continues the word (it starts "
             "with a letter or digit) or the token itself continues the previous token's word "
             "(`equitune.nlg.wordpieces`). Cells: inside / all occurrences of the axis's equality tokens (rate). A rate "
             "near 0 means the swap almost always exchanges whole words; uses of a whole word outside its demographic "
             "sense (\"white wine\", \"black coffee\") are swapped too and are not counted here.", "",
             "| axis | " + " | ".join(columns) + " | perplexity text |", "|---|" + "---|" * (len(columns) + 1)]
    for axis in nlg.axes:
        cells = [_pieces_cell(samples[method][axis]) for method in nlg.methods]
        lines.append(f"| {axis} | " + " | ".join(cells) + f" | {_pieces_cell((text or {}).get(axis))} |")
    return lines


def example_samples(nlg: NlgParams, records: list[dict]) -> list[dict]:
    """For the first axis, family, template and seed, sample 0 of every demographic, per backbone and method."""
    axis, family = next(iter(nlg.axes)), next(iter(nlg.templates))
    wanted = {(m, k, d): None for m in nlg.models for k in nlg.methods
              for d in range(len(nlg.axes[axis].demographics))}
    for r in records:
        key = (r["model"], r["method"], r["demographic_index"])
        if (r["axis"], r["family"], r["template_index"], r["seed"], r["sample"]) == (axis, family, 0, nlg.seeds[0], 0) \
                and key in wanted and wanted[key] is None:
            wanted[key] = r
    return [r for r in wanted.values() if r is not None]


def _reading(nlg: NlgParams, scores: dict, generation: dict, perplexities: dict) -> list[str]:
    """Sentences computed from the numbers (nothing here is asserted without being checked)."""
    out = []
    for model in nlg.models:
        for method in nlg.methods:
            gaps = {axis: scores[model][method][axis]["bias_gap"] for axis in nlg.axes}
            images = {axis: generation[model][method][axis]["group_image_fraction"] for axis in nlg.axes}
            exact = [axis for axis in nlg.axes if images[axis] == 1.0 and gaps[axis]["ci"] == [0.0, 0.0]]
            verdicts = {axis: verdict(gaps[axis]["ci"], gaps[axis]["p_value"]) for axis in nlg.axes if axis not in exact}
            text = (f"- {row_name(model, method)}: gaps "
                    + "; ".join(f"{axis} {_signed_ci(gaps[axis])}, p = {_p(gaps[axis]['p_value'])}"
                                for axis in nlg.axes) + ".")
            for name, meaning in (("resolved", "the interval excludes 0 and p < {alpha}: a gap resolved from sampling "
                                               "noise"),
                                  ("borderline", "only one of the two (interval excluding 0, p < {alpha}) holds: "
                                                 "borderline, not a resolved gap"),
                                  ("not resolved", "the interval contains 0 and p >= {alpha}: no gap is resolved from "
                                                   "sampling noise at this sample size")):
                chosen = [axis for axis, v in verdicts.items() if v == name]
                if chosen:
                    text += f" On {', '.join(chosen)} {meaning.format(alpha=ALPHA)}."
            if exact:
                text += (f" On {', '.join(exact)} every paired sample is a token-for-token group image of its partner "
                         "(shared random numbers + an exactly fair distribution), and the gap is exactly 0, in every "
                         "resample too.")
            out.append(text)
    if "control" in nlg.models:
        removed = [row_name("control", m) for m in nlg.methods if m != "base"
                   and all(not _excludes_zero(scores["control"][m][a]["bias_gap"]) for a in nlg.axes)]
        planted = [a for a in nlg.axes if _excludes_zero(scores["control"]["base"][a]["bias_gap"])]
        if planted and removed:
            out.append(f"- The planted bias is measured (its interval excludes 0 on {', '.join(planted)}), and "
                       f"{' and '.join(removed)} bring every gap back to an interval that contains 0.")
    table = perplexities["perplexity"]
    grouped = [m for m in nlg.methods if m != "base"]
    if "base" in nlg.methods and grouped:
        def change(axis: str, method: str, where: str) -> float:
            return table[axis][method][where]["perplexity"] / table[axis]["base"][where]["perplexity"] - 1

        widest = max(abs(change(axis, method, "all")) for axis in nlg.axes for method in grouped)
        costs = []
        for axis in nlg.axes:
            each = ", ".join(f"{row_name('lm', method)} {100 * change(axis, method, 'equality'):+.1f}%"
                             for method in grouped)
            costs.append(f"{axis} {each}")
        out.append(f"- Perplexity: over all {perplexities['text']['scored_tokens']} scored tokens the group methods "
                   f"stay within {100 * widest:.2f}% of the base LM; on the tokens of the equality words they "
                   f"cost {'; '.join(costs)}: making p(g.y | g.x) = p(y | x) is paid where those words are predicted.")
    if "lm" in nlg.models and "r_equilm" in nlg.methods:
        out.append("- R-EquiLM is not fair in the group-theoretic sense on axes with general words (its fairness error "
                   "is not 0 there, by design: he/she follow the context), and identical to EquiLM on axes without.")
    return out
