"""seed_everything seeds what it says: python's, numpy's and torch's global generators, and returns a generator;
its deterministic kernels reach torch and, when anything compiles, inductor."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from equitune.pipeline.seeding import seed_everything
from helpers.paths import ROOT
from helpers.toy_project import clean_env


def test_every_global_generator_is_seeded():
    generator = seed_everything(7, deterministic=False)
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=generator)))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)),
                float(torch.rand(1, generator=torch.Generator().manual_seed(7))))
    assert drawn == expected


_DETERMINISM_PROBE = """
import sys
{preload}
from equitune.pipeline.seeding import seed_everything
import torch
seed_everything(0)
loaded_by_seeding = "torch._inductor" in sys.modules
import torch._inductor.config as inductor_config
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      inductor_config.deterministic, loaded_by_seeding)
"""


@pytest.mark.parametrize(("preload", "expected"), [
    # nothing compiles: inductor is not imported, yet reads the setting when something imports it later
    ("", "True False True False"),
    # inductor already loaded (a user's torch.compile): the public call sets it directly
    ("import torch._inductor.config", "True False True True"),
])
def test_deterministic_kernels_reach_torch_and_inductor(preload, expected):
    env = clean_env(PYTHONPATH=str(ROOT / "src"))
    env.pop("TORCHINDUCTOR_DETERMINISTIC", None)  # set in this process by any test that seeded deterministically
    result = subprocess.run([sys.executable, "-c", _DETERMINISM_PROBE.format(preload=preload)], env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == expected.split()
