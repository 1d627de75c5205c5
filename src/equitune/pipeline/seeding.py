"""One seeding helper: python, numpy and torch, deterministic kernels, a fixed thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "determinism_flags"]


def seed_everything(seed: int, threads: int | None = None, deterministic: bool = True) -> torch.Generator:
    """Seed every generator and pin the kernels; returns a seeded torch.Generator for DataLoaders/sampling."""
    if deterministic:
        # Must be set before CUDA initialises; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
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


def determinism_flags() -> dict[str, object]:
    """What the report records about how deterministic this process is."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "torch_threads": torch.get_num_threads(),
    }
