"""Paths flow one way: dvc.yaml writes each path once and passes it as an argument. The report stages find each
cell's file from the grid with the experiment's cell-name function: here it must name exactly the file that
dvc.yaml passes to that cell's stage, for every cell of the grid."""

from __future__ import annotations

from pathlib import Path

from equitune.images.cells import Cell
from equitune.scan.cells import ScanCell, TuneCell
from helpers.paths import dvc_commands


def _options(stage: str) -> dict[str, str]:
    words = dvc_commands()[stage][2:]
    return {words[i].removeprefix("--"): words[i + 1] for i in range(0, len(words) - 1) if words[i].startswith("--")}


def _stages(prefix: str) -> list[str]:
    return [name for name in dvc_commands() if name.startswith(prefix)]


def test_scan_report_finds_every_pretrain_and_tune_cell_file():
    metrics_dir = Path(_options("scan_report")["metrics-dir"])
    pretrain_stages, tune_stages = _stages("scan_pretrain@"), _stages("scan_tune_")
    assert pretrain_stages and tune_stages
    for stage in pretrain_stages:
        args = _options(stage)
        cell = ScanCell(args["split"], args["rnn"], int(args["seed"]))
        assert Path(args["metrics"]) == metrics_dir / "pretrain" / f"{cell.name}.json", stage
        assert stage == f"scan_pretrain@{cell.name}"
    for stage in tune_stages:
        args = _options(stage)
        cell = TuneCell(args["split"], args["group"], args["rnn"], int(args["seed"]))
        assert Path(args["metrics"]) == metrics_dir / "tune" / f"{cell.name}.json", stage
        assert stage == f"scan_tune_{cell.split}@{cell.group}-{cell.rnn}-{cell.seed}"


def test_scan_tune_reads_the_model_its_pretrain_stage_writes():
    for stage in _stages("scan_tune_"):
        args = _options(stage)
        pretrain = _options(f"scan_pretrain@{args['split']}-{args['rnn']}-{args['seed']}")
        assert args["model"] == pretrain["out"] and args["data"] == pretrain["data"]


def test_images_report_finds_every_evaluated_cell_and_feature_figure():
    report = _options("images_report")
    stages = _stages("images_tune_")
    assert stages
    for stage in stages:
        args = _options(stage)
        cell = Cell(args["dataset"], args["backbone"], args["method"], args["group"], int(args["seed"]))
        assert Path(args["metrics"]) == Path(report["metrics-dir"]) / f"{cell.name}.json", stage
        cache = _options(f"images_cache@{cell.dataset}-{cell.backbone}")
        assert args["cache"] == cache["out"] and args["data"] == cache["data"]
    for stage in _stages("images_features@"):
        args = _options(stage)
        assert Path(args["png"]) == Path(report["features-dir"]) / f"features-{args['dataset']}.png"
        assert Path(args["metrics"]) == Path(report["metrics-dir"]) / f"features-{args['dataset']}.json"


def test_nlg_stages_read_what_the_previous_ones_write():
    prompts = _options("nlg_prompts")["out"]
    generate, score = _options("nlg_generate"), _options("nlg_score")
    perplexity, report = _options("nlg_perplexity"), _options("nlg_report")
    assert generate["prompts"] == score["prompts"] == perplexity["prompts"] == report["prompts"] == prompts
    assert score["samples"] == report["samples"] == generate["samples"]
    assert (report["generation"], report["scores"], report["perplexity"]) == (
        generate["metrics"], score["metrics"], perplexity["metrics"])


def test_the_report_stitches_the_sections_the_experiments_write():
    words = dvc_commands()["report"]
    sections = words[words.index("--sections") + 1: words.index("--out")]
    assert sections == [_options("images_report")["out"], _options("scan_report")["out"], _options("nlg_report")["out"]]
