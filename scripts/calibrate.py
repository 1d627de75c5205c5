"""The calibration behind params.yaml's design choices, rerun on validation data only (issue 27, item 2).

    python scripts/calibrate.py images|scan|all [--params params.yaml] [--out docs/calibration.json]
                                                [--markdown docs/calibration.md]

Each study reruns the alternatives of some choices in the default profile's recipe, one at a time from the
committed values, seed 0, and reports validation accuracy (and the measured seconds of the study):

- ``images``: the finetune baseline's best upright validation accuracy (the 1,000 validation images carved from the
  training split, as the pipeline's model selection reads them) for train size x epochs, resolution, trainable
  depth, frozen batch norm and the learning rates. The real Fashion-MNIST training files and the real pretrained
  EfficientNet-Lite0; a finetune cell reads only the identity slot of the cached orbits, so only ``frozen(x)`` is
  computed here (not the D4 orbit).
- ``scan``: equitune tuning from the committed pretrained checkpoints (``models/scan/<split>-lstm-0``): the
  learning-rate schedule on Add-Jump (jump<->run) and the learning rate on Around-Right, validation accuracy at the
  curve steps; and the tuning-step counts from the committed tune cells' validation curves (every seed).

The test split is never read: the image study reads only Fashion-MNIST's training files and carves its subsets
from a data dict without test images; the SCAN study reads only ``train.txt`` and ``validation.txt`` and scores
only the validation part. tests/scripts/test_calibration.py checks both with poisoned test data.

Writes the measurements as JSON (``--out``) and renders them as Markdown (``--markdown``, the docs page); a study
that is not run keeps its earlier entry in the JSON. Runs on one torch thread; run it niced on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
SEED = 0
BACKBONE = "efficientnet_lite0"


# ------------------------------------------------------------------------------------------------ shared
def _clock() -> Callable[[], float]:
    start = time.process_time()
    return lambda: round(time.process_time() - start, 1)


def _seed(seed: int, threads: int = 1) -> torch.Generator:
    from equitune.pipeline.seeding import seed_everything

    return seed_everything(seed, threads, deterministic=True)


# ------------------------------------------------------------------------------------------------ images
def fashion_mnist_train_part(params) -> dict[str, np.ndarray]:
    """Fashion-MNIST's training split only (images ``[60000, 1, 28, 28]``, labels), sha256-verified like the
    pipeline's; the test files are never opened."""
    from equitune.core.errors import DataError
    from equitune.images.data import FASHION_MNIST_FILES, verified_idx

    folder = Path(params.data.fashion_mnist_dir)
    missing = [name for name in TRAIN_FILES if not (folder / name).exists()]
    if missing:
        raise DataError(f"{folder}: {missing} not found (apt-get install dataset-fashion-mnist, scripts/setup.sh)")
    images, labels = (verified_idx(folder / name, FASHION_MNIST_FILES[name]) for name in TRAIN_FILES)
    return {"train_x": images[:, None], "train_y": labels.astype(np.int64)}


def train_and_validation(train_part: dict[str, np.ndarray], train_size: int, validation_size: int,
                         subset_seed: int) -> dict[str, np.ndarray]:
    """The pipeline's train and validation subsets (``split_subsets``: the same seeded permutation), from a dict
    whose test part is empty; the result has no test keys."""
    from equitune.images.data import split_subsets

    no_test = {"test_x": train_part["train_x"][:0], "test_y": train_part["train_y"][:0]}
    subsets = split_subsets({**train_part, **no_test}, train_size, validation_size, 0, subset_seed)
    return {key: value for key, value in subsets.items() if not key.startswith("test")}


