"""Image fine-tuning under `torchrun --nproc_per_node=2` (gloo, CPU) against the same stage in one process.

Every rank draws the same global batches from the same seeded generator and trains on its share; an uneven last
batch (21 images in batches of 8: 8, 8, 5 -> shares of 3 and 2) weights each rank's mean loss back to the global
mean; the augmentation baseline draws its random rotations for the whole global batch on every rank. The tiny
grid trains the top two units on cached orbits with frozen batch norm (the default profile's way). Stated
tolerance, float32 weights after 6 SGD steps: 1e-6 (measured: 3.0e-8 for equitune and for finetune_augment), equal
validation accuracies and best epoch, train losses within 1e-6 relative.

Not compared here: the whole network on images (``trainable_depth: all``, the paper profile) trains EfficientNet's
drop-connect, whose random masks are drawn per rank, so 1 and 2 processes agree only in distribution there
(measured with drop-connect switched off: 1.2e-7).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from equitune.core.errors import ConfigError
from equitune.images.config import ImagesParams
from equitune.images.experiment import check_distributed
from equitune.images.training import load_share
from equitune.pipeline.curves import read_curve
from equitune.pipeline.distributed import DistributedContext
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

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
WEIGHTS_TOLERANCE = 1e-6
LOSS_RELATIVE_TOLERANCE = 1e-6


class RandomLoader:
    """A loader whose output depends on random draws per example (like the augmentation baseline's)."""

    draws_randoms = True

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, index):
        return index.double() + torch.rand(len(index), generator=self.generator, dtype=torch.float64), index


def test_a_loader_that_draws_randoms_gives_each_rank_its_share_of_one_global_draw():
    index = torch.tensor([5, 3, 9, 0, 7])
    x_one, _ = RandomLoader(1)(index)
    shares = []
    for rank in range(2):
        (x, y), weight = load_share(RandomLoader(1), index, DistributedContext(rank, 2, rank, torch.device("cpu"),
                                                                               None))
        shares.append((x, y, weight))
    assert torch.equal(torch.cat([x for x, _, _ in shares]), x_one)
    assert [y.tolist() for _, y, _ in shares] == [[5, 3, 9], [0, 7]]
    assert [w for _, _, w in shares] == [1.2, 0.8]  # 3 * 2 / 5 and 2 * 2 / 5: the global mean after DDP's average


def test_trained_batch_norm_under_torchrun_on_cpu_is_refused_before_any_work():
    params = ImagesParams.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text())["images"])
    unfrozen = params.model_copy(update={"train": params.train.model_copy(update={"freeze_batchnorm": False})})
    cpu_job = DistributedContext(0, 2, 0, torch.device("cpu"), "gloo")
    with pytest.raises(ConfigError, match="freeze_batchnorm=false under torchrun on cpu needs .*SyncBatchNorm"):
        check_distributed(unfrozen, cpu_job)
    check_distributed(params, cpu_job)  # frozen batch norm: nothing to synchronise
    check_distributed(unfrozen, DistributedContext(0, 1, 0, torch.device("cpu"), None))  # one process


def tiny_params(root: Path) -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    images = data["images"]
    images["resolution"] = 32
    images["data"].update(train_size=21, validation_size=8, test_size=8, fashion_mnist_dir=str(DEBIAN_DIR),
                          allow_download=False)
    images["grid"].update(datasets=["fashion_mnist"], backbones=["efficientnet_lite0"],
                          baseline_methods=["finetune_augment"], group_methods=["equitune"], groups=["c4"], seeds=[0])
    images["train"].update(epochs=2, batch_size=8, trainable_depth=2)
    images["evaluation"].update(invariance_batch=4, batch_size=8)
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def tune_args(method: str, group: str, out: str) -> list[str]:
    return ["--params", "params.yaml", "--dataset", "fashion_mnist", "--backbone", "efficientnet_lite0",
            "--method", method, "--group", group, "--seed", "0", "--data", "data/images/fashion_mnist.npz",
            "--cache", "cache.pt", "--out", f"{out}/train", "--metrics", f"{out}/metrics.json",
            "--curve", f"{out}/curve.csv"]


@pytest.mark.longest(seconds=75)
@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_two_processes_tune_the_same_model_as_one(tmp_path):
    tiny_params(tmp_path)
    check_ran(run_script("images/prepare", ["--params", "params.yaml", "--dataset", "fashion_mnist",
                                            "--out", "data/images/fashion_mnist.npz"], tmp_path))
    check_ran(run_script("images/cache", ["--params", "params.yaml", "--dataset", "fashion_mnist", "--backbone",
                                          "efficientnet_lite0", "--data", "data/images/fashion_mnist.npz",
                                          "--out", "cache.pt"], tmp_path))
    for method, group in (("equitune", "c4"), ("finetune_augment", "trivial")):
        outs = {n: f"{method}-p{n}" for n in (1, 2)}
        for processes, out in outs.items():
            check_ran(run_script("images/tune", tune_args(method, group, out), tmp_path, processes))
        one, two = (load_state(tmp_path / out / "train/model.pt") for out in outs.values())
        difference = max_weight_difference(one, two)
        assert difference <= WEIGHTS_TOLERANCE, f"{method}, 1 vs 2 processes: weights differ by {difference:.3g}"
        curves = [read_curve(tmp_path / out / "curve.csv", "images/tune") for out in outs.values()]
        assert list(curves[0]) == list(curves[1]) and len(curves[0]) == 2  # the same epochs, both of them
        for a, b in zip(curves[0].values(), curves[1].values(), strict=True):
            assert a["val_accuracy"] == b["val_accuracy"]
            assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=LOSS_RELATIVE_TOLERANCE)
        metrics = [read_json(tmp_path / out / "metrics.json") for out in outs.values()]
        assert metrics[0]["training"]["best_epoch"] == metrics[1]["training"]["best_epoch"]
        assert metrics[0]["test_accuracy_by_element"] == metrics[1]["test_accuracy_by_element"]
        for n, out in outs.items():  # rank 0 alone wrote
            assert sorted(p.name for p in (tmp_path / out).rglob("*") if p.is_file()) == [
                "curve.csv", "metrics.json", "model.pt"], n
        assert world_sizes_logged(tmp_path / "mlflow.db", "equitune-images", method) == ["1", "2"]
    assert not temp_files(tmp_path)
