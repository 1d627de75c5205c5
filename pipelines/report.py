"""Stage `report`: stitch the experiments' sections, in the order given, under an environment header; write the
environment record (CPU, kernels, library versions) that the reproduce check compares before comparing digits; and
the headline metrics, the numbers of the README's results table, one small file each (equitune.pipeline.headline):
what `dvc metrics show` and `dvc metrics diff` print."""

from __future__ import annotations

from pathlib import Path

from equitune.images.config import ImagesParams
from equitune.images.report import ROTATION_NAMES, expected_accuracy
from equitune.images.report import collect as collect_images
from equitune.pipeline.context import open_stage, stage_threads
from equitune.pipeline.headline import over_seeds, statistic, write_headline
from equitune.pipeline.io import read_json, write_json, write_text
from equitune.pipeline.report import build_report
from equitune.pipeline.reproducibility import environment_record
from equitune.pipeline.schema import load_section
from equitune.pipeline.stage import add_paths, argument_parser, run_stage
from equitune.scan.config import ScanParams
from equitune.scan.report import METHODS as SCAN_METHODS
from equitune.scan.report import collect


def scan_headline(params: ScanParams, metrics_dir: Path) -> dict[str, dict]:
    """Test exact match of every method of the SCAN table, per (split, group, rnn), over seeds."""
    results = collect(params, metrics_dir)
    entries = {}
    for (split, rnn, group), rows in results.tune.items():
        for method, _ in SCAN_METHODS:
            values = ([row["test_accuracy"] for row in results.pretrain[(split, rnn)]] if method == "pretrained"
                      else [row[method]["test_accuracy"] for row in rows])
            entries[f"scan/{split}-{group}-{rnn}-{method}"] = over_seeds(values)
    return entries


def images_headline(params: ImagesParams, metrics_dir: Path) -> dict[str, dict]:
    """Top-1 accuracy of every (dataset, backbone, method, group) under a random quarter turn, in expectation, and
    upright, over seeds."""
    entries = {}
    for (dataset, backbone, method, group), rows in collect_images(params, metrics_dir).items():
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
    args = add_paths(parser, out="the report's markdown file", environment="the environment record (JSON)",
                     scan_metrics="the SCAN cells' metrics folder", images_metrics="the image cells' metrics folder",
                     nlg_scores="the NLG scores' metrics file", nlg_perplexity="the NLG perplexity metrics file",
                     headline="the headline metrics folder").parse_args(argv)
    scan = load_section(args.params, "scan", ScanParams)
    images = load_section(args.params, "images", ImagesParams).section
    with open_stage(args, None, None, task="report") as stage:
        record = environment_record(stage.threads, stage.base.deterministic)
        headline = {**scan_headline(scan.section, args.scan_metrics), **images_headline(images, args.images_metrics),
                    **nlg_headline(read_json(args.nlg_scores), read_json(args.nlg_perplexity))}
        with stage.run({"profile": stage.profile}) as run:
            write_text(args.out, build_report(stage.profile, stage.base, args.sections, record,
                                              {"scan": stage_threads(scan)}))
            run.log_artifact(args.out)
    write_headline(args.headline, headline)
    write_json(args.environment, record)  # last: a run that fails to close leaves no environment record


if __name__ == "__main__":
    run_stage(main)