def identity_features(frozen: torch.nn.Module, images: np.ndarray, resolution: int, chunk: int = 32) -> torch.Tensor:
    """``[N, 1, C, h, w]``: the frozen part's output on the upright images, the identity slot of the cached orbits
    (:func:`equitune.images.cached.orbit_features`), all a finetune cell reads."""
    from equitune.images.data import to_model_input
    from equitune.pipeline.modes import eval_mode

    frozen.to(memory_format=torch.channels_last)
    outputs = []
    with eval_mode(frozen), torch.inference_mode():
        for start in range(0, len(images), chunk):
            x = to_model_input(images[start:start + chunk], resolution)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            outputs.append(frozen(x.contiguous(memory_format=torch.channels_last)))
    return torch.cat(outputs)[:, None].clone()


def finetune_validation(params, data: dict[str, np.ndarray], classes: int, seed: int = SEED,
                        backbone: str = BACKBONE, features: dict | None = None) -> dict:
    """The finetune baseline of ``params`` (an ImagesParams) trained on ``data`` (train and validation parts only) as the
    pipeline trains it: per-epoch upright validation accuracy and the best (the epoch model selection keeps).
    ``features``: a dict where the frozen part's features are kept between calls with the same inputs."""
    from equitune.images.backbones import ImageClassifier, build_classifier, split_features
    from equitune.images.methods import build_method, new_parameters
    from equitune.images.training import (
        OrbitBatches,
        ShuffledBatches,
        accuracy,
        fit,
        make_optimizer,
        make_scheduler,
        predict,
    )

    settings = params.train
    depth, resolution = settings.trainable_depth, params.resolution
    features = {} if features is None else features
    key = (resolution, depth, len(data["train_y"]))
    if key not in features:
        frozen, _ = split_features(build_classifier(backbone, classes, resolution, settings.pretrained), depth)
        features[key] = {part: identity_features(frozen, data[f"{part}_x"], resolution) for part in ("train", "validation")}
    inputs = features[key]
    generator = _seed(seed)  # as the tune stage: seeded before the classifier (its new head) is built
    classifier = build_classifier(backbone, classes, resolution, settings.pretrained)
    _, trainable = split_features(classifier, depth)
    upper = ImageClassifier(trainable, classifier.head)
    model = build_method("finetune", "trivial", upper, on_orbits=True)
    batches = ShuffledBatches(len(data["train_y"]), settings.batch_size, generator)
    optimizer = make_optimizer(model, settings, new_parameters(model, upper))
    scheduler = make_scheduler(optimizer, settings, settings.epochs * len(batches))

    def validate(m: torch.nn.Module) -> float:
        return accuracy(predict(m, inputs["validation"], params.evaluation.batch_size), data["validation_y"])

    result = fit(model, optimizer, batches, OrbitBatches(inputs["train"], data["train_y"], torch.device("cpu")),
                 epochs=settings.epochs, validate=validate, freeze_batchnorm=settings.freeze_batchnorm,
                 scheduler=scheduler)
    curve = [round(r.val_accuracy, 4) for r in result.history]
    return {"validation_accuracy": curve[result.best_epoch - 1], "per_epoch": curve, "best_epoch": result.best_epoch}


def image_variants(depth2_train_size: int) -> list[tuple[str, str, dict]]:
    """(choice, label, overrides of the images section) of every cell the image study runs; ``{}``: the default."""
    return [
        ("train_size x epochs", "10k x 2 (default)", {}),
        ("train_size x epochs", "20k x 1", {"data.train_size": 20000, "train.epochs": 1}),
        ("train_size x epochs", "10k x 3", {"train.epochs": 3}),
        ("resolution", "32", {"resolution": 32}),
        ("resolution", "48 (default)", {}),
        ("resolution", "64", {"resolution": 64}),
        ("trainable_depth", f"1 (default), {depth2_train_size // 1000}k x 2", {"data.train_size": depth2_train_size}),
        ("trainable_depth", f"2, {depth2_train_size // 1000}k x 2",
         {"data.train_size": depth2_train_size, "train.trainable_depth": 2}),
        ("freeze_batchnorm", "true (default)", {}),
        ("freeze_batchnorm", "false", {"train.freeze_batchnorm": False}),
        ("lr / head_lr", "0.02 / 0.01 (default)", {}),
        ("lr / head_lr", "0.01 / 0.01", {"train.lr": 0.01}),
        ("lr / head_lr", "0.01 / 0.003", {"train.lr": 0.01, "train.head_lr": 0.003}),
        ("lr / head_lr", "0.02 / 0.1", {"train.head_lr": 0.1}),
    ]


