"""Load a local diffusers-format Wan2.1 pipeline, offline, with clear errors for a wrong directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["WAN_PIPELINES", "load_wan_pipeline"]

WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")


def _read_pipeline_class(model_dir: Path) -> str:
    if not model_dir.exists():
        raise FileNotFoundError(f"--model {model_dir}: no such directory")
    if not model_dir.is_dir():
        raise NotADirectoryError(f"--model {model_dir}: not a directory")
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"--model {model_dir}: not a diffusers-format pipeline (no model_index.json). Expected a local copy of "
            "e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers (model_index.json, transformer/, vae/, text_encoder/, ...)"
        )
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model {model_dir}: model_index.json is not valid JSON ({exc})") from exc
    if name not in WAN_PIPELINES:
        raise ValueError(f"--model {model_dir}: holds a {name!r}, expected one of {WAN_PIPELINES} (Wan2.1)")
    return name


def load_wan_pipeline(model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """`WanPipeline` / `WanImageToVideoPipeline` from `model_dir` with local_files_only (never the network).

    The VAE stays in float32 (as the Wan2.1 diffusers examples do); the rest takes `dtype`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    from diffusers import AutoencoderKLWan
    from diffusers.utils import is_accelerate_available

    model_dir = Path(model_dir).expanduser()
    cls = getattr(diffusers, _read_pipeline_class(model_dir))
    if not is_accelerate_available():
        # diffusers 0.42 cannot load WanTransformer3DModel (it keeps some modules in fp32) without it.
        raise RuntimeError("loading a Wan pipeline needs the `accelerate` package: pip install accelerate")
    try:
        vae = AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae", dtype=torch.float32, local_files_only=True)
        pipe = cls.from_pretrained(model_dir, vae=vae, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"--model {model_dir}: could not load the Wan pipeline offline: {exc}") from exc
    return pipe.to(device)
