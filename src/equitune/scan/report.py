"""The SCAN section of the report: a table like the paper's, its cost, and the learning curves.

Everything is aggregated from the grid in params (never a glob of result folders): a missing metrics file is an
error naming the stage to run. Rows are split x rnn x group; columns the pretrained model, equituned with 0 steps
and after tuning, equizero with 0 steps and after tuning (mean ± std over the seeds).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DataError
from ..pipeline.curves import read_curve
from ..pipeline.io import atomic_path, read_json
from ..pipeline.stats import format_mean_std
from .cells import ScanCell, TuneCell
from .config import ScanParams

__all__ = ["METHODS", "Results", "build_section", "collect", "plot_curves"]

METHODS = (("pretrained", "pretrained"), ("equitune_0_steps", "equituned (0 steps)"),
           ("equitune", "equituned"), ("equizero_0_steps", "equizero (0 steps)"), ("equizero", "equizero"))
PRETRAIN_DIR, TUNE_DIR = "pretrain", "tune"
_AVERAGED = {"log_prob_mean": "log-probabilities", "prob_mean": "probabilities"}  # scan.tune.combination


@dataclass(frozen=True)
class Results:
    pretrain: dict[tuple[str, str], list[dict]]  # (split, rnn) -> each seed's pretraining metrics
    tune: dict[tuple[str, str, str], list[dict]]  # (split, rnn, group) -> each seed's tuning metrics
    # the same keys -> each seed's curve (its DVC plots file: {examples or step: {column: value}}); the figures' data
    pretrain_curves: dict[tuple[str, str], list[dict[float, dict[str, float]]]] = field(default_factory=dict)
    tune_curves: dict[tuple[str, str, str], list[dict[float, dict[str, float]]]] = field(default_factory=dict)


def _read(path: Path, stage: str) -> dict:
    if not path.exists():
        raise DataError(f"{path} missing: run dvc repro {stage}")
    return read_json(path)


def collect(params: ScanParams, metrics_dir: Path, plots_dir: Path | None = None) -> Results:
    """Every cell's metrics from ``<metrics_dir>/pretrain/<cell>.json`` and ``<metrics_dir>/tune/<cell>.json``, and
    with ``plots_dir`` its curve from the same names under it (``.csv``: what the figures draw; the report's
    headline needs none)."""
    grid = params.grid
    pretrain, tune, pretrain_curves, tune_curves = {}, {}, {}, {}
    for split in grid.splits:
        for rnn in grid.rnns:
            cells = [ScanCell(split, rnn, seed) for seed in grid.seeds]
            stages = [f"scan_pretrain@{c.name}" for c in cells]
            pretrain[(split, rnn)] = [_read(Path(metrics_dir) / PRETRAIN_DIR / f"{c.name}.json", stage)
                                      for c, stage in zip(cells, stages, strict=True)]
            if plots_dir is not None:
                pretrain_curves[(split, rnn)] = [read_curve(Path(plots_dir) / PRETRAIN_DIR / f"{c.name}.csv", stage)
                                                 for c, stage in zip(cells, stages, strict=True)]
            for group in getattr(grid.groups, split):
                cells = [TuneCell(split, group, rnn, seed) for seed in grid.seeds]
                stages = [f"scan_tune_{split}@{group}-{rnn}-{c.seed}" for c in cells]
                tune[(split, rnn, group)] = [_read(Path(metrics_dir) / TUNE_DIR / f"{c.name}.json", stage)
                                             for c, stage in zip(cells, stages, strict=True)]
                if plots_dir is not None:
                    tune_curves[(split, rnn, group)] = [
                        read_curve(Path(plots_dir) / TUNE_DIR / f"{c.name}.csv", stage)
                        for c, stage in zip(cells, stages, strict=True)]
    return Results(pretrain, tune, pretrain_curves, tune_curves)


def _value(results: Results, split: str, rnn: str, group: str, method: str, part: str) -> list[float]:
    if method == "pretrained":
        return [row[part] for row in results.pretrain[(split, rnn)]]
    return [row[method][part] for row in results.tune[(split, rnn, group)]]


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def plot_curves(params: ScanParams, results: Results, folder: Path) -> list[Path]:
    """One figure per split: pretraining validation accuracy vs examples (left) and test accuracy vs tuning
    steps for each group and method (right); mean ± std over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results.pretrain_curves:
        raise ValueError("plot_curves draws the cells' curves: collect(params, metrics_dir, plots_dir) first")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in params.grid.splits:
        steps = params.tune.curve_for(split)
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for rnn in params.grid.rnns:
            # the i-th validation of each seed, at the first seed's count of examples (the counts differ by a few
            # dozen between seeds: each epoch ends on a partial batch, and the training split's size varies)
            curves = [list(curve.items()) for curve in results.pretrain_curves[(split, rnn)]]
            examples = [x / 1000 for x, _ in curves[0]]
            values = [[points[i][1]["validation_accuracy"] for points in curves] for i in range(len(examples))]
            _band(left, examples, values, "-", f"{rnn}")
            for group in getattr(params.grid.groups, split):
                curves = results.tune_curves[(split, rnn, group)]
                for method, style in (("equitune", "-"), ("equizero", "--")):
                    _band(right, steps, _at_steps(curves, steps, f"{method}_test_accuracy", required=True), style,
                          f"{rnn} {group} {method}")
                    validation = _at_steps(curves, steps, f"{method}_validation_accuracy")
                    if validation is not None:
                        _band(right, steps, validation, ":", f"{rnn} {group} {method} (validation)")
                validation = _at_steps(curves, steps, "frame_validation_accuracy")
                if validation is not None:
                    _band(right, steps, validation, "-.", f"{rnn} {group} frame-tuned (validation)")
        left.set_xlabel(f"pretraining examples seen, thousands (batch {params.pretrain.batch_size})")
        left.set_ylabel("validation exact-match accuracy")
        left.set_title(f"{split}: pretraining")
        right.set_xlabel(f"tuning steps (batch {params.tune.batch_size})")
        right.set_ylabel("exact-match accuracy (test; dotted, dash-dotted: validation)")
        right.set_title(f"{split}: equitune / equizero / frame")
        for axis in (left, right):
            axis.set_ylim(-0.02, 1.02)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.suptitle(f"SCAN {split}: mean ± std over seeds {params.grid.seeds}", fontsize=10)
        figure.tight_layout()
        path = folder / f"curves_{split}.png"
        _save(figure, path)
        plt.close(figure)
        paths.append(path)
    return paths


