"""Suite-wide settings: one torch thread per test process.

The tests use small models, where a second intra-op thread costs more in synchronisation than it saves,
and the suite shares 2 cores with the stage subprocesses some tests start (those use params.base.threads).
"""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning (speed only; results are unchanged).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Stages run in this process (and the stage subprocesses tests start) keep torch's native CPU kernels: the tests
# check code, not digits, and this process has long chosen its kernels before a stage's run_stage could pin them.
# tests/pipeline/test_reproducibility.py checks the pinning itself in fresh processes.
os.environ["EQUITUNE_CPU_ISA"] = "native"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