def with_overrides(section: dict, overrides: dict) -> dict:
    """A copy of a params section with dotted keys (``train.lr``) replaced."""
    section = copy.deepcopy(section)
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = section
        for part in path:
            node = node[part]
        node[last] = value
    return section


def images_study(section: dict, train_part: dict[str, np.ndarray], classes: int, depth2_train_size: int = 10000,
                 backbone: str = BACKBONE, variants: Iterable[tuple[str, str, dict]] | None = None) -> dict:
    """Every image variant's validation result; the default cell runs once and is shared by its rows."""
    from equitune.images.config import ImagesParams

    clock = _clock()
    features: dict = {}
    done: dict[str, dict] = {}
    rows = []
    for choice, label, overrides in (image_variants(depth2_train_size) if variants is None else variants):
        params = ImagesParams.model_validate(with_overrides(section, overrides))
        name = json.dumps(overrides, sort_keys=True)
        if name not in done:
            data = train_and_validation(train_part, params.data.train_size, params.data.validation_size,
                                        params.data.subset_seed)
            cell_clock = _clock()
            done[name] = {**finetune_validation(params, data, classes, backbone=backbone, features=features),
                          "train_size": len(data["train_y"]), "validation_size": len(data["validation_y"])}
            done[name]["cpu_seconds"] = cell_clock()
            print(f"images {choice} {label}: {done[name]}", flush=True)
        rows.append({"choice": choice, "variant": label, "overrides": overrides, **done[name]})
    return {"measure": "finetune, best upright validation accuracy (seed 0)", "rows": rows, "cpu_seconds": clock()}


def run_images(params_path: Path, depth2_train_size: int) -> dict:
    from equitune.images.config import ImagesParams
    from equitune.images.data import FASHION_MNIST_CLASSES

    section = yaml.safe_load(params_path.read_text())["images"]
    train_part = fashion_mnist_train_part(ImagesParams.model_validate(section))
    return images_study(section, train_part, len(FASHION_MNIST_CLASSES), depth2_train_size)


# ------------------------------------------------------------------------------------------------ scan
def read_train_and_validation(folder: str | Path) -> dict:
    """The split folder's ``train.txt`` and ``validation.txt`` (never ``test.txt``), encoded."""
    from equitune.scan.data import read_pairs
    from equitune.scan.training import encode_pairs

    return {part: encode_pairs(read_pairs(Path(folder) / f"{part}.txt")) for part in ("train", "validation")}


def tune_validation_curve(params, split: str, group: str, pretrained: torch.nn.Module, data: dict, *, lr: float,
                          schedule: str, checkpoints: list[int], seed: int = SEED) -> dict[int, float]:
    """Equitune ``pretrained`` with ``group`` as the tune stage does (the split's steps, ``lr``, ``schedule``),
    seeded as the stage seeds its first method; its validation accuracy at each of ``checkpoints``."""
    from equitune.scan.combination import equitune_wrapper
    from equitune.scan.config import bind_scan_group
    from equitune.scan.evaluation import accuracy
    from equitune.scan.training import tune

    perms = bind_scan_group(params.groups[group])
    input_perm, output_perm = perms
    settings = params.tune.model_copy(update={"lr_schedule": schedule})
    generator = _seed(seed, params.threads)
    model = copy.deepcopy(pretrained)
    wrapper = equitune_wrapper(settings.combination)(model, (input_perm.on_ids, output_perm.on_ids),
                                                     output_action=output_perm.on_scores)
    curve: dict[int, float] = {}

    def on_checkpoint(step: int) -> None:
        curve[step] = round(accuracy(model, data["validation"], params, "equitune", perms), 4)

    tune(wrapper, data["train"], settings, lr=lr, steps=settings.steps[split], checkpoints=checkpoints,
         generator=generator, on_checkpoint=on_checkpoint, device=torch.device("cpu"), desc=f"{split} {lr} {schedule}")
    return curve