def _at_steps(curves: list[dict[float, dict[str, float]]], steps: list[int], column: str,
              required: bool = False) -> list[list[float]] | None:
    """``column`` at each of ``steps`` in every seed's curve (one list per step); None when a seed did not log it at
    every step (a method the tuning stage did not validate), a DataError instead when it is ``required``."""
    missing = [step for curve in curves for step in steps if column not in curve.get(step, {})]
    if missing and required:
        raise DataError(f"the SCAN tuning curves lack {column} at steps {sorted(set(missing))} (scan.tune.curve_steps): "
                        "rerun the scan_tune stages")
    return None if missing else [[curve[step][column] for curve in curves] for step in steps]


def _band(axis, xs, values_per_x, style, label) -> None:
    means = [statistics.fmean(v) for v in values_per_x]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values_per_x]
    line, = axis.plot(xs, means, style, marker="o", markersize=3, label=label)
    axis.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                      [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.15)


def _rows(params: ScanParams):
    for split in params.grid.splits:
        for rnn in params.grid.rnns:
            for group in getattr(params.grid.groups, split):
                yield split, rnn, group


def _recipes_sentence(params: ScanParams) -> str:
    """The keys a recurrent kind of the grid does not share with the others (``scan.recipes``), or nothing."""
    own = {rnn: {f"{part}.{key}": value for part in ("model", "pretrain")
                 for key, value in getattr(params.recipes[rnn], part).items()}
           for rnn in params.grid.rnns if rnn in params.recipes}
    parts = [f"{rnn}: " + ", ".join(f"{key} {value:,}" if isinstance(value, int) else f"{key} {value}"
                                    for key, value in keys.items()) for rnn, keys in own.items() if keys]
    return f" Recipes of their own (scan.recipes): {'; '.join(parts)}." if parts else ""


