"""Checkpoint safety: weights-only loading everywhere, and the trainer state survives it."""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import pytest
import torch

from sparge_train.checkpoint import CheckpointError, SafeTorchCheckpointEngine, TrainerState

SRC = Path(__file__).resolve().parents[1] / "src" / "sparge_train"


class _Exploit:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_safe_engine_refuses_arbitrary_pickles(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"module": {}, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pt cannot be loaded: WeightsUnpickler error") as err:
        SafeTorchCheckpointEngine().load(str(path), map_location="cpu")
    assert isinstance(err.value.__context__, pickle.UnpicklingError)
    assert "weights_only=False" not in str(err.value)  # never torch's advice to unpickle arbitrary objects
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_trainer_state_round_trips_through_the_safe_engine(tmp_path):
    random.seed(5)
    torch.manual_seed(5)
    state = TrainerState(step=12, samples_seen=48, global_batch_size=4, world_size=2)
    state.capture_rng(torch.device("cpu"))
    expected_torch, expected_py = torch.rand(3), random.random()
    path = tmp_path / "state.pt"
    torch.save({"module": {"w": torch.ones(2)}, **state.to_client_state()}, path)

    loaded = SafeTorchCheckpointEngine().load(str(path), map_location="cpu")
    restored = TrainerState.from_client_state(loaded)
    assert (restored.step, restored.samples_seen, restored.global_batch_size, restored.world_size) == (12, 48, 4, 2)
    torch.rand(7), random.random()  # move the generators on
    restored.restore_rng(torch.device("cpu"))
    torch.testing.assert_close(torch.rand(3), expected_torch, rtol=0, atol=0)
    assert random.random() == expected_py


def test_no_unsafe_torch_load_in_the_package():
    """Every torch.load in sparge_train passes weights_only=True (DeepSpeed's loader is replaced, see above)."""
    for path in SRC.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.name}: {call}"


def test_missing_client_state_is_reported():
    with pytest.raises(KeyError, match="sparge_train"):
        TrainerState.from_client_state({"module": {}})
