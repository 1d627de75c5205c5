"""seed_everything seeds what it says: python's, numpy's and torch's global generators, and returns a generator."""

from __future__ import annotations

import random

import numpy as np
import torch

from equitune.pipeline.seeding import seed_everything


def test_every_global_generator_is_seeded():
    generator = seed_everything(7, deterministic=False)
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=generator)))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)),
                float(torch.rand(1, generator=torch.Generator().manual_seed(7))))
    assert drawn == expected