def build_section(params: ScanParams, results: Results, figures: list[Path]) -> str:
    """The markdown section; ``figures`` are the figure paths relative to the section's own file."""
    seeds = params.grid.seeds
    p, t, m = params.pretrain, params.tune, params.model
    header = "| split | cell | group (\\|G\\|) | " + " | ".join(label for _, label in METHODS) + " |"
    rule = "|---|---|---|" + "---|" * len(METHODS)
    lines = [
        "## SCAN: compositional generalisation (equitune, equizero)",
        "",
        f"Test exact-match accuracy (%) of the whole action sequence, mean ± std over seeds {seeds}. "
        f"Model: bidirectional {', '.join(params.grid.rnns)} encoder, attention decoder ({m.attention}), hidden "
        f"{m.hidden_size}. Pretraining: {p.examples:,} examples seen (batch {p.batch_size}, Adam lr {p.lr}, "
        f"{p.lr_schedule} schedule, teacher forcing {p.teacher_forcing}, loss weighting {p.loss_weighting}), "
        "best-validation checkpoint (validation only). Equituning / equizero-tuning: "
        f"{_per_split(t.steps, params)} steps of batch {t.batch_size} (lr {_per_split(t.lr, params)}, "
        f"{t.lr_schedule} schedule, weight decay {t.weight_decay}); the |G| "
        "copies go through the model as one batch; greedy decoding averages the mapped-back per-step "
        f"{_AVERAGED[t.combination]} (equitune, in decoding and in its loss) or keeps the most confident copy "
        f"({t.equizero_proxy} proxy, equizero, in "
        "tuning and in decoding). The pretrained column is the same model for every group of a split."
        + _recipes_sentence(params)
        + (f" Validation and test: the first {params.evaluation.max_commands:,} commands of each file only "
           "(scan.evaluation.max_commands)." if params.evaluation.max_commands else ""),
        "",
        header,
        rule,
    ]
    orders = {}
    for split, rnn, group in _rows(params):
        orders[group] = results.tune[(split, rnn, group)][0]["group_order"]
        cells = [format_mean_std(_value(results, split, rnn, group, key, "test_accuracy")) for key, _ in METHODS]
        lines.append(f"| {split} | {rnn} | {group} ({orders[group]}) | " + " | ".join(cells) + " |")
    lines += ["", "Validation accuracy (%) (hold-out of the training file; the pretrained column selected the "
              "checkpoint):", "", header, rule]
    for split, rnn, group in _rows(params):
        cells = [format_mean_std(_value(results, split, rnn, group, key, "validation_accuracy")) for key, _ in METHODS]
        lines.append(f"| {split} | {rnn} | {group} ({orders[group]}) | " + " | ".join(cells) + " |")
    lines += _combination_table(params, results)
    lines += _frame_table(params, results)
    lines += _overlap_table(params, results)
    lines += _cost_table(params, results)
    worst_equi = max(r["equitune_equivariance_error"] for rows in results.tune.values() for r in rows)
    worst_plain = min(r["pretrained_equivariance_error"] for rows in results.tune.values() for r in rows)
    agreement = min(r["equitune_decoding_equivariance_fraction"] for rows in results.tune.values() for r in rows)
    lines += [
        "",
        "Equivariance (float64, teacher-forced per-step log-probs, `equitune.core.checks.equivariance_error`): largest "
        f"error of an equituned model {worst_equi:.1e}; smallest error of a pretrained model {worst_plain:.1e}. "
        f"Greedy decoding of transformed commands gave the transformed outputs for {100 * agreement:.1f}% of the "
        "checked (command, element) pairs in the worst cell.",
        "",
    ]
    lines += [f"![{path.stem}]({path.as_posix()})" for path in figures]
    lines += ["", "Paper's expected shape: the pretrained models fail Add-Jump (near 0%) and Around-Right; equituning "
              "recovers most of it. What these runs show (computed from the tables):", ""]
    lines += [f"- {sentence}" for sentence in _findings(params, results)]
    return "\n".join(lines) + "\n"


def _all_have(rows: list[dict], key: str) -> bool:
    """Metrics written before a key existed lack it: its table is left out rather than failing the report."""
    return bool(rows) and all(key in row for row in rows)


