"""A tiny, offline Wan2.1 for tests: random weights built from configs, no hub access.

`tiny_wan_transformer()` alone, or `tiny_wan_pipeline()` with a tiny AutoencoderKLWan, a small UMT5 encoder,
a tokenizer built locally with `tokenizers` (word-level, fixed vocabulary) and the flow-matching UniPC scheduler
Wan2.1 ships with. Default video: 9 frames of 128x192 -> latent 3x16x24 -> 3x8x12 = 288 patch tokens.
"""

from __future__ import annotations

import torch

__all__ = [
    "TINY_TRANSFORMER_CONFIG",
    "tiny_wan_transformer",
]

TINY_TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)


def tiny_wan_transformer(seed: int = 0, **overrides):
    """A WanTransformer3DModel with TINY_TRANSFORMER_CONFIG (+ overrides) and seeded random weights."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **overrides})
    # Default init leaves some projections at zero (e.g. output heads); randomise everything so a wrong
    # attention shows up in the output.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()
