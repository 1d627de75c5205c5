"""Devices per process and data-parallel training (equitune.pipeline.stage.select_device, .distributed).

The device logic is checked on CPU with fake device counts and environments; the training under
`torchrun --standalone --nproc_per_node=2` (gloo) against the same run in one process. Stated tolerance: the
float64 weights of the 1- and the 2-process runs agree within 1e-12 (they differ only by the order in which
the all-reduce sums two half-batch gradients), and the trained model stays invariant within the checker's float64
tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equitune.core.errors import ConfigError
from equitune.pipeline.distributed import distributed, torchrun_ranks
from equitune.pipeline.schema import BaseParams
from equitune.pipeline.stage import resolve_device, select_device
from helpers.toy_project import ASSETS, clean_env, copy_empty_store, mlflow_runs, temp_files

WEIGHTS_TOLERANCE = 1e-12
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}


# ----- which device a process uses -----

@pytest.mark.parametrize(("requested", "environ", "count", "expected"), [
    ("cpu", {}, 4, "cpu"),
    ("cpu", {"LOCAL_RANK": "3"}, 0, "cpu"),              # a CPU job under torchrun: every rank on the CPU
    ("auto", {}, 0, "cpu"),
    ("auto", {}, 2, "cuda:0"),
    ("cuda", {}, 1, "cuda:0"),
    ("cuda", {"LOCAL_RANK": "1"}, 2, "cuda:1"),           # torchrun's second process on a 2-GPU machine
    ("auto", {"LOCAL_RANK": "3"}, 4, "cuda:3"),
    # A queue worker started with CUDA_VISIBLE_DEVICES=2 sees one device, which CUDA numbers 0.
    ("cuda", {"CUDA_VISIBLE_DEVICES": "2"}, 1, "cuda:0"),
    ("cuda", {"CUDA_VISIBLE_DEVICES": "2,3", "LOCAL_RANK": "1"}, 2, "cuda:1"),
])
def test_device_per_process(requested, environ, count, expected):
    assert select_device(requested, environ, count) == expected


@pytest.mark.parametrize(("requested", "environ", "count", "words"), [
    ("cuda", {"LOCAL_RANK": "2"}, 2, ["LOCAL_RANK=2", "only 2 are visible", "unset", "--nproc_per_node=2"]),
    ("auto", {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "5"}, 1,
     ["LOCAL_RANK=1", "only 1 is visible", "'5'", "--nproc_per_node=1"]),
    ("cuda", {"CUDA_VISIBLE_DEVICES": ""}, 0, ["no CUDA device is visible", "CUDA_VISIBLE_DEVICES is ''", "'cpu'"]),
    ("cuda", {}, 0, ["no CUDA device is visible", "unset"]),
    ("cuda", {"LOCAL_RANK": "one"}, 2, ["LOCAL_RANK='one'", "torchrun"]),
])
def test_a_rank_without_a_device_is_a_clear_error(requested, environ, count, words):
    with pytest.raises(ConfigError) as error:
        select_device(requested, environ, count)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_resolve_device_counts_what_cuda_makes_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(BaseParams(device="cuda"), {"LOCAL_RANK": "1"}) == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="LOCAL_RANK=2"):
        resolve_device(BaseParams(device="cuda"), {"LOCAL_RANK": "2"})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device(BaseParams(device="auto"), {}) == torch.device("cpu")


# ----- torchrun's environment -----

def test_torchrun_environment():
    assert torchrun_ranks({}) is None
    assert torchrun_ranks({"LOCAL_RANK": "0"}) is None  # LOCAL_RANK alone: a device choice, not a job
    assert torchrun_ranks(TORCHRUN) == (1, 2, 1)
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set"):
        torchrun_ranks({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="RANK=2, WORLD_SIZE=2"):
        torchrun_ranks({**TORCHRUN, "RANK": "2"})


def test_a_rank_without_a_device_fails_before_the_process_group_forms(monkeypatch):
    """Nothing listens on MASTER_PORT: reaching init_process_group would hang, so the error must come first."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="LOCAL_RANK=1 needs CUDA device 1"):
        with distributed(BaseParams(device="cuda"), TORCHRUN):
            pass