def committed_step_curves(metrics_dir: Path) -> list[dict]:
    """Per tune cell family (split, group, method): the committed validation curves of every seed, min and max."""
    families: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for path in sorted(metrics_dir.glob("*.json")):
        split, group, _cell, _seed = _tune_cell_name(path.stem)
        for method, curve in json.loads(path.read_text()).get("validation_curve", {}).items():
            for key, value in curve.items():
                step = int(key.split("_")[1])
                families.setdefault((split, group, method), {}).setdefault(step, []).append(value)
    return [{"split": split, "group": group, "method": method, "seeds": len(next(iter(steps.values()))),
             "steps": {str(s): [round(min(v), 4), round(max(v), 4)] for s, v in sorted(steps.items())}}
            for (split, group, method), steps in sorted(families.items())]


def _tune_cell_name(stem: str) -> tuple[str, str, str, str]:
    """``add_jump-jump_run-lstm-0`` -> (split, group, cell, seed) (names hold no dashes of their own)."""
    split, group, cell, seed = stem.split("-")
    return split, group, cell, seed


def scan_runs(params, split_dirs: dict[str, Path], model_dirs: dict[str, Path],
              runs: Iterable[tuple[str, str, str, float, str, list[int]]]) -> list[dict]:
    """Each (choice, split, group, lr, schedule, checkpoints) run from the split's pretrained seed-0 checkpoint."""
    from equitune.scan.cells import ScanCell
    from equitune.scan.experiment import load_pretrained

    rows = []
    for choice, split, group, lr, schedule, checkpoints in runs:
        clock = _clock()
        data = read_train_and_validation(split_dirs[split])
        _seed(SEED, params.threads)
        pretrained = load_pretrained(params, ScanCell(split, "lstm", SEED), model_dirs[split], torch.device("cpu"))
        curve = tune_validation_curve(params, split, group, pretrained, data, lr=lr, schedule=schedule,
                                      checkpoints=checkpoints)
        rows.append({"choice": choice, "split": split, "group": group, "lr": lr, "lr_schedule": schedule,
                     "validation_curve": {str(s): v for s, v in sorted(curve.items())}, "cpu_seconds": clock()})
        print(f"scan {rows[-1]}", flush=True)
    return rows


def scan_plan(params) -> list[tuple[str, str, str, float, str, list[int]]]:
    """The schedule on Add-Jump (jump<->run) and the learning rate on Around-Right, from the committed values."""
    tune = params.tune
    add_jump, around = tune.steps["add_jump"], tune.steps["around_right"]
    jump_checks = sorted({0, 100, 200, 250, 300, 350, add_jump} | {s for s in tune.curve_steps if s <= add_jump})
    around_checks = sorted({s for s in tune.curve_steps if s <= around} | {around})
    return [
        *(("lr_schedule", "add_jump", "jump_run", tune.lr["add_jump"], schedule, jump_checks)
          for schedule in ("linear", "constant")),
        *(("lr", "around_right", "left_right", lr, tune.lr_schedule, around_checks) for lr in (3e-4, 1e-3, 2e-3)),
    ]


