"""Suite-wide settings: one torch thread per test process.

The tests use small models, where a second intra-op thread costs more in synchronisation than it saves,
and the suite shares 2 cores with the stage subprocesses some tests start (those use params.base.threads).
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
