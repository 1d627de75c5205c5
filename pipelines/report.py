"""Stage `report`: stitch the experiments' sections, in the order given, under an environment header; write the
environment record (CPU, kernels, library versions) that the reproduce check compares before comparing digits; and
the headline metrics, the numbers of the README's results table, one small file each (equitune.pipeline.headline):
what `dvc metrics show` and `dvc metrics diff` print."""

from __future__ import annotations

from pathlib import Path

from equitune.images.config import ImagesParams
from equitune.images.report import ROTATION_NAMES, expected_accuracy, summarise
from equitune.pipeline.headline import over_seeds, statistic, write_headline
from equitune.pipeline.io import read_json, write_json, write_text
from equitune.pipeline.report import build_report
from equitune.pipeline.reproducibility import environment_record
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.pipeline.tracking import tracked_run
from equitune.scan.config import ScanParams
from equitune.scan.report import METHODS as SCAN_METHODS
from equitune.scan.report import collect


def scan_headline(params: ScanParams, metrics_dir: Path) -> dict[str, dict]:
    """Test exact match of every method of the SCAN table, per (split, group, cell), over seeds."""
    results = collect(params, metrics_dir)
    entries = {}
    for (split, cell, group), rows in results.tune.items():
        for method, _ in SCAN_METHODS:
            values = ([row["test_accuracy"] for row in results.pretrain[(split, cell)]] if method == "pretrained"
                      else [row[method]["test_accuracy"] for row in rows])
            entries[f"scan/{split}-{group}-{cell}-{method}"] = over_seeds(values)
    return entries


def images_headline(params: ImagesParams, metrics_dir: Path) -> dict[str, dict]:
    """Top-1 accuracy of every (dataset, backbone, method, group) under a random quarter turn, in expectation, and
    upright, over seeds."""
    entries = {}
    for (dataset, backbone, method, group), rows in summarise(params, metrics_dir).items():
        name = f"images/{dataset}-{backbone}-{method}-{group}"
        entries[f"{name}-rotated"] = over_seeds(expected_accuracy(m, ROTATION_NAMES) for _, m in rows)
        entries[f"{name}-upright"] = over_seeds(m["test_accuracy_upright"] for _, m in rows)
    return entries


def nlg_headline(scores: dict, perplexity: dict) -> dict[str, dict]:
    """The bias gap of every (model, axis, method), for the LM and the planted-bias control, with its interval and
    p-value; the perplexity on the held-out text of every (axis, method)."""
    entries = {}
    for model in ("lm", "control"):
        for method, axes in scores.get(model, {}).items():
            for axis, found in axes.items():
                gap = found["bias_gap"]
                entries[f"nlg/{model}-{axis}-{method}-bias_gap"] = statistic(gap["value"], gap.get("ci"),
                                                                            gap.get("p_value"))
    for axis, methods in perplexity.get("perplexity", {}).items():
        for method, found in methods.items():
            entries[f"nlg/perplexity-{axis}-{method}"] = statistic(found["all"]["perplexity"])
    return entries


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--sections", type=Path, nargs="+", required=True, help="the experiments' sections, in order")
    parser.add_argument("--out", type=Path, required=True, help="the report's markdown file")
    parser.add_argument("--environment", type=Path, required=True, help="the environment record (JSON)")
    parser.add_argument("--scan-metrics", type=Path, required=True, help="the SCAN cells' metrics folder")
    parser.add_argument("--images-metrics", type=Path, required=True, help="the image cells' metrics folder")
    parser.add_argument("--nlg-scores", type=Path, required=True, help="the NLG scores' metrics file")
    parser.add_argument("--nlg-perplexity", type=Path, required=True, help="the NLG perplexity metrics file")
    parser.add_argument("--headline", type=Path, required=True, help="the headline metrics folder")
    args = parser.parse_args(argv)
    loaded = load_section(args.params, None, None)
    scan = load_section(args.params, "scan", ScanParams).section
    images = load_section(args.params, "images", ImagesParams).section
    record = environment_record(loaded.base.threads, loaded.base.deterministic)
    headline = {**scan_headline(scan, args.scan_metrics), **images_headline(images, args.images_metrics),
                **nlg_headline(read_json(args.nlg_scores), read_json(args.nlg_perplexity))}
    with tracked_run("report", profile=loaded.profile, params=loaded.base, tags={"profile": loaded.profile}) as run:
        write_text(args.out, build_report(loaded.profile, loaded.base, args.sections, record))
        run.log_artifact(args.out)
    write_headline(args.headline, headline)
    write_json(args.environment, record)  # last: a run that fails to close leaves no environment record


if __name__ == "__main__":
    run_stage(main)
