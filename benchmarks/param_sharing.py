"""Benchmark 3: equituning versus parameter sharing (the paper's cost claim), time per epoch and accuracy.

The paper says equituning is computationally as efficient as parameter sharing, from timing a small equituned
CNN (about 13.6k parameters) against a weight-shared C4 group CNN (about 13.0k). Here: ``EquiTune(SmallCNN, C4)``
(13,578 parameters) against ``C4GroupCNN`` (13,194 parameters, lifting + group convolution with rotated filters,
see models.py), both trained from scratch with the same optimizer on the same Fashion-MNIST images in the same
order. Epochs alternate between the two models (A, B, A, B, ...) so machine load hits both alike; time per
epoch is the median over epochs, after a warm-up of a few batches (gradients discarded). Accuracy is measured
on the held-out test images upright and rotated by a random multiple of 90 degrees (fixed seed): both models
are exactly C4-invariant, so the two accuracies must agree (checked).

Ratio = equitune time per epoch / group CNN time per epoch.

    python benchmarks/param_sharing.py          # 4,000 training images, 4 epochs
    python benchmarks/param_sharing.py --quick  # smoke test
"""

from __future__ import annotations

import gzip
import statistics
import sys
import time
from pathlib import Path

import bench_models as models
import numpy as np
import timing
import torch
from torch.nn import functional as F

from equitune.core.groups import image_action
from equitune.core.wrappers import EquiTune

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as a numpy array: magic (2 zero bytes, dtype 0x08, ndim), sizes, then the data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SystemExit(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of a split (a seeded random subset), as normalised ``[N, 1, 28, 28]`` floats and labels."""
    prefix = "train" if split == "train" else "t10k"
    images_path, labels_path = FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz", FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise SystemExit(f"Fashion-MNIST not found at {FASHION_MNIST}: install the Debian package dataset-fashion-mnist "
                         "(apt-get install dataset-fashion-mnist)")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if count > len(images):
        raise SystemExit(f"asked for {count} {split} images; the split has {len(images)}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count].numpy()
    x = torch.from_numpy(images[pick].astype(np.float32) / 255.0).unsqueeze(1)
    return (x - 0.2860) / 0.3530, torch.from_numpy(labels[pick].astype(np.int64))


def rotate_randomly(x: torch.Tensor, seed: int) -> torch.Tensor:
    turns = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(seed))
    return torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(x, turns, strict=True)])


class Trainer:
    """One model, its optimizer and its data order; ``epoch()`` trains one pass and returns its seconds."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int, lr: float):
        self.model, self.x, self.y, self.batch = model, x, y, batch
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.order = torch.Generator().manual_seed(seed)
        self.epoch_seconds: list[float] = []

    def warm_up(self, batches: int = 3) -> None:
        for i in range(batches):
            xb, yb = self.x[i * self.batch:(i + 1) * self.batch], self.y[i * self.batch:(i + 1) * self.batch]
            F.cross_entropy(self.model(xb), yb).backward()
        self.optimizer.zero_grad(set_to_none=True)  # warm-up gradients are thrown away

    def epoch(self) -> float:
        self.model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(self.x), generator=self.order)
        for i in range(0, len(perm), self.batch):
            idx = perm[i:i + self.batch]
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(self.x[idx]), self.y[idx]).backward()
            self.optimizer.step()
        seconds = time.perf_counter() - start
        self.epoch_seconds.append(seconds)
        return seconds

    def profile_step(self) -> list[tuple[str, float]]:
        """Top operators of one forward+backward on one batch (torch.profiler), to say where an epoch goes."""
        self.model.train()
        xb, yb = self.x[: self.batch], self.y[: self.batch]

        def step():
            F.cross_entropy(self.model(xb), yb).backward()

        top = timing.top_operators(timing.self_cpu_ms(step, calls=3))
        self.optimizer.zero_grad(set_to_none=True)
        return top

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.eval()
        correct = sum(int((self.model(x[i:i + 500]).argmax(-1) == y[i:i + 500]).sum()) for i in range(0, len(x), 500))
        return correct / len(x)


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate, the same for both models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timing.setup_threads(args)
    train_n = args.train_images or (256 if args.quick else 4000)
    test_n = args.test_images or (256 if args.quick else 2000)
    epochs = args.epochs or args.repeats or (1 if args.quick else 4)

    x_train, y_train = load_fashion_mnist("train", train_n, args.seed)
    x_test, y_test = load_fashion_mnist("test", test_n, args.seed + 1)
    x_rotated = rotate_randomly(x_test, args.seed + 2)

    torch.manual_seed(args.seed)
    equituned = EquiTune(models.SmallCNN(), image_action("c4"))
    torch.manual_seed(args.seed)
    group_cnn = models.C4GroupCNN()
    contenders = {
        "equitune_c4_small_cnn": Trainer(equituned, x_train, y_train, args.batch, args.seed, args.lr),
        "c4_group_cnn": Trainer(group_cnn, x_train, y_train, args.batch, args.seed, args.lr),
    }
    for trainer in contenders.values():
        trainer.warm_up()
    for epoch in range(epochs):
        # Alternate which model goes first each epoch.
        names = list(contenders) if epoch % 2 == 0 else list(reversed(contenders))
        for name in names:
            seconds = contenders[name].epoch()
            print(f"epoch {epoch + 1}/{epochs} {name:24s} {seconds:7.2f} s", flush=True)

    rows = []
    for name, trainer in contenders.items():
        upright, rotated = trainer.accuracy(x_test, y_test), trainer.accuracy(x_rotated, y_test)
        if abs(upright - rotated) > 1.5 / test_n:  # invariant models: at most a float tie may flip
            raise SystemExit(f"{name}: upright accuracy {upright} != rotated {rotated}; the model is not C4-invariant")
        rows.append({
            "row_id": name, "model": name, "parameters": models.parameter_count(trainer.model),
            "train_images": train_n, "test_images": test_n, "epochs": epochs, "batch": args.batch, "lr": args.lr,
            "epoch_s_median": round(statistics.median(trainer.epoch_seconds), 3),
            "epoch_s_all": [round(s, 3) for s in trainer.epoch_seconds],
            "test_accuracy_upright": round(upright, 4), "test_accuracy_rotated": round(rotated, 4),
        })
        if not args.quick:
            rows[-1]["profile_step_top_ms"] = trainer.profile_step()
        print(f"{name:24s} params {rows[-1]['parameters']:6d}  epoch {rows[-1]['epoch_s_median']:7.2f} s (median)  "
              f"accuracy upright {upright:.4f} rotated {rotated:.4f}", flush=True)
    ratio = rows[0]["epoch_s_median"] / rows[1]["epoch_s_median"]
    for row in rows:
        row["ratio_equitune_over_group_cnn"] = round(ratio, 4)
    path = timing.record("param_sharing", args, rows)
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("equitune/group-CNN time per epoch", ratio, "about 1 (paper: 'as efficient')"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
