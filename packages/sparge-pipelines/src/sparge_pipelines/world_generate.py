"""`sparge-generate` with the sparge world model (the default without `--model`): one video of a world caption.

The world model is a bare pixel-space `WanTransformer3DModel` (no VAE, no text encoder: its text is the caption's
one-hot tokens), sampled by `world.sampler` from `sample_noise(seed)`. Sparse attention, the step clock, the video
and the report are generate.py's, so a world run reports what a Wan run does.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm import tqdm

from .apply import remove_sparge
from .generate import GenerateConfig, StepClock, compute_dtype, install_sparge, resolve_device, write_outputs
from .world import Caption, WorldSize, parse_caption
from .world.model import load_world_transformer
from .world.sampler import SamplerConfig, sample_noise, sample_videos
from .world.vocab import BASE_BACKGROUNDS, COLOURS, DIGITS, DIRECTIONS, MAX_OBJECTS, SHIFTED_BACKGROUNDS, TEXT_DIM

__all__ = ["EXAMPLE_CAPTION", "generate_world", "parse_prompt", "world_defaults"]

EXAMPLE_CAPTION = "a red 3 moving left and a blue 7 moving up on clouds"
WORLD_FPS = 8  # 8-16 frames: a second or two per loop, as the world's GIFs in tools/ play


def world_defaults(device: str) -> dict[str, Any]:
    """Size, sampling and fps of a world run left unset: 16x64x64 on a GPU (the largest size the shipped teacher
    passed its gate at; 16x96x96 once its full-size stage has), 8x64x64 on a CPU (the PyTorch reference; the size
    tools/world/demo.py runs there)."""
    size = WorldSize(16, 64, 64) if torch.device(device).type == "cuda" else WorldSize(8, 64, 64)
    sampler = SamplerConfig()
    return dict(frames=size.frames, height=size.height, width=size.width, steps=sampler.steps,
                guidance=sampler.guidance, fps=WORLD_FPS)


def parse_prompt(text: str) -> Caption:
    """The world caption `text` names; a ValueError that shows the caption grammar and vocabulary otherwise."""
    try:
        return parse_caption(text)
    except ValueError as exc:
        raise ValueError(
            f"{exc}. The world model reads captions of a fixed vocabulary, e.g. {EXAMPLE_CAPTION!r}: 1 to "
            f"{MAX_OBJECTS} objects 'a <colour> <digit> moving <direction>' joined by 'and' (colours differ), then "
            f"'on <background>'; colours: {', '.join(COLOURS)}; digits: {', '.join(DIGITS)}; directions: "
            f"{', '.join(DIRECTIONS)}; backgrounds: {', '.join(BASE_BACKGROUNDS)} (also "
            f"{', '.join(SHIFTED_BACKGROUNDS)}: the shifted split, which the teacher never saw)"
        ) from None


def generate_world(config: GenerateConfig) -> dict:
    """`generate` for a world model: load it, sample one video of `config.prompt` from `sample_noise(seed)` with
    sparge (or dense) attention, write the video, the stats and the report."""
    source = config.source
    device = resolve_device(config.device)
    config = config.with_defaults(device)
    dtype = compute_dtype(config, device)
    caption = parse_prompt(config.prompt)
    sampler = SamplerConfig(steps=config.steps, guidance=float(config.guidance))
    t_load = time.perf_counter()
    model = load_world_transformer(source.path, device=device, dtype=dtype)
    load_s = time.perf_counter() - t_load
    if model.config.text_dim != TEXT_DIM:  # another RGB WanTransformer3DModel: it cannot read world captions
        raise ValueError(f"--model {source.name}: text_dim {model.config.text_dim}, not a world model (its captions "
                         f"are {TEXT_DIM}-dim one-hot tokens)")
    noise = sample_noise([config.seed], WorldSize(config.frames, config.height, config.width), device=device)

    state = install_sparge(model, config, len(model.blocks))
    clock = StepClock(torch.device(device))
    hook = model.register_forward_pre_hook(clock.loop_start_hook, with_kwargs=True)
    try:
        with tqdm(total=sampler.steps, desc="denoising", disable=not config.progress) as bar:
            def on_step(step: int) -> None:
                clock.end_step(step)
                bar.update(1)

            t0 = time.perf_counter()
            videos = sample_videos(model, [caption], noise, sampler, on_step=on_step)
            total_s = time.perf_counter() - t0
    finally:
        hook.remove()
        if state is not None:
            remove_sparge(model)
    frames = ((videos[0].permute(1, 2, 3, 0) + 1) / 2).cpu().numpy()  # (3, F, H, W) in [-1, 1] -> (F, H, W, 3)
    settings = {"model_kind": "world", "model_path": str(source.path), "caption": caption.text,
                "shift": sampler.shift}
    return write_outputs(config, frames, device=device, dtype=dtype, state=state, clock=clock, load_s=load_s,
                         total_s=total_s, settings=settings)
