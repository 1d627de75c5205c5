"""Suite-wide settings: one torch thread per test process, the longest tests first.

The tests use small models, where a second intra-op thread costs more in synchronisation than it saves,
and the suite shares the cores with the stage subprocesses some tests start (those use params.base.threads).
`make test` runs one test process per core (pytest-xdist, ``--dist worksteal``); the tests marked ``longest``
(minutes each) are collected first, so that each starts at once on a worker of its own and the short tests fill
the other workers around them, instead of one of them starting last and running alone.
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


def pytest_collection_modifyitems(config, items):
    def seconds(item) -> float:  # longest(seconds=N): about how long it took on 2 busy cores
        marker = item.get_closest_marker("longest")
        return marker.kwargs.get("seconds", 60) if marker else 0
    items.sort(key=lambda item: -seconds(item))  # stable: the other tests keep their order


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
