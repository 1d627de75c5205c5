"""What limits SCAN accuracy under a word-swap group: test accuracy by the kind of command, for the pretrained
model, equitune and frame decoding, before and after equituning (issue 23 item 3: Around-Right at 90.6 against
the best lexical methods' 95-100).

A group that swaps whole words everywhere in a command (left <-> right, jump <-> run) brings a test command into
the training distribution only when its swapped form is in it. For Around-Right the held-out concept is the
*phrase* "around right": a test command that also holds "around left" still holds "around right" after the swap,
so no element of the group maps it to a seen command. For Add-Jump with jump <-> run, a command with both verbs
keeps one "jump" after the swap. And frame decoding excludes *words* (``scan.tune.frame_excluded_words``: "right",
"jump"), so it also falls back to the whole group for a command like "walk around right and turn left", whose swap
("walk around left and turn right") was seen. The test commands are sorted into these kinds here and each method's
accuracy is measured on each kind, over the grid's seeds, with the pipeline's own models and settings:

- pretrained: the model alone (greedy); equitune / frame at 0 steps: the pretrained model decoded through the group
  or through its frame;
- equitune tuned: the pretrained model equituned as the tune stage does it (same seed, steps, lr and batches: its
  overall accuracy is checked equal to the committed metrics file's before anything is written); frame decoding of
  that tuned model.

    python scripts/scan_limits.py                 # after `dvc repro` (reads models/scan and data/scan): ~5 min
    python scripts/scan_limits.py --seeds 0       # one seed

Writes docs/scan-limits.md and docs/scan-limits.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from equitune.pipeline.io import read_json, write_json, write_text  # noqa: E402
from equitune.pipeline.reproducibility import apply_cpu_isa  # noqa: E402
from equitune.pipeline.schema import load_section  # noqa: E402
from equitune.pipeline.seeding import seed_everything  # noqa: E402
from equitune.pipeline.stats import format_mean_std  # noqa: E402
from equitune.scan.cells import ScanCell  # noqa: E402
from equitune.scan.config import ScanParams, bind_scan_group, scan_support_frame  # noqa: E402
from equitune.scan.evaluation import correct_flags  # noqa: E402
from equitune.scan.experiment import load_pretrained, tuning_wrapper  # noqa: E402
from equitune.scan.splits import load_split_files  # noqa: E402
from equitune.scan.training import tune  # noqa: E402

# (split, group) -> kinds of test command, each a predicate on the command's words; the first kind that holds wins.
Kinds = list[tuple[str, Callable[[list[str]], bool]]]


def _has_phrase(words: list[str], first: str, second: str) -> bool:
    return any(a == first and b == second for a, b in zip(words, words[1:], strict=False))


KINDS: dict[tuple[str, str], Kinds] = {
    ("around_right", "left_right"): [
        ("also 'around left': no swap is seen", lambda w: _has_phrase(w, "around", "left")),
        ("'left' elsewhere: the swap is seen, the word frame is empty", lambda w: "left" in w),
        ("no 'left': the swap is seen, the frame is the swap", lambda w: True),
    ],
    ("add_jump", "jump_run"): [
        ("'jump' and 'run': no swap is seen", lambda w: "run" in w),
        ("'jump' alone: the swap is seen", lambda w: True),
    ],
}

METHODS = ("pretrained", "equitune_0_steps", "frame_0_steps", "equitune_tuned", "frame_decoding_of_tuned")


def _kind(kinds: Kinds, words: list[str]) -> str:
    return next(name for name, holds in kinds if holds(words))


def _flags(params: ScanParams, split: str, group: str, seed: int, data: dict, device: torch.device,
           committed: dict, deterministic: bool) -> dict[str, list[bool]]:
    """Per method, per test command: decoded exactly right? The tuned model is the tune stage's (checked)."""
    cell = ScanCell(split, "lstm", seed)
    perms = bind_scan_group(params.groups[group])
    frame = scan_support_frame(params.tune.frame_excluded_words[split], perms[0])
    pretrained = load_pretrained(params, cell, ROOT / "models" / "scan" / cell.name, device)
    test = data["test"]
    flags = {"pretrained": correct_flags(pretrained, test, params, "greedy"),
             "equitune_0_steps": correct_flags(pretrained, test, params, "equitune", perms),
             "frame_0_steps": correct_flags(pretrained, test, params, "frame", perms, frame=frame)}
    # The tune stage reseeds right before equituning, and its evaluations in between draw no random numbers.
    generator = seed_everything(seed, params.threads, deterministic)
    model = copy.deepcopy(pretrained)
    settings = params.tune
    wrapper, _ = tuning_wrapper("equitune", model, settings, perms)
    tune(wrapper, data["train"], settings, lr=settings.lr[split], steps=settings.steps[split], checkpoints=[],
         generator=generator, on_checkpoint=lambda step: None, device=device, desc=f"equitune {split} seed {seed}")
    model.eval()
    flags["equitune_tuned"] = correct_flags(model, test, params, "equitune", perms)
    flags["frame_decoding_of_tuned"] = correct_flags(model, test, params, "frame", perms, frame=frame)
    measured = sum(flags["equitune_tuned"]) / len(test)
    expected = committed["equitune"]["test_accuracy"]
    if measured != expected:
        raise SystemExit(f"{split} {group} seed {seed}: equitune tuned here reaches {measured!r}, the committed "
                         f"metrics say {expected!r}: not the pipeline's model, nothing written")
    return flags


