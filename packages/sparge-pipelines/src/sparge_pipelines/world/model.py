"""The sparge world's video model: a pixel-space diffusers `WanTransformer3DModel` and where its weights live.

Pixel space (patch 1x4x4 over RGB, no VAE): 16 frames of 96x96 are 16x24x24 = 9216 tokens, long enough that
block-sparse attention (128-query x 64-key blocks) has something to skip. The weights sparge trains and ships
(the dense teacher and the distilled sparse student) sit in `weights/` beside this file as diffusers folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Defined beside sparge-generate's --model resolution, which runs before torch is imported.
from ..model_source import WORLD_WEIGHTS_DIR as WEIGHTS_DIR
from ..model_source import shipped_world_models as shipped_models
from .vocab import TEXT_DIM

__all__ = ["WORLD_TRANSFORMER_CONFIG", "WEIGHTS_DIR", "new_world_transformer", "load_world_transformer",
           "shipped_models", "world_model_dir"]

WORLD_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=3,
    out_channels=3,
    text_dim=TEXT_DIM,
    freq_dim=128,
    ffn_dim=1024,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=256,
)


def new_world_transformer(seed: int = 0) -> torch.nn.Module:
    """The world model's architecture with fresh weights."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**WORLD_TRANSFORMER_CONFIG)


def world_model_dir(name_or_path: str | Path) -> Path:
    """The folder of a shipped model by name ("teacher", "student") or of a diffusers WanTransformer3DModel."""
    shipped = shipped_models()
    path = shipped.get(str(name_or_path), Path(name_or_path))
    if not (path / "config.json").is_file():
        known = sorted(shipped) or "none in this installation"
        raise FileNotFoundError(f"model: {name_or_path!r} is neither a shipped world model ({known}) nor a folder "
                                "with a WanTransformer3DModel config.json")
    return path


def load_world_transformer(name_or_path: str | Path = "teacher", *, device: torch.device | str = "cpu",
                           dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A shipped model by name ("teacher", "student") or a diffusers WanTransformer3DModel folder, offline."""
    from diffusers import WanTransformer3DModel

    path = world_model_dir(name_or_path)
    model = WanTransformer3DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    return model.to(device).eval().requires_grad_(False)
