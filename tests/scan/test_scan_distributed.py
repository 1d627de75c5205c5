"""SCAN pretraining under `torchrun --nproc_per_node=2` (gloo, CPU) against the same stage in one process.

With the same global batch and seed the two take the same steps: every rank draws the global batches and their
teacher-forcing decisions from the same seeded generator and trains on its half, with each half's token loss
divided by the *global* batch's token count (``batch_mean``) so that DDP's average is the global loss. The model has
no dropout here (dropout masks are drawn per rank: with dropout the runs agree in distribution only). Stated
tolerance, float32 model after 6 Adam steps: weights within 1e-5 (measured: 7.4e-7), curve losses within 1e-6
relative (measured: 5e-8), validation and test accuracies and the selected checkpoint's step equal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from equitune.core.errors import ConfigError
from equitune.pipeline.distributed import DistributedContext
from equitune.scan.training import global_batch_denominator, sequence_loss, shard_loss
from helpers.paths import ROOT
from helpers.torchrun import (
    check_ran,
    load_state,
    max_weight_difference,
    read_json,
    run_script,
    world_sizes_logged,
)
from helpers.toy_project import temp_files

WEIGHTS_TOLERANCE = 1e-5
LOSS_RELATIVE_TOLERANCE = 1e-6


@pytest.mark.parametrize("weighting", ["batch_mean", "token"])
def test_shard_losses_average_to_the_global_batch_loss(weighting):
    """Uneven shards (7 sequences over 3 ranks) of padded targets: DDP's average of the ranks' losses is the loss
    of the global batch, exactly as one process computes it."""
    from equitune.scan.training import EncodedPairs

    generator = torch.Generator().manual_seed(0)
    lengths = [3, 1, 5, 2, 4, 4, 1]
    targets = torch.zeros(7, 5, dtype=torch.long)
    for row, length in enumerate(lengths):
        targets[row, :length] = torch.randint(1, 9, (length,), generator=generator)
    log_probs = torch.randn(7, 5, 9, generator=generator, dtype=torch.float64).log_softmax(-1)
    train = EncodedPairs(torch.ones(7, 1, dtype=torch.long), targets, ())
    index, mean_length = torch.arange(7), 2.75
    denominator = global_batch_denominator(train, index, weighting, mean_length)
    losses = []
    for rank in range(3):
        positions, _ = DistributedContext(rank, 3, rank, torch.device("cpu"), None).local_share(index)
        losses.append(shard_loss(log_probs[positions], targets[positions], denominator, 3))
    expected = sequence_loss(log_probs, targets, weighting, mean_length)
    assert abs(float(sum(losses) / 3) - float(expected)) < 1e-14


def test_a_world_larger_than_the_batch_is_refused_before_any_work():
    context = DistributedContext(0, 4, 0, torch.device("cpu"), "gloo")
    with pytest.raises(ConfigError, match=r"scan.pretrain.batch_size=3 cannot give each of the 4 processes"):
        context.check_batches(3, what="scan.pretrain.batch_size")
    with pytest.raises(ConfigError, match=r"the last batch of an epoch of 10 has 2"):
        context.check_batches(8, 10)
    context.check_batches(4, 12)
    context.check_batches(4)
    DistributedContext(0, 2, 0, torch.device("cpu"), "gloo").check_batches(8, 10)  # 8, 2: one each for 2 ranks


def tiny_params(root: Path) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    scan = data["scan"]
    scan["grid"] = {"splits": ["add_jump"], "rnns": ["lstm"], "seeds": [0],
                    "groups": {"add_jump": ["jump_run"], "around_right": []}}
    # Teacher forcing < 1 (random per sequence, input-feeding decoder), length buckets and the batch-mean loss: the
    # paths whose randoms and weights must be drawn and computed for the global batch.
    scan["model"].update(hidden_size=16, dropout=0.0, attention="input_feeding", source_length=None)
    scan["pretrain"].update(examples=300, batch_size=50, validate_every_examples=150, teacher_forcing=0.5,
                            bucket_batches=4, loss_weighting="batch_mean")
    scan["evaluation"]["max_output_length"] = 49
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def pretrain_args(out: str) -> list[str]:
    return ["--params", "params.yaml", "--split", "add_jump", "--rnn", "lstm", "--seed", "0",
            "--data", "data/scan/add_jump", "--out", f"{out}/model", "--metrics", f"{out}/metrics.json",
            "--curve", f"{out}/curve.csv"]


@pytest.mark.slow
def test_two_processes_pretrain_the_same_model_as_one(tmp_path):
    tiny_params(tmp_path)
    check_ran(run_script("scan/prepare", ["--params", "params.yaml", "--out", "data/scan"], tmp_path))
    for part in ("validation", "test"):  # a few hundred commands exercise the same code as the whole split
        path = tmp_path / f"data/scan/add_jump/{part}.txt"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[::20][:300]))
    for processes in (1, 2):
        check_ran(run_script("scan/pretrain", pretrain_args(f"p{processes}"), tmp_path, processes))

    one, two = (load_state(tmp_path / f"p{n}/model/pretrained.pt") for n in (1, 2))
    difference = max_weight_difference(one, two)
    assert difference <= WEIGHTS_TOLERANCE, f"1 vs 2 processes: weights differ by {difference:.3g}"
    assert max_weight_difference(one, {k: torch.zeros_like(v) for k, v in one.items()}) > 0
    metrics = [read_json(tmp_path / f"p{n}/metrics.json") for n in (1, 2)]
    for key in ("validation_accuracy", "test_accuracy", "best_at_examples"):
        assert metrics[0][key] == metrics[1][key], key
    history = [m["history"] for m in metrics]
    assert [h["examples"] for h in history[0]] == [h["examples"] for h in history[1]] == [150, 300]
    for a, b in zip(*history, strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=LOSS_RELATIVE_TOLERANCE)
        assert a["validation_accuracy"] == b["validation_accuracy"]

    # Rank 0 alone wrote: one checkpoint, metrics and curve per job, one MLflow run per job.
    for n in (1, 2):
        assert sorted(p.name for p in (tmp_path / f"p{n}").rglob("*") if p.is_file()) == [
            "curve.csv", "metrics.json", "pretrained.pt"]
    assert world_sizes_logged(tmp_path / "mlflow.db", "equitune-scan", "pretrain") == ["1", "2"]
    assert not temp_files(tmp_path)


@pytest.mark.slow
def test_a_world_larger_than_the_batch_exits_2_before_any_output(tmp_path):
    params = tiny_params(tmp_path)
    data = yaml.safe_load(params.read_text())
    data["scan"]["pretrain"]["batch_size"] = 1
    params.write_text(yaml.safe_dump(data))
    done = run_script("scan/pretrain", pretrain_args("p2"), tmp_path, processes=2)
    assert done.returncode != 0
    assert "scan.pretrain.batch_size=1 cannot give each of the 2 processes" in done.stderr
    assert not (tmp_path / "p2").exists() and not (tmp_path / "mlflow.db").exists()
