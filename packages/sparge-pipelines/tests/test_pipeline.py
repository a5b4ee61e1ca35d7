"""Whole tiny Wan2.1 pipelines (T2V, CFG, UniPC/Euler, two experts) with sparge self-attention on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from sparge_pipelines import apply_sparge, remove_sparge
from sparge_pipelines.testing import TINY_VIDEO, tiny_wan_pipeline, tiny_wan_transformer

# 72 tokens per video (3x4x6): 16-query / 8-key blocks give 5 x 9 blocks.
BLOCKS = dict(block_q=16, block_k=8)
PROMPT = dict(prompt="a cat runs on the grass", negative_prompt="blurry static", num_inference_steps=3,
              guidance_scale=5.0, **TINY_VIDEO)


def generate(pipe, output_type="np"):
    frames = pipe(**PROMPT, generator=torch.Generator().manual_seed(0), output_type=output_type).frames
    return torch.as_tensor(frames)


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline(seed=0)


@pytest.fixture(scope="module")
def dense_video(pipe):
    return generate(pipe)


@pytest.mark.parametrize("token_order", ["1d", "tiled"])
def test_topk_one_video_equals_dense(pipe, dense_video, token_order):
    state = apply_sparge(pipe, topk=1.0, token_order=token_order, collect_stats=True, **BLOCKS)
    try:
        video = generate(pipe)
    finally:
        remove_sparge(pipe)
    assert state.stats.summary()["overall"] == 1.0
    # Not bitwise: every block is kept, so it is the same softmax attention, but the reference op sums in another
    # order than SDPA's CPU kernel (float32 rounding ~1e-7 relative per call). Through 3 steps x 2 CFG passes x
    # 2 layers and the VAE that stays below 2e-5 on [0, 1] pixels (seen: 5e-6); a real difference is >1e-3.
    assert torch.isfinite(video).all()
    torch.testing.assert_close(video, dense_video, rtol=0, atol=2e-5)


def test_half_density_video_differs_but_stays_close(pipe, dense_video):
    state = apply_sparge(pipe, topk=0.5, topp=0.0, collect_stats=True, **BLOCKS)
    try:
        video = generate(pipe)
    finally:
        remove_sparge(pipe)
    density = state.stats.summary()["overall"]
    assert density == pytest.approx(5 / 9)  # ceil(0.5 * 9) of 9 key blocks per row
    diff = (video - dense_video).abs()
    relative = ((video - dense_video).norm() / dense_video.norm()).item()
    assert diff.max() > 1e-3  # sparse attention really changed the video ...
    assert relative < 0.05, relative  # ... but only a little (seen: ~1.3%)


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_dense_steps_and_layers_honoured(tmp_path, scheduler):
    pipe = tiny_wan_pipeline(seed=0, scheduler=scheduler)
    state = apply_sparge(pipe, topk=0.25, topp=0.0, dense_steps=1, dense_layers=(1,), collect_stats=True,
                         **BLOCKS)
    try:
        generate(pipe, output_type="latent")
    finally:
        remove_sparge(pipe)
    summary = state.stats.summary()
    assert summary["steps"] == [0, 1, 2]
    assert summary["layers"] == ["blocks.0", "blocks.1"]
    (s0_l0, s0_l1), (s1_l0, s1_l1), (s2_l0, s2_l1) = summary["per_head"]
    assert s0_l0 == s0_l1 == s1_l1 == s2_l1 == [1.0, 1.0]  # dense step 0, dense layer 1
    sparse = 3 / 9  # ceil(0.25 * 9) = 3 of 9 key blocks
    assert s1_l0 == pytest.approx([sparse] * 2) and s2_l0 == pytest.approx([sparse] * 2)

    written = json.loads(state.stats.save_json(tmp_path / "density.json").read_text())
    assert written["per_head"] == summary["per_head"] and written["overall"] == pytest.approx(summary["overall"])
    png = state.stats.save_heatmap(tmp_path / "density.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_two_expert_pipeline_covers_both_transformers(pipe):
    """Wan2.2-style transformer + transformer_2 (boundary 700; timesteps 999, 857, 600): both experts covered."""
    from diffusers import WanPipeline

    two = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                      scheduler=pipe.scheduler, transformer=pipe.transformer,
                      transformer_2=tiny_wan_transformer(seed=7), boundary_ratio=0.7)
    two.set_progress_bar_config(disable=True)
    state = apply_sparge(two, topk=0.25, topp=0.0, collect_stats=True, **BLOCKS)
    try:
        generate(two, output_type="latent")
    finally:
        remove_sparge(two)
    summary = state.stats.summary()
    assert summary["layers"] == ["blocks.0", "blocks.1", "transformer_2.blocks.0", "transformer_2.blocks.1"]
    used = [[v is not None for v in row] for row in summary["mean"]]
    # High-noise steps run the first expert, later ones the second; each step exactly one.
    assert all(row in ([True, True, False, False], [False, False, True, True]) for row in used)
    assert used[0] == [True, True, False, False] and used[-1] == [False, False, True, True]
    assert not hasattr(two.transformer_2, "_sparge_state")