def run_scan(params_path: Path) -> dict:
    from equitune.pipeline.schema import load_section
    from equitune.scan.config import ScanParams

    clock = _clock()
    params = load_section(params_path, "scan", ScanParams).section
    splits = ("add_jump", "around_right")
    rows = scan_runs(params, {s: ROOT / "data" / "scan" / s for s in splits},
                     {s: ROOT / "models" / "scan" / f"{s}-lstm-{SEED}" for s in splits}, scan_plan(params))
    return {"measure": "equitune, validation exact-match accuracy at tuning steps (seed 0, committed checkpoints)",
            "runs": rows, "steps_from_committed_curves": committed_step_curves(ROOT / "metrics" / "scan" / "tune"),
            "cpu_seconds": clock()}


# ------------------------------------------------------------------------------------------------ output
def agreement_with_the_pipeline(results: dict, metrics_dir: Path, scan_tune: dict | None = None) -> list[dict]:
    """The default cells against the validation numbers the pipeline committed for the same cells (seed 0): the
    images finetune cell's per-epoch validation accuracy, the SCAN tune cells' equitune validation curve. Equal
    numbers say the calibration reruns the pipeline's own training, not a look-alike. ``scan_tune``: the params'
    ``scan.tune`` section (which SCAN runs use the committed lr and schedule)."""
    checks = []
    for row in results.get("images", {}).get("rows", []):
        path = metrics_dir / "images" / f"fashion_mnist-{BACKBONE}-finetune-trivial-s{SEED}.json"
        if row["overrides"] or not path.exists():
            continue
        curve = json.loads(path.read_text())["training"]["curve"]
        committed = [round(curve[f"epoch{i + 1}"]["val_accuracy"], 4) for i in range(len(curve))]
        checks.append({"cell": path.stem, "calibration": row["per_epoch"], "pipeline": committed})
        break
    for run in results.get("scan", {}).get("runs", []):
        path = metrics_dir / "scan" / "tune" / f"{run['split']}-{run['group']}-lstm-{SEED}.json"
        if not path.exists():
            continue
        committed = json.loads(path.read_text()).get("validation_curve", {}).get("equitune", {})
        common = {key.split("_")[1]: round(value, 4) for key, value in committed.items()
                  if key.split("_")[1] in run["validation_curve"]}
        if scan_tune and run["lr"] == scan_tune["lr"][run["split"]] and run["lr_schedule"] == scan_tune["lr_schedule"]:
            checks.append({"cell": f"{path.stem} (equitune)", "calibration": [run["validation_curve"][k] for k in common],
                           "pipeline": list(common.values())})
    for check in checks:
        check["equal"] = check["calibration"] == check["pipeline"]
        check["max_difference"] = round(max(abs(a - b) for a, b in zip(check["calibration"], check["pipeline"],
                                                                           strict=True)), 4)
    return checks


def _sampling_error(rows: list[dict]) -> float:
    """One standard error (in points) of the default row's validation accuracy: sqrt(p (1 - p) / n)."""
    p, n = rows[0]["validation_accuracy"], rows[0]["validation_size"]
    return 100 * (p * (1 - p) / n) ** 0.5