def _split_table(params: ScanParams, split: str, group: str, seeds: list[int], device: torch.device,
                 deterministic: bool) -> dict:
    data = load_split_files(ROOT / "data" / "scan" / split)
    commands = [line.split(" OUT: ")[0].removeprefix("IN: ").split()
                for line in (ROOT / "data" / "scan" / split / "test.txt").read_text().splitlines()]
    kinds = KINDS[(split, group)]
    kind_of = [_kind(kinds, words) for words in commands]
    if len(kind_of) != len(data["test"]):
        raise SystemExit(f"data/scan/{split}/test.txt has {len(kind_of)} lines, the encoded split {len(data['test'])}")
    per_seed = []
    for seed in seeds:
        committed = read_json(ROOT / "metrics" / "scan" / "tune" / f"{split}-{group}-lstm-{seed}.json")
        flags = _flags(params, split, group, seed, data, device, committed, deterministic)
        per_seed.append({method: {name: statistics.fmean(f for f, k in zip(flags[method], kind_of, strict=True)
                                                         if k == name)
                                  for name, _ in kinds} | {"all": statistics.fmean(flags[method])}
                         for method in METHODS})
    shares = {name: kind_of.count(name) / len(kind_of) for name, _ in kinds}
    return {"split": split, "group": group, "seeds": seeds, "test_commands": len(kind_of), "shares": shares,
            "accuracy": per_seed}


def _markdown(tables: list[dict]) -> str:
    lines = ["# What limits SCAN accuracy under a word-swap group", "",
             "Written by `python scripts/scan_limits.py` from the default profile's models (`dvc repro` first); "
             "test accuracy (%) by kind of test command, mean ± std over seeds. See the script's docstring for "
             "what each kind and each method is.", ""]
    for table in tables:
        kinds = list(table["shares"])
        lines += [f"## {table['split']}, group {table['group']} (seeds {', '.join(map(str, table['seeds']))}; "
                  f"{table['test_commands']} test commands)", "",
                  "| kind of command | share | " + " | ".join(METHODS) + " |",
                  "|---|---|" + "---|" * len(METHODS)]
        for kind in [*kinds, "all"]:
            share = "100.0" if kind == "all" else f"{100 * table['shares'][kind]:.1f}"
            cells = [format_mean_std([run[m][kind] for run in table["accuracy"]]) for m in METHODS]
            lines.append(f"| {kind} | {share} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: scan.grid.seeds")
    parser.add_argument("--out", default=str(ROOT / "docs" / "scan-limits"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    # The stages' CPU kernels, so that the digits match: applied before torch's first operation, which validating
    # the scan section already is (its groups are bound to the vocabularies as tensors).
    apply_cpu_isa(load_section(args.params, None, None).base.cpu_isa)
    loaded = load_section(args.params, "scan", ScanParams)
    params, deterministic = loaded.section, loaded.base.deterministic
    torch.set_num_threads(params.threads)
    seeds = args.seeds or list(params.grid.seeds)
    device = torch.device("cpu")
    tables = [_split_table(params, split, group, seeds, device, deterministic) for split, group in KINDS]
    write_json(Path(args.out + ".json"), tables)
    write_text(Path(args.out + ".md"), _markdown(tables))
    print(_markdown(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
