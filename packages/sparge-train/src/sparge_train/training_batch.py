"""One micro-batch of training inputs: clean latents → (x_t, t, text) for both models and the flow target."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import RunConfig
from .data.batching import collate_samples
from .data.sampler import MicroBatch
from .flow_matching import add_noise, noise_for_positions, sigmas_to_timesteps, velocity_target

__all__ = ["TrainingBatch", "make_training_batch", "caption_dropout_mask"]

CAPTION_DROPOUT_SEED = 0xCA9  # its own stream: dropping a caption does not shift the noise of any sample


@dataclass
class TrainingBatch:
    x_t: torch.Tensor  # (B, C, F, H, W), model dtype, on device
    timesteps: torch.Tensor  # (B,) float32 = σ·1000
    text: torch.Tensor  # (B, text_len, D), model dtype
    target: torch.Tensor  # (B, C, F, H, W) float32 velocity ε − x0
    sigmas: torch.Tensor  # (B,) float32
    tokens: int  # transformer tokens of the batch


def caption_dropout_mask(positions: list[int], p: float, seed: int) -> torch.Tensor:
    """(B,) bool: which samples train on the null caption, from their stream positions alone."""
    keep = [torch.rand((), generator=torch.Generator().manual_seed(seed * 1_000_033 + CAPTION_DROPOUT_SEED + pos))
            .item() >= p for pos in positions]
    return ~torch.tensor(keep, dtype=torch.bool)


def _world_batch(dataset, micro: MicroBatch, cfg: RunConfig, device: torch.device, size_index: int):
    from sparge_pipelines.world import WorldSize

    frames, height, width = cfg.data.world.sizes[size_index % len(cfg.data.world.sizes)]
    x0 = dataset.videos(micro.indices, size=WorldSize(frames, height, width), device=device)
    text = dataset.text(micro.indices, device=device)
    return x0, text


def make_training_batch(dataset, micro: MicroBatch, cfg: RunConfig, device: torch.device, dtype: torch.dtype,
                        *, seed: int | None = None, size_index: int = 0, patch_size=(1, 2, 2)) -> TrainingBatch:
    """Noise and σ of each sample come from (seed, its stream position); seed defaults to train.seed. With
    loss.guidance_scale the batch holds each sample twice: with its caption, then with the null caption.
    `size_index` picks the world video size (data.world.sizes, cycled); other sources ignore it."""
    seed = cfg.train.seed if seed is None else seed
    if cfg.data.source == "world":
        x0, text = _world_batch(dataset, micro, cfg, device, size_index)
        patch_size = (1, 4, 4)
        if cfg.data.world.caption_dropout > 0:
            drop = caption_dropout_mask(micro.positions, cfg.data.world.caption_dropout, seed).to(device)
            text = text.masked_fill(drop.view(-1, 1, 1), 0.0)
    else:
        batch = collate_samples([dataset[i] for i in micro.indices], cfg.data.text_len)
        x0, text = batch["latents"], batch["text_embeds"]
    noise, sigmas = noise_for_positions(micro.positions, tuple(x0.shape[1:]), cfg.flow, seed, device=x0.device)
    x_t = add_noise(x0, noise, sigmas.to(x0.device))
    if cfg.loss.guidance_scale > 0:
        # Rows B..2B-1 repeat the samples with the null caption (CFG's unconditional branch): one forward per model.
        x0, noise, x_t, sigmas = (torch.cat([t, t]) for t in (x0, noise, x_t, sigmas))
        text = torch.cat([text, torch.zeros_like(text)])
    b, _, f, h, w = x0.shape
    return TrainingBatch(
        x_t=x_t.to(device=device, dtype=dtype),
        timesteps=sigmas_to_timesteps(sigmas, cfg.flow.num_train_timesteps).to(device),
        text=text.to(device=device, dtype=dtype),
        target=velocity_target(x0, noise).to(device),
        sigmas=sigmas,
        tokens=b * (f // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2]),
    )