def test_one_process_context_without_torchrun():
    with distributed(BaseParams(device="cpu"), {}) as context:
        assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
        assert context.shard([1, 2, 3]) == [1, 2, 3] and context.gather([4]) == [4]
        assert context.mean(torch.tensor(2.5)) == 2.5


def test_ranks_draw_their_own_dropout_masks_but_rank_0_keeps_the_seed():
    from equitune.pipeline.distributed import DistributedContext
    draws = []
    for rank in (0, 1, 2):
        torch.manual_seed(5)
        DistributedContext(rank, 3, rank, torch.device("cpu"), "gloo").reseed_stochastic_layers(5)
        draws.append(torch.rand(4))
    torch.manual_seed(5)
    assert torch.equal(draws[0], torch.rand(4))  # rank 0: what one process draws
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    torch.manual_seed(5)
    DistributedContext(0, 1, 0, torch.device("cpu"), None).reseed_stochastic_layers(5)
    assert torch.equal(draws[0], torch.rand(4))


# ----- shares of the work -----

def test_local_shares_weight_an_uneven_batch_back_to_its_global_mean():
    from equitune.pipeline.distributed import DistributedContext
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    batch = torch.arange(7)
    contexts = [DistributedContext(r, 3, r, torch.device("cpu"), None) for r in range(3)]
    shares = [context.local_share(batch) for context in contexts]
    assert [share.tolist() for share, _ in shares] == [[0, 1, 2], [3, 4], [5, 6]]
    # DDP averages the ranks' (weighted) mean losses: that must be the mean over the global batch.
    ddp_mean = sum(float(losses[share].mean()) * weight for share, weight in shares) / 3
    assert abs(ddp_mean - float(losses.mean())) < 1e-12
    with pytest.raises(ConfigError, match="cannot give each of 3 processes one"):
        contexts[0].local_share(torch.arange(2))


def test_shard_and_gather_keep_the_order():
    from equitune.pipeline.distributed import DistributedContext
    items = list(range(7))
    shards = [DistributedContext(r, 3, r, torch.device("cpu"), None).shard(items) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]


# ----- training under torchrun -----

def run_toy(root: Path, out: str, processes: int) -> subprocess.CompletedProcess:
    script = str(ASSETS / "ddp_toy.py")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    return subprocess.run([*launcher, script, "--out", f"{out}.pt", "--metrics", f"{out}.json"], cwd=root,
                          env=clean_env(DVC_ROOT=str(root), OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path):
    from equitune.core import assert_equivariant, assert_not_equivariant, image_action
    sys.path.insert(0, str(ASSETS))
    try:
        import ddp_toy
    finally:
        sys.path.remove(str(ASSETS))
    (tmp_path / "params.yaml").write_text("profile: default\nbase:\n  threads: 1\n  device: cpu\n")
    copy_empty_store(tmp_path / "mlflow.db")

    results = {}
    for processes in (1, 2):
        done = run_toy(tmp_path, f"w{processes}", processes)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results[processes] = (torch.load(tmp_path / f"w{processes}.pt"),
                              json.loads((tmp_path / f"w{processes}.json").read_text()))

    (one, one_metrics), (two, two_metrics) = results[1], results[2]
    initial = ddp_toy.toy_model().state_dict()
    assert max((one[k] - initial[k]).abs().max().item() for k in one) > 1e-2, "training did not move the weights"
    difference = max((one[k] - two[k]).abs().max().item() for k in one)
    assert difference <= WEIGHTS_TOLERANCE, f"1 vs 2 processes: weights differ by {difference:.3g}"
    assert (one_metrics["steps"], two_metrics["steps"]) == (12, 12)
    assert one_metrics["predictions"] == two_metrics["predictions"]  # gathered in the original order
    assert two_metrics["world_size"] == 2

    model = ddp_toy.toy_model()
    model.load_state_dict(two)
    images, _ = ddp_toy.toy_data()
    c4 = image_action("c4")
    assert_equivariant(model.eval(), c4, images[:8])
    assert_not_equivariant(model.backbone.eval(), c4, images[:8])

    # Rank 0 alone logged: one MLflow run per job, with the job's per-step global loss.
    runs = mlflow_runs(tmp_path / "mlflow.db")
    assert sorted(r.data.tags["world_size"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert not temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".json")) == [
        "w1.json", "w1.pt", "w2.json", "w2.pt"]
