"""Stack samples into a batch; text embeddings are zero-padded to a fixed length as WanPipeline does."""

from __future__ import annotations

import torch

__all__ = ["collate_samples"]


def collate_samples(samples: list[dict[str, torch.Tensor]], text_len: int) -> dict[str, torch.Tensor]:
    """latents (B, C, F, H, W) float32, text_embeds (B, text_len, D) float32 (longer texts are truncated)."""
    if not samples:
        raise ValueError("samples: empty batch")
    shapes = {tuple(s["latents"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"samples: latents of one batch must share a shape, got {sorted(shapes)}")
    latents = torch.stack([s["latents"].float() for s in samples])
    dim = samples[0]["text_embeds"].shape[-1]
    text = torch.zeros(len(samples), text_len, dim, dtype=torch.float32)
    for i, s in enumerate(samples):
        t = s["text_embeds"][:text_len]
        text[i, : t.shape[0]] = t.float()
    return {"latents": latents, "text_embeds": text}
