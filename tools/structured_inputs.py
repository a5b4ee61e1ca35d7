"""Video-like attention inputs: smooth random fields over a (T, H, W) token grid plus noise.

Neighbouring tokens correlate as in a video DiT, so predicted block masks have realistic structure
(random i.i.d. inputs give near-uniform pooled scores instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_field(
    batch: int, heads: int, grid: tuple[int, int, int], head_dim: int, *, smoothness: int = 4, noise: float = 0.5,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, H, T·Hh·W, D) tensor: trilinear upsampling of a coarse random grid, plus i.i.d. noise."""
    t, h, w = grid
    coarse = [max(2, -(-n // smoothness)) for n in grid]
    base = torch.randn(batch * heads, head_dim, *coarse, generator=generator, device=device)
    field = F.interpolate(base, size=(t, h, w), mode="trilinear", align_corners=True)
    field = field.reshape(batch, heads, head_dim, t * h * w).transpose(-1, -2)
    field = field + noise * torch.randn(field.shape, generator=generator, device=device)
    # Contiguous (B, H, L, D) like a projection's output: a non-unit head-dim stride would make kernels copy.
    return field.to(dtype).contiguous()


def video_qkv(
    batch: int, heads: int, grid: tuple[int, int, int], head_dim: int, **kwargs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in HND layout with video-like structure (q and k share part of their field, as after projection)."""
    shared = smooth_field(batch, heads, grid, head_dim, **kwargs)
    q = shared + 0.5 * smooth_field(batch, heads, grid, head_dim, **kwargs)
    k = shared + 0.5 * smooth_field(batch, heads, grid, head_dim, **kwargs)
    v = smooth_field(batch, heads, grid, head_dim, **kwargs)
    return q, k, v
