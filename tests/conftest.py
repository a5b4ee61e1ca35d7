"""Fixtures of the repo-level tests (tools/ scripts run as a user would)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def save_world_model() -> Callable[[Path, int], None]:
    """Writes a random one-layer world model (a diffusers folder) to a path: cheap stand-in for a shipped model."""

    def save(path: Path, seed: int) -> None:
        import torch
        from diffusers import WanTransformer3DModel

        from sparge_pipelines.world.model import WORLD_TRANSFORMER_CONFIG

        torch.manual_seed(seed)
        WanTransformer3DModel(**{**WORLD_TRANSFORMER_CONFIG, "num_layers": 1}).save_pretrained(path)

    return save