def render_markdown(results: dict) -> str:
    """The docs page of the calibration results."""
    lines = ["# Calibration (validation only)", "",
             "The measurements behind the design choices that `params.yaml` justifies, rerun by "
             "`scripts/calibrate.py` on validation data only: no study loads or scores a test split (issue 27). "
             "Each varies one choice from the committed recipe, seed 0; the numbers are validation accuracies. "
             "Regenerate with `nice -n 10 python scripts/calibrate.py all` (CPU seconds per study below).", ""]
    if "images" in results:
        images = results["images"]
        lines += ["## Images (Fashion-MNIST, EfficientNet-Lite0)", "",
                  f"{images['measure']}; {images['rows'][0]['validation_size']} validation images carved from the "
                  f"training split; {images['cpu_seconds']} CPU seconds.", "",
                  "| choice | variant | train images | best validation | per epoch | CPU s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['choice']} | {r['variant']} | {r['train_size']} | {100 * r['validation_accuracy']:.1f}% | "
                  f"{', '.join(f'{100 * v:.1f}' for v in r['per_epoch'])} | {r['cpu_seconds']} |"
                  for r in images["rows"]]
        lines += ["", "A row's CPU seconds include the frozen part's features when its (resolution, depth, train size) "
                      "is the first of its kind; a row that repeats the default cell shows that cell's.",
                  "", f"One seed on {images['rows'][0]['validation_size']} images: one standard error of an accuracy "
                      f"near the default's is {_sampling_error(images['rows']):.1f} points, so differences within about "
                      "2 points are noise.", ""]
    if "scan" in results:
        scan = results["scan"]
        steps = sorted({int(s) for r in scan["runs"] for s in r["validation_curve"]})
        lines += ["## SCAN tuning (equitune)", "",
                  f"{scan['measure']}; {scan['cpu_seconds']} CPU seconds.", "",
                  "| choice | split, group | lr | schedule | " + " | ".join(f"step {s}" for s in steps) + " | CPU s |",
                  "|---|---|---|---|" + "---|" * len(steps) + "---|"]
        for r in scan["runs"]:
            cells = [f"{100 * r['validation_curve'][str(s)]:.1f}%" if str(s) in r["validation_curve"] else ""
                     for s in steps]
            lines.append(f"| {r['choice']} | {r['split']}, {r['group']} | {r['lr']:g} | {r['lr_schedule']} | "
                         + " | ".join(cells) + f" | {r['cpu_seconds']} |")
        lines += ["", "### Tuning steps: the committed tune cells' validation curves", "",
                  "Validation accuracy at each curve step over the seeds (min-max), from "
                  "`metrics/scan/tune/*.json` (`validation_curve`), as the pipeline recorded them.", "",
                  "| split | group | method | seeds | " + " | ".join(
                      f"step {s}" for s in sorted({int(s) for f in scan["steps_from_committed_curves"]
                                                   for s in f["steps"]})) + " |"]
        all_steps = sorted({int(s) for f in scan["steps_from_committed_curves"] for s in f["steps"]})
        lines.append("|---|---|---|---|" + "---|" * len(all_steps))
        for f in scan["steps_from_committed_curves"]:
            cells = [(lambda lo_hi: f"{100 * lo_hi[0]:.1f}-{100 * lo_hi[1]:.1f}%")(f["steps"][str(s)])
                     if str(s) in f["steps"] else "" for s in all_steps]
            lines.append(f"| {f['split']} | {f['group']} | {f['method']} | {f['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("agreement"):
        lines += ["## The default cells against the pipeline's", "",
                  "The calibration's default cells beside the validation numbers the pipeline committed for the same "
                  "cells (`metrics/`); equal numbers say the calibration reruns the pipeline's own training.", "",
                  "One image cell's features come from a batch of upright images here and from batches of D4 orbits "
                  "in the pipeline (and one thread instead of two): float rounding may move an image or two.", "",
                  "| cell | calibration (%) | pipeline (%) | equal | largest difference (points) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['cell']} | {', '.join(f'{100 * v:.2f}' for v in c['calibration'])} | "
                  f"{', '.join(f'{100 * v:.2f}' for v in c['pipeline'])} | {'yes' if c['equal'] else 'no'} | "
                  f"{100 * c['max_difference']:.2f} |"
                  for c in results["agreement"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=("images", "scan", "all", "render"),
                        help="render: run nothing, recheck the agreement and rewrite the page from the JSON")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "calibration.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "calibration.md")
    parser.add_argument("--depth2-train-size", type=int, default=10000,
                        help="training images of the trainable_depth comparison (both depths; default 10000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.study in ("images", "all"):
        results["images"] = run_images(args.params, args.depth2_train_size)
    if args.study in ("scan", "all"):
        results["scan"] = run_scan(args.params)
    scan_tune = yaml.safe_load(args.params.read_text())["scan"]["tune"]
    results["agreement"] = agreement_with_the_pipeline(results, ROOT / "metrics", scan_tune)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(render_markdown(results))
    print(f"wrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
