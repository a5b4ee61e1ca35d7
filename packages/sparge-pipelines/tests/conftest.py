"""Shared fixtures: the tiny offline Wan transformer and one fixed input batch for it."""

from __future__ import annotations

import pytest
import torch

from sparge_pipelines.testing import tiny_wan_transformer


@pytest.fixture(scope="module")
def model():
    return tiny_wan_transformer(seed=0)


@pytest.fixture(scope="module")
def inputs():
    """latents (2, 4, 3, 16, 24) -> 3x8x12 = 288 tokens, timesteps, text (2, 8, 32)."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 3, 16, 24, generator=g)
    return latents, torch.tensor([900.0, 900.0]), torch.randn(2, 8, 32, generator=g)
