"""One micro-batch of training inputs: clean latents → (x_t, t, text) for both models and the flow target."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import RunConfig
from .data.batching import collate_samples
from .data.sampler import MicroBatch
from .flow_matching import add_noise, noise_for_positions, sigmas_to_timesteps, velocity_target

__all__ = ["TrainingBatch", "make_training_batch"]


@dataclass
class TrainingBatch:
    x_t: torch.Tensor  # (B, C, F, H, W), model dtype, on device
    timesteps: torch.Tensor  # (B,) float32 = σ·1000
    text: torch.Tensor  # (B, text_len, D), model dtype
    target: torch.Tensor  # (B, C, F, H, W) float32 velocity ε − x0
    sigmas: torch.Tensor  # (B,) float32

    @property
    def tokens(self) -> int:
        """Transformer tokens of the batch (patch 1×2×2)."""
        b, _, f, h, w = self.x_t.shape
        return b * f * (h // 2) * (w // 2)


def make_training_batch(dataset, micro: MicroBatch, cfg: RunConfig, device: torch.device, dtype: torch.dtype,
                        *, seed: int | None = None) -> TrainingBatch:
    """Noise and σ of each sample come from (seed, its stream position); seed defaults to train.seed."""
    batch = collate_samples([dataset[i] for i in micro.indices], cfg.data.text_len)
    x0 = batch["latents"]
    seed = cfg.train.seed if seed is None else seed
    noise, sigmas = noise_for_positions(micro.positions, tuple(x0.shape[1:]), cfg.flow, seed)
    x_t = add_noise(x0, noise, sigmas)
    return TrainingBatch(
        x_t=x_t.to(device=device, dtype=dtype),
        timesteps=sigmas_to_timesteps(sigmas, cfg.flow.num_train_timesteps).to(device),
        text=batch["text_embeds"].to(device=device, dtype=dtype),
        target=velocity_target(x0, noise).to(device),
        sigmas=sigmas,
    )
