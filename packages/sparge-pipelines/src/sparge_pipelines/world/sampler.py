"""Sampling the world model: flow-matching Euler steps with classifier-free guidance, from a given noise.

The model predicts the velocity v = noise − x0 of x_σ = (1 − σ)·x0 + σ·noise (Wan's flow matching), so an
Euler step is x ← x + (σ_next − σ)·v. σ runs from 1 to 0 on Wan's shifted schedule. The null caption of CFG is
the all-zero text embedding (what caption dropout trained on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .render import WorldSize
from .vocab import Caption, encode_captions

__all__ = ["SamplerConfig", "sample_noise", "sample_videos", "sigma_schedule"]


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 25
    guidance: float = 4.0
    shift: float = 3.0  # the teacher's training flow.shift

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: must be a positive int, got {self.steps!r}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance: must be >= 0, got {self.guidance!r}")
        if not self.shift > 0:
            raise ValueError(f"shift: must be > 0, got {self.shift!r}")


def sigma_schedule(config: SamplerConfig) -> torch.Tensor:
    """steps + 1 noise levels from 1 to 0 (float64), shifted as in training."""
    s = torch.linspace(1.0, 0.0, config.steps + 1, dtype=torch.float64)
    return config.shift * s / (1.0 + (config.shift - 1.0) * s)


def sample_noise(seeds: list[int], size: WorldSize, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 3, F, H, W) float32 starting noise, one CPU generator per seed (the same on every device)."""
    out = [torch.randn(3, size.frames, size.height, size.width, generator=torch.Generator().manual_seed(s))
           for s in seeds]
    return torch.stack(out).to(device)


@torch.no_grad()
def sample_videos(model: torch.nn.Module, captions: list[Caption], noise: torch.Tensor,
                  config: SamplerConfig = SamplerConfig(), *,
                  on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Videos (B, 3, F, H, W) float32 in [-1, 1] from `noise`; `on_step(i)` after each step (progress, timing)."""
    if len(captions) != noise.shape[0]:
        raise ValueError(f"captions: {len(captions)} captions for a batch of {noise.shape[0]} noises")
    # The patch embedding's dtype is the compute dtype (diffusers keeps norms and time embedding in fp32).
    weight = model.patch_embedding.weight
    dtype, device = weight.dtype, weight.device
    text = encode_captions(captions, device=device, dtype=dtype)
    guided = config.guidance != 1.0
    if guided:
        text = torch.cat([text, torch.zeros_like(text)])
    x = noise.to(device=device, dtype=torch.float32)
    sigmas = sigma_schedule(config)
    for i in range(config.steps):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        inp = torch.cat([x, x]) if guided else x
        t = torch.full((inp.shape[0],), sigma * 1000.0, device=device, dtype=torch.float32)
        v = model(inp.to(dtype), t, text, return_dict=False)[0].float()
        if guided:
            v_cond, v_null = v.chunk(2)
            v = v_null + config.guidance * (v_cond - v_null)
        x = x + (nxt - sigma) * v
        if on_step is not None:
            on_step(i)
    return x.clamp(-1, 1)