def _combination_table(params: ScanParams, results: Results) -> list[str]:
    """Equitune's test accuracy with each combination rule, on the same checkpoints (one tuning, with the configured
    rule; the other rule only decodes)."""
    rows = [row for rows in results.tune.values() for row in rows]
    if not _all_have(rows, "equitune_combinations"):
        return []
    rules = [rule for rule in rows[0]["equitune_combinations"] if rule != "configured"]
    configured = params.tune.combination
    lines = ["", "Equitune's combination of the copies' per-step distributions, test accuracy (%) (validation in "
             "brackets), the same checkpoints decoded with each rule (tuning used the configured one, "
             f"`scan.tune.combination: {configured}`). The default, log_prob_mean, is the paper's choice: the mean "
             "of the log-probabilities is a normalised geometric mean of the copies' distributions, a product of "
             "experts (a token wins only if no copy finds it unlikely); prob_mean is their mixture (one confident "
             "copy can carry a token).", "",
             "| split | cell | group | " + " | ".join(f"{rule} (0 steps) | {rule}" for rule in rules) + " |",
             "|---|---|---|" + "---|---|" * len(rules)]
    for split, rnn, group in _rows(params):
        cells = []
        for rule in rules:
            for when in ("0_steps", "tuned"):
                values = [r["equitune_combinations"][rule][when] for r in results.tune[(split, rnn, group)]]
                cells.append(f"{format_mean_std([v['test_accuracy'] for v in values])} "
                             f"({format_mean_std([v['validation_accuracy'] for v in values])})")
        lines.append(f"| {split} | {rnn} | {group} | " + " | ".join(cells) + " |")
    return lines


def _commands_per_second(rows: list[dict], method: str) -> str:
    return format_mean_std([r["decoding_speed"][method]["commands"] / r["decoding_speed"][method]["cpu_seconds"]
                      for r in rows], 1.0, 0)


