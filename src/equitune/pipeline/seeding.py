"""One seeding helper: python, numpy and torch, deterministic kernels, a fixed thread count."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

__all__ = ["seed_everything", "determinism_flags"]


def seed_everything(seed: int, threads: int | None = None, deterministic: bool = True) -> torch.Generator:
    """Seed every generator and pin the kernels; returns a seeded torch.Generator for DataLoaders/sampling."""
    if deterministic:
        # Must be set before CUDA initialises; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _use_deterministic_algorithms()
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _use_deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True)`` without importing ``torch._inductor`` when nothing has yet.

    The public call also sets ``torch._inductor.config.deterministic``, and importing inductor for that costs a
    process ~1.3 s (torch 2.14, 2 cores; benchmark 14, benchmarks/startup.py): paid by every seeded stage that
    does not load inductor through torchvision anyway (the default run's 17 SCAN and NLG stages), while no stage
    compiles. Where inductor is loaded the public call sets both; where it is not, inductor reads the same
    setting from TORCHINDUCTOR_DETERMINISTIC when it is first imported (its config module's default), so a later
    ``torch.compile`` in this process, or in a child it starts, is deterministic all the same.
    """
    if "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=False)
        return
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
    torch._C._set_deterministic_algorithms(True, warn_only=False)


def determinism_flags() -> dict[str, object]:
    """What the report records about how deterministic this process is."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "torch_threads": torch.get_num_threads(),
    }
