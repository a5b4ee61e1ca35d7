"""Wan's flow matching: x_t = (1 − σ)·x0 + σ·ε, velocity v = ε − x0, model timestep t = σ·1000.

This is diffusers' FlowMatchEulerDiscreteScheduler convention used by WanPipeline: the transformer predicts
v, and a sampler step is x_{σ'} = x_σ + (σ' − σ)·v. Training σ is drawn in [0, 1] (uniform or logit-normal)
and shifted like the scheduler's `shift`: σ' = shift·σ / (1 + (shift − 1)·σ).
"""

from __future__ import annotations

import torch

from .config import FlowConfig

__all__ = [
    "shift_sigmas", "sample_sigmas", "add_noise", "velocity_target", "sigmas_to_timesteps", "noise_for_positions",
]


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift; shift > 1 moves mass to high noise (5.0 for 720p, 3.0 for 480p in WanPipeline)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sample_sigmas(n: int, cfg: FlowConfig, generator: torch.Generator) -> torch.Tensor:
    """n float32 noise levels in (0, 1], drawn on the CPU from `generator` (reproducible across devices)."""
    if cfg.timestep_sampling == "uniform":
        # (0, 1]: σ = 0 is the clean sample, whose velocity target carries no information about the noise.
        u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)
    else:
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator, dtype=torch.float64))
    return shift_sigmas(u, cfg.shift).to(torch.float32)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·ε with σ per sample (broadcast over C, F, H, W)."""
    s = sigmas.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / d σ = ε − x0: what Wan's transformer is trained to predict."""
    return noise - x0


def sigmas_to_timesteps(sigmas: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    return sigmas * num_train_timesteps


def _mix_seed(seed: int, position: int) -> int:
    """splitmix64 of (seed, position): independent generator seeds for neighbouring positions."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def noise_for_positions(positions: list[int], latent_shape: tuple[int, ...], cfg: FlowConfig, seed: int,
                        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(noise (B, *latent_shape) on `device`, sigmas (B,) on the CPU), each sample's drawn from its own stream
    position: identical whichever rank, micro-batch or resumed process draws it on the same kind of device. The
    noise is drawn where it is used (a CUDA generator per sample on a GPU): drawing it on the CPU and copying it
    cost more than a training step of a small model. σ always comes from the CPU generator."""
    device = torch.device(device)
    noises, sigmas = [], []
    for p in positions:
        sample_seed = _mix_seed(seed, p)
        g = torch.Generator().manual_seed(sample_seed)
        sigmas.append(sample_sigmas(1, cfg, g))
        if device.type != "cpu":
            g = torch.Generator(device).manual_seed(sample_seed)
        noises.append(torch.randn(latent_shape, generator=g, device=device))
    return torch.stack(noises), torch.cat(sigmas)
