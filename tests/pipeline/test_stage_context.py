"""open_stage: the params, the cell check before any work, the one thread count, rank 0's run."""

from __future__ import annotations

import argparse

import pytest
import torch

from equitune.pipeline.context import StageContext, open_stage
from equitune.pipeline.distributed import DistributedContext, NullRun
from equitune.pipeline.schema import ParamsError, load_section
from equitune.scan.cells import ScanCell
from equitune.scan.config import ScanParams
from helpers.paths import ROOT

ARGS = argparse.Namespace(params=str(ROOT / "params.yaml"))


def test_a_cell_outside_the_grid_is_refused_before_the_body_runs():
    with pytest.raises(ParamsError, match="split='nowhere' is not in the params grid"):
        with open_stage(ARGS, "scan", ScanParams, cell=ScanCell("nowhere", "lstm", 0)):
            pytest.fail("the body ran")


def test_the_extra_check_runs_after_the_cell_and_before_the_body():
    seen = []
    with open_stage(ARGS, "scan", ScanParams, check=seen.append) as stage:
        assert seen == [stage.params]


def test_scan_stages_seed_with_scan_threads_and_others_with_base_threads():
    before = torch.get_num_threads()
    try:
        with open_stage(ARGS, "scan", ScanParams) as stage:
            stage.seed(0)
            assert torch.get_num_threads() == stage.params.threads == 1
        with open_stage(ARGS, None, None, task="report") as stage:
            stage.seed(0)
            assert torch.get_num_threads() == stage.base.threads
    finally:
        torch.set_num_threads(before)


def test_a_one_process_distributed_stage_is_main_and_a_stage_without_a_section_names_its_task():
    with open_stage(ARGS, "scan", ScanParams, distributed_run=True) as stage:
        assert stage.is_main and stage.distribution.world_size == 1 and stage.device == stage.distribution.device
        assert stage.curve(ROOT / "unused.csv", "step", ("a",)) is not None
    with pytest.raises(TypeError, match="task="):
        with open_stage(ARGS, None, None):
            pass


def test_ranks_other_than_0_get_a_run_that_logs_nothing():
    loaded = load_section(ARGS.params, "scan", ScanParams)
    rank1 = StageContext(ARGS, "scan", loaded, distribution=DistributedContext(1, 2, 1, torch.device("cpu"), "gloo"))
    assert not rank1.is_main and rank1.curve(ROOT / "unused.csv", "step", ("a",)) is None
    with rank1.run({"seed": 0}) as run:
        assert isinstance(run, NullRun)
