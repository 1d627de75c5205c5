"""Checkpoints written by the stages: atomic, and the same bytes for the same tensors whatever the run (DVC hashes
the bytes: a run that computed the same model must not make every stage downstream of it stale)."""

from __future__ import annotations

import pytest
import torch

from equitune.pipeline.io import save_torch


def test_the_same_tensors_give_the_same_bytes_at_any_path(tmp_path):
    state = {"weight": torch.arange(12.0).reshape(3, 4), "step": 7}
    first, second = tmp_path / "a" / "model.pt", tmp_path / "b" / "other.pt"
    save_torch(first, state)
    save_torch(second, state)
    assert first.read_bytes() == second.read_bytes()
    loaded = torch.load(first, weights_only=True)
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["step"] == 7
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.pt"]  # no temporary file left


def test_a_failed_save_leaves_the_previous_file(tmp_path):
    target = tmp_path / "model.pt"
    save_torch(target, {"weight": torch.ones(2)})
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_torch(target, {"weight": torch.zeros(2), "bad": Unpicklable()})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
