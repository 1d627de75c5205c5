"""What one SCAN grid cell does, as functions the stage scripts call: data files, model building, evaluation.

Paths: ``data/scan/<split>/{train,validation,test}.txt`` (official line format), checkpoints
``models/scan/<split>-<cell>-<seed>/pretrained.pt``, metrics ``metrics/scan/<split>-<cell>-<seed>.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checks import equivariance_error
from ..groups import VocabPermutation
from ..wrappers import EquiTune
from .config import ScanParams
from .data import input_vocabulary, output_vocabulary, read_pairs
from .decoding import decode_batched, equituned_decode, equizero_decode, exact_match, greedy_decode
from .model import Seq2Seq
from .training import EncodedPairs, encode_pairs, make_batch

__all__ = ["DATA_DIR", "cell_name", "checkpoint_path", "metrics_path", "load_split_files", "build_model",
           "accuracy", "teacher_forced_equivariance_error", "decoding_equivariance_fraction"]

DATA_DIR = Path("data/scan")
PARTS = ("train", "validation", "test")


def cell_name(split: str, cell: str, seed: int) -> str:
    return f"{split}-{cell}-{seed}"


def checkpoint_path(split: str, cell: str, seed: int) -> Path:
    return Path("models/scan") / cell_name(split, cell, seed) / "pretrained.pt"


def metrics_path(split: str, cell: str, seed: int) -> Path:
    return Path("metrics/scan") / f"{cell_name(split, cell, seed)}.json"


def load_split_files(split: str, data_dir: Path = DATA_DIR) -> dict[str, EncodedPairs]:
    from ..stage import StageError

    folder = data_dir / split
    missing = [p for p in PARTS if not (folder / f"{p}.txt").exists()]
    if missing:
        raise StageError(f"{folder}: missing {missing}; run the scan_prepare stage first (dvc repro scan_prepare)")
    return {part: encode_pairs(read_pairs(folder / f"{part}.txt")) for part in PARTS}


def build_model(params: ScanParams, cell: str) -> Seq2Seq:
    m = params.model
    return Seq2Seq(cell, len(input_vocabulary()), len(output_vocabulary()), m.hidden_size, m.layers, m.dropout)


@torch.no_grad()
def accuracy(model: Seq2Seq, data: EncodedPairs, params: ScanParams, method: str,
             perms: tuple[VocabPermutation, VocabPermutation] | None = None) -> float:
    """Exact-match accuracy of ``method`` decoding: ``greedy`` (the model as is), ``equitune`` or ``equizero``."""
    length = params.evaluate.max_output_length
    was_training = model.training
    model.eval()
    if method == "greedy":
        decode = lambda src: greedy_decode(model, src, length)  # noqa: E731
    elif method == "equitune":
        decode = lambda src: equituned_decode(model, src, length, *perms)  # noqa: E731
    elif method == "equizero":
        decode = lambda src: equizero_decode(model, src, length, *perms, proxy=params.tune.equizero_proxy)  # noqa: E731
    else:
        raise ValueError(f"unknown decoding method {method!r}")
    result = exact_match(decode_batched(decode, data.src, params.evaluate.batch_size), data.target_lists)
    model.train(was_training)
    return result


def teacher_forced_equivariance_error(model: Seq2Seq, data: EncodedPairs, perms, equituned: bool,
                                      examples: int = 64) -> float:
    """Largest |f(g.x) - g.f(x)| of the teacher-forced per-step log-probs, in float64, on the first examples.

    ``equituned=False`` measures the backbone itself (expected to be far from equivariant)."""
    input_perm, output_perm = perms
    backbone = Seq2Seq(model.cell, model.source_embedding.num_embeddings, model.target_embedding.num_embeddings,
                       model.hidden_size, model.layers, model.dropout.p)
    backbone.load_state_dict(model.state_dict())
    backbone = backbone.double().eval()
    src, decoder_inputs, _ = make_batch(data, torch.arange(min(examples, len(data))))
    actions = (input_perm.on_ids, output_perm.on_ids)
    if equituned:
        wrapped = EquiTune(backbone, actions, output_action=output_perm.on_scores).eval()
        return equivariance_error(wrapped, actions, (src, decoder_inputs), output_perm.on_scores)
    return equivariance_error(backbone, actions, (src, decoder_inputs), output_perm.on_scores)


@torch.no_grad()
def decoding_equivariance_fraction(model: Seq2Seq, data: EncodedPairs, params: ScanParams, perms,
                                   examples: int = 256) -> float:
    """Share of (command, group element) pairs whose transformed command decodes to the transformed output."""
    input_perm, output_perm = perms
    model.eval()
    length = params.evaluate.max_output_length
    src = data.src[:examples]
    reference = equituned_decode(model, src, length, input_perm, output_perm)
    agree, total = 0, 0
    for g in input_perm.group:
        moved = equituned_decode(model, input_perm.on_ids.apply(src, g), length, input_perm, output_perm)
        expected = output_perm.on_ids.apply(reference, g)
        width = max(moved.shape[1], expected.shape[1])
        moved = torch.nn.functional.pad(moved, (0, width - moved.shape[1]))
        expected = torch.nn.functional.pad(expected, (0, width - expected.shape[1]))
        agree += int((moved == expected).all(dim=1).sum())
        total += src.shape[0]
    return agree / total
