"""Synthetic latents/text embeddings: a fixed random tensor per index (tests and benchmarks)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticLatentDataset"]


class SyntheticLatentDataset(Dataset):
    """Sample i is drawn from a generator seeded by (seed, i): the same on every rank and every run.

    Latents get a per-sample smooth structure (a random low-frequency field plus noise) so that, unlike pure
    noise, a model can learn something about them.
    """

    def __init__(self, num_samples: int, latent_shape: tuple[int, int, int, int], text_tokens: int,
                 text_dim: int, seed: int = 1234):
        if num_samples < 1:
            raise ValueError(f"num_samples: must be >= 1, got {num_samples}")
        if len(latent_shape) != 4 or min(latent_shape) < 1:
            raise ValueError(f"latent_shape: expected 4 positive sizes (C, F, H, W), got {latent_shape}")
        self.num_samples = num_samples
        self.latent_shape = tuple(latent_shape)
        self.text_tokens = text_tokens
        self.text_dim = text_dim
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 7_919 + index)
        c, f, h, w = self.latent_shape
        coarse = torch.randn(1, c, max(1, f // 2), max(1, h // 4), max(1, w // 4), generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(f, h, w), mode="trilinear", align_corners=False)[0]
        latents = smooth + 0.1 * torch.randn(c, f, h, w, generator=g)
        text = torch.randn(self.text_tokens, self.text_dim, generator=g) * 0.2
        return {"latents": latents, "text_embeds": text}