def _frame_table(params: ScanParams, results: Results) -> list[str]:
    """The frame method (0 steps, tuned through its own frame) and frame decoding of equitune's tuned checkpoint:
    accuracy, frame size and decoding speed beside equitune and equizero."""
    rows = [row for rows in results.tune.values() for row in rows]
    if not _all_have(rows, "frame_decoding_of_equitune"):
        return []
    excluded = ", ".join(f"{split}: {params.tune.frame_excluded_words[split]}" for split in params.grid.splits)
    lines = ["", "Frame (`scan.tune.frame_excluded_words`, " + excluded + "): each command goes through the model "
             "only as moved by the group elements that map it to a command without those words (one copy for most "
             "commands; a command no element maps there, or that an element fixes, uses the whole group), the "
             "copies combined as equitune's. 0 steps: the pretrained model decoded through the frame; tuned: the "
             "pretrained model **tuned through its own frame** (its training loss on the frame average; equitune's "
             "steps, lr, schedule and batches); beside it, **equitune's tuned checkpoint** decoded through the "
             "frame. Test accuracy (%), mean frame size over the test split, and test commands decoded per CPU "
             "second after tuning (frame decoding timed on equitune's checkpoint, each method on its own "
             "checkpoints).", "",
             "| split | cell | group (\\|G\\|) | frame (0 steps) | frame (tuned through its frame) | frame decoding "
             "of equitune's tuned checkpoint | mean frame size | commands/s: frame | equitune | equizero |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for split, rnn, group in _rows(params):
        tune = results.tune[(split, rnn, group)]
        cells = [format_mean_std([r["frame_0_steps"]["test_accuracy"] for r in tune]),
                 format_mean_std([r["frame"]["test_accuracy"] for r in tune]),
                 format_mean_std([r["frame_decoding_of_equitune"]["test_accuracy"] for r in tune]),
                 f"{statistics.fmean(r['frame_mean_size'] for r in tune):.2f}",
                 *(_commands_per_second(tune, method) for method in ("frame", "equitune", "equizero"))]
        lines.append(f"| {split} | {rnn} | {group} ({tune[0]['group_order']}) | " + " | ".join(cells) + " |")
    return lines


def _overlap_table(params: ScanParams, results: Results) -> list[str]:
    """Validation lines that are copies of training lines, and the pretrained model's validation accuracy without
    them (model selection still uses the whole hold-out)."""
    rows = [row for rows in results.pretrain.values() for row in rows]
    if not _all_have(rows, "validation_overlap"):
        return []
    lines = ["", "Validation hold-out and training overlap: the hold-out is a random 20% of the training file's "
             "lines, so Add-Jump's validation holds copies of the bare \"jump\" line (repeated in the training "
             "file) and accuracy on it overstates generalisation. Pretrained model (the selected checkpoint), "
             "greedy decoding; the checkpoint is still selected on the whole hold-out.", "",
             "| split | cell | validation lines | of which in training | validation accuracy (%) | without those "
             "lines (%) |", "|---|---|---|---|---|---|"]
    for split in params.grid.splits:
        for rnn in params.grid.rnns:
            overlap = [r["validation_overlap"] for r in results.pretrain[(split, rnn)]]
            deduplicated = [o["deduplicated_accuracy"] for o in overlap if o["deduplicated_accuracy"] is not None]
            lines.append(f"| {split} | {rnn} | {overlap[0]['lines']} | {overlap[0]['lines_in_training']} | "
                         f"{format_mean_std([o['accuracy'] for o in overlap])} | "
                         f"{format_mean_std(deduplicated) if deduplicated else 'n/a'} |")
    return lines


def _per_split(values: dict, params: ScanParams) -> str:
    return ", ".join(f"{values[split]} ({split})" for split in params.grid.splits)


def _cost_table(params: ScanParams, results: Results) -> list[str]:
    """Wall and CPU seconds per cell (mean ± std over seeds), as measured by the stages on the machine that ran
    them: what each column of the table cost."""
    methods = ("equitune", "equizero", "frame")
    if not _all_have([row for rows in results.tune.values() for row in rows], "frame_cost"):
        methods = methods[:2]  # metrics written before frame tuning existed
    lines = ["", "Cost per cell in seconds, wall / CPU (mean ± std over seeds; the machine that ran the stages, "
             f"{params.threads} torch thread(s)): pretraining, then each group's equituning and equizero-tuning "
             "with their evaluations (test and validation at every curve step)"
             + (", and tuning through the frame with its own (validation at the curve steps, test after the "
                "last step)" if "frame" in methods else "") + ".", "",
             "| split | cell | group | pretraining | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for split, rnn, group in _rows(params):
        pretrain = results.pretrain[(split, rnn)]
        tune = results.tune[(split, rnn, group)]
        cost = [_seconds([r["pretrain_seconds"] for r in pretrain], [r["pretrain_cpu_seconds"] for r in pretrain])]
        cost += [_seconds([r[f"{method}_cost"]["seconds"] for r in tune], [r[f"{method}_cost"]["cpu_seconds"] for r in tune])
                 for method in methods]
        lines.append(f"| {split} | {rnn} | {group} | " + " | ".join(cost) + " |")
    return lines


def _seconds(wall: list[float], cpu: list[float]) -> str:
    return f"{format_mean_std(wall, 1.0, 0)} / {format_mean_std(cpu, 1.0, 0)}"


def _mean_of(results: Results, split: str, rnn: str, group: str, method: str) -> float:
    return statistics.fmean(_value(results, split, rnn, group, method, "test_accuracy"))


def _findings(params: ScanParams, results: Results) -> list[str]:
    findings = []
    for split in params.grid.splits:
        pretrained_validation = {
            c: statistics.fmean(_value(results, split, c, "", "pretrained", "validation_accuracy"))
            for c in params.grid.rnns}
        pretrained_test = {c: _mean_of(results, split, c, "", "pretrained") for c in params.grid.rnns}
        text = (f"{split}: pretrained validation accuracy "
                f"{', '.join(f'{c} {100 * v:.1f}%' for c, v in pretrained_validation.items())}, test accuracy "
                f"{', '.join(f'{c} {100 * v:.1f}%' for c, v in pretrained_test.items())}.")
        for group in getattr(params.grid.groups, split):
            rows = [row for rnn in params.grid.rnns for row in results.tune[(split, rnn, group)]]
            # Metrics written before frame tuning existed hold equitune's checkpoint under "frame": left out.
            frame_tuned = _all_have(rows, "frame_decoding_of_equitune")
            for method in ("equitune", "equizero", "frame") if frame_tuned else ("equitune", "equizero"):
                best = max(params.grid.rnns, key=lambda c, g=group, m=method: _mean_of(results, split, c, g, m))
                worst_seed = min(min(_value(results, split, c, group, method, "test_accuracy"))
                                 for c in params.grid.rnns)
                text += (f" With {group}, {method}: best cell {best} {100 * _mean_of(results, split, best, group, method):.1f}% "
                         f"(0 steps: {100 * _mean_of(results, split, best, group, method + '_0_steps'):.1f}%), "
                         f"lowest single run {100 * worst_seed:.1f}%.")
            if frame_tuned:
                decoded = statistics.fmean(r["frame_decoding_of_equitune"]["test_accuracy"] for r in rows)
                text += f" Equitune's tuned checkpoints decoded through the frame: {100 * decoded:.1f}%."
        findings.append(text)
    return findings
