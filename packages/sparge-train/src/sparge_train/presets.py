"""Wan2.1 transformer architectures, as diffusers `WanTransformer3DModel` keyword arguments.

Values match the diffusers configs of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-T2V-14B-Diffusers
(transformer/config.json): head dim 128, patch (1, 2, 2), 16 latent channels, UMT5 text dim 4096, freq dim 256,
qk_norm rms_norm_across_heads, cross_attn_norm true, eps 1e-6, rope_max_seq_len 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparge_pipelines.world.model import WORLD_TRANSFORMER_CONFIG

__all__ = ["WAN_PRESETS", "VideoShape", "wan_config", "latent_shape", "sequence_length"]

_WAN_COMMON: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}

WAN_PRESETS: dict[str, dict[str, Any]] = {
    # 1536 = 12 heads × 128
    "wan2.1-1.3b": {**_WAN_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
    # 5120 = 40 heads × 128
    "wan2.1-14b": {**_WAN_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
    # Tests: 2 layers, 2 heads × 16, small text dim; same module structure as the real models.
    "tiny": {**_WAN_COMMON, "attention_head_dim": 16, "num_attention_heads": 2, "ffn_dim": 64, "num_layers": 2,
             "in_channels": 4, "out_channels": 4, "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 64},
    # The sparge world's pixel-space video model (sparge_pipelines.world), trained from scratch by sparge-train.
    "sparge-world": dict(WORLD_TRANSFORMER_CONFIG),
}

# Wan2.1 VAE: 8× spatial, 4× temporal compression (first frame kept): latent frames = (frames - 1) // 4 + 1.
VAE_SPATIAL = 8
VAE_TEMPORAL = 4


@dataclass(frozen=True)
class VideoShape:
    frames: int
    height: int
    width: int


def wan_config(preset: str) -> dict[str, Any]:
    if preset not in WAN_PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; known: {sorted(WAN_PRESETS)}")
    return dict(WAN_PRESETS[preset])


def latent_shape(video: VideoShape) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of a pixel-space video for the Wan2.1 VAE."""
    if (video.frames - 1) % VAE_TEMPORAL != 0:
        raise ValueError(f"frames: Wan needs 4k+1 frames, got {video.frames}")
    if video.height % (VAE_SPATIAL * 2) or video.width % (VAE_SPATIAL * 2):
        raise ValueError(f"height/width: must be multiples of 16, got {video.height}x{video.width}")
    return (video.frames - 1) // VAE_TEMPORAL + 1, video.height // VAE_SPATIAL, video.width // VAE_SPATIAL


def sequence_length(video: VideoShape, patch_size: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Transformer tokens of one video: 480x832x81 → 32760, 720x1280x81 → 75600."""
    f, h, w = latent_shape(video)
    return (f // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])
