"""Paths flow one way: dvc.yaml writes each path once and passes it as an argument. The report stages find each
cell's file from the grid with the experiment's cell-name function: here it must name exactly the file that
dvc.yaml passes to that cell's stage, for every cell of the grid."""

from __future__ import annotations

from pathlib import Path

from equitune.images.cells import Cell
from equitune.scan.cells import ScanCell
from helpers.paths import dvc_commands


def _options(stage: str) -> dict[str, str]:
    words = dvc_commands()[stage][2:]
    return {words[i].removeprefix("--"): words[i + 1] for i in range(0, len(words) - 1) if words[i].startswith("--")}


def _stages(prefix: str) -> list[str]:
    return [name for name in dvc_commands() if name.startswith(prefix)]


def test_scan_report_finds_every_tune_cell_file():
    metrics_dir = Path(_options("scan_report")["metrics-dir"])
    stages = _stages("scan_tune@")
    assert stages
    for stage in stages:
        args = _options(stage)
        cell = ScanCell(args["split"], args["cell"], int(args["seed"]))
        assert Path(args["metrics"]) == metrics_dir / f"{cell.name}.json", stage
        assert stage == f"scan_tune@{cell.split}-{cell.cell}-{cell.seed}"


def test_scan_tune_reads_the_model_its_pretrain_stage_writes():
    for stage in _stages("scan_tune@"):
        pretrain = _options(stage.replace("scan_tune@", "scan_pretrain@"))
        assert _options(stage)["model"] == pretrain["out"] and _options(stage)["data"] == pretrain["data"]


def test_images_report_finds_every_evaluated_cell_and_feature_figure():
    report = _options("images_report")
    stages = _stages("tune_images_")
    assert stages
    for stage in stages:
        args = _options(stage)
        cell = Cell(args["dataset"], args["backbone"], args["method"], args["group"], int(args["seed"]))
        assert Path(args["metrics"]) == Path(report["metrics-dir"]) / f"{cell.name}.json", stage
        cache = _options(f"cache_images@{cell.dataset}-{cell.backbone}")
        assert args["cache"] == cache["out"] and args["data"] == cache["data"]
    for stage in _stages("features_images@"):
        args = _options(stage)
        assert Path(args["png"]) == Path(report["features-dir"]) / f"features-{args['dataset']}.png"
        assert Path(args["metrics"]) == Path(report["metrics-dir"]) / f"features-{args['dataset']}.json"


def test_nlg_stages_read_what_the_previous_ones_write():
    prompts = _options("prompts_nlg")["out"]
    generate, score = _options("generate_nlg"), _options("score_nlg")
    perplexity, report = _options("perplexity_nlg"), _options("nlg_report")
    assert generate["prompts"] == score["prompts"] == perplexity["prompts"] == report["prompts"] == prompts
    assert score["samples"] == report["samples"] == generate["samples"]
    assert (report["generation"], report["scores"], report["perplexity"]) == (
        generate["metrics"], score["metrics"], perplexity["metrics"])


def test_the_report_stitches_the_sections_the_experiments_write():
    words = dvc_commands()["report"]
    sections = words[words.index("--sections") + 1: words.index("--out")]
    assert sections == [_options("images_report")["out"], _options("scan_report")["out"], _options("nlg_report")["out"]]
