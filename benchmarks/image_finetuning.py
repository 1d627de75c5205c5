"""Benchmark 8: fine-tuning EfficientNet-Lite0 on cached features vs fine-tuning the whole network (images/s).

Today's scheme (``trainable_depth: all``) runs every training image through the whole network, forward and
backward, every epoch, for every method and seed. The cached scheme (``trainable_depth: n``) runs the frozen lower
units once per image and D4 element (the cache stage, shared by every cell of the grid) and trains only the top n
units and the head on the cached outputs. Both contenders do one SGD step of the same method on a batch of B
training images (uint8 in, loss, backward, step), alternately; the cached one reads its inputs from a real cache
of those images. Rows: finetune and equitune (C4, D4), then the cache's own cost per image (forward of the frozen
part on the 8 elements of D4).

The last line is the ratio of training images/s, cached / whole network, for finetune (target >= 3: "several
times faster"). The cache row says what the cached scheme pays once per image, for all cells of the grid.

    python benchmarks/image_finetuning.py --threads 1          # default sizes (about two minutes on 2 idle cores)
    python benchmarks/image_finetuning.py --quick              # smoke test
"""

from __future__ import annotations

import sys
import time

import numpy as np
import timing
import torch
from torch.nn import functional as F

from equitune.images.backbones import ImageClassifier, build_classifier, split_features
from equitune.images.cached import orbit_features
from equitune.images.data import to_model_input
from equitune.images.methods import build_method
from equitune.images.training import set_training_mode

TARGET = 3.0
SIZES = {"resolution": 64, "batch": 32, "depth": 2, "repeats": 5, "cache_images": 64}
QUICK = {"resolution": 32, "batch": 2, "depth": 2, "repeats": 1, "cache_images": 2}


def sgd_step(model: torch.nn.Module, batch, labels: torch.Tensor):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        set_training_mode(model, freeze_batchnorm=True)
        loss = F.cross_entropy(model(batch()), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["finetune", "equitune/c4", "equitune/d4"])
    parser.add_argument("--depth", type=int, default=None, help="trainable depth of the cached scheme")
    args = parser.parse_args()
    timing.setup_threads(args)
    sizes = dict(QUICK if args.quick else SIZES)
    if args.depth is not None:
        sizes["depth"] = args.depth
    repeats = args.repeats or sizes["repeats"]
    resolution, batch, depth = sizes["resolution"], sizes["batch"], sizes["depth"]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, 1, 28, 28), dtype=np.uint8)
    labels = torch.as_tensor(rng.integers(0, 10, size=batch))

    classifier = build_classifier("efficientnet_lite0", 10, resolution, pretrained=True)
    frozen, trainable = split_features(classifier, depth)
    frozen.to(memory_format=torch.channels_last)
    orbits = orbit_features(frozen, images, resolution)  # the training batch's cache, as the cache stage builds it
    upper = ImageClassifier(trainable, classifier.head)

    rows, finetune_ratio = [], None
    for spec in args.methods:
        method, _, group = spec.partition("/")
        group = group or "trivial"
        whole = build_method(method, group, classifier)
        cached = build_method(method, group, upper, on_orbits=True)
        full_step = sgd_step(whole, lambda: to_model_input(images, resolution), labels)
        cached_step = sgd_step(cached, lambda: orbits, labels)
        result = timing.compare(cached_step, full_step, repeats=repeats, warmup=1)
        ratio = result.b_seconds / result.a_seconds  # images/s cached over images/s whole network
        row = {"row_id": f"cpu/efficientnet_lite0/{resolution}px/{spec}/depth{depth}", "method": method, "group": group,
               "resolution": resolution, "batch": batch, "trainable_depth": depth, "repeats": repeats,
               "cached_images_per_s": round(batch / result.a_seconds, 1),
               "whole_images_per_s": round(batch / result.b_seconds, 1), "ratio": round(ratio, 3),
               "target": f">= {TARGET}", "met": ratio >= TARGET}
        print(f"{spec:14s} B={batch} depth={depth}: cached {row['cached_images_per_s']:8.1f} img/s   whole network "
              f"{row['whole_images_per_s']:7.1f} img/s   ratio {ratio:6.2f}", flush=True)
        rows.append(row)
        if spec == "finetune":
            finetune_ratio = ratio

    # The cache's own cost: the frozen part on every image moved by the 8 elements of D4, once for the whole grid.
    cache_images = images[:sizes["cache_images"]] if len(images) >= sizes["cache_images"] else np.concatenate(
        [images] * (sizes["cache_images"] // len(images) + 1))[:sizes["cache_images"]]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        orbit_features(frozen, cache_images, resolution)
        times.append(time.perf_counter() - start)
    cache_rate = len(cache_images) / float(np.median(times))
    rows.append({"row_id": f"cpu/efficientnet_lite0/{resolution}px/cache/depth{depth}", "method": "cache",
                 "resolution": resolution, "trainable_depth": depth, "images": len(cache_images),
                 "cache_images_per_s": round(cache_rate, 1), "elements_per_image": 8})
    print(f"cache          {len(cache_images)} images x 8 D4 elements through the frozen part: {cache_rate:8.1f} img/s",
          flush=True)
    path = timing.record("image_finetuning", args, rows)
    if path:
        print(f"rows written to {path}")
    if finetune_ratio is None:
        print("RATIO cached/whole-network images/s (finetune): not measured (finetune not in --methods)")
        return 0
    print(timing.fmt_ratio_line("cached/whole-network training images/s, finetune", finetune_ratio, f">= {TARGET}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
